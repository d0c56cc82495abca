// One block per (query head, token), ATTN_WARPS warps. Each warp walks every ATTN_WARPS-th key with
// an online softmax (running maximum m, running sum l, weighted value sum acc); the
// warps' partial results are merged at the end. Lane j holds head elements j, j + 32, ...
// No score buffer is stored, so any context length works.
#include "cuda/attention.cuh"

#include <cmath>

#include "cuda/cuda-common.cuh"

namespace ffnskip {
namespace cuda {

namespace {

constexpr int ATTN_WARPS = 16;   // decode has one block per head: spread its keys wide
constexpr int PER_LANE = ATTN_MAX_HEAD_DIM / 32;

__global__ void attention_kernel(const float* __restrict__ q, const __half* __restrict__ k_cache,
                                 const __half* __restrict__ v_cache, float* __restrict__ out, int n_head,
                                 int n_head_kv, int head_dim, float scale, const int* pos, const int* skip) {
    if (skipped(skip)) return;
    const int h = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int kvh = h / (n_head / n_head_kv);
    const int kv_width = n_head_kv * head_dim;
    const int n_keys = *pos + t + 1;

    // The query is rounded to fp16 like the cached keys, as the CPU backend does.
    float qr[PER_LANE], acc[PER_LANE];
    const float* qh = q + ((int64_t)t * n_head + h) * head_dim;
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) {
        const int i = lane + 32 * e;
        qr[e] = i < head_dim ? __half2float(__float2half_rn(qh[i])) : 0.0f;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
#pragma unroll 2
    for (int j = warp; j < n_keys; j += ATTN_WARPS) {
        const __half* k = k_cache + (int64_t)j * kv_width + (int64_t)kvh * head_dim;
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < PER_LANE; e++) {
            const int i = lane + 32 * e;
            if (i < head_dim) dot += qr[e] * __half2float(k[i]);
        }
        const float s = warp_sum(dot) * scale;
        const float m_new = fmaxf(m, s);
        const float rescale = expf(m - m_new);   // 0 on the first key (m = -inf)
        const float p = expf(s - m_new);
        l = l * rescale + p;
        const __half* v = v_cache + (int64_t)j * kv_width + (int64_t)kvh * head_dim;
#pragma unroll
        for (int e = 0; e < PER_LANE; e++) {
            const int i = lane + 32 * e;
            if (i < head_dim) acc[e] = acc[e] * rescale + p * __half2float(v[i]);
        }
        m = m_new;
    }

    // Merge the warps: out = sum_w acc_w e^(m_w - M) / sum_w l_w e^(m_w - M).
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][ATTN_MAX_HEAD_DIM];
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) {
        const int i = lane + 32 * e;
        if (i < head_dim) s_acc[warp][i] = acc[e];
    }
    __syncthreads();
    float big = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) big = fmaxf(big, s_m[w]);
    float total = 0.0f;
    float weight[ATTN_WARPS];
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) {
        weight[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - big);   // warps that saw no key
        total += s_l[w] * weight[w];
    }
    const float inv = 1.0f / total;
    float* o = out + ((int64_t)t * n_head + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) sum += s_acc[w][i] * weight[w];
        o[i] = sum * inv;
    }
}

}  // namespace

void attention(const float* q, const __half* k_cache, const __half* v_cache, float* out, int n_tokens, int n_head,
               int n_head_kv, int head_dim, const int* pos, const int* skip, cudaStream_t stream) {
    const float scale = 1.0f / std::sqrt((float)head_dim);
    dim3 grid(n_head, n_tokens);
    attention_kernel<<<grid, 32 * ATTN_WARPS, 0, stream>>>(q, k_cache, v_cache, out, n_head, n_head_kv, head_dim,
                                                            scale, pos, skip);
    FFNSKIP_CUDA_LAUNCHED();
}

}  // namespace cuda
}  // namespace ffnskip
