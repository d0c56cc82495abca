// Causal attention over the F16 KV cache. Lane j of a warp holds head elements j, j + 32,
// ...; a warp walks its share of the keys with an online softmax (running maximum m,
// running sum l, weighted value sum acc), and the warps of a block merge at the end. No
// score buffer is stored, so any context length works.
//
// - attention_kernel: one block per (query head, token), its warps taking every
//   ATTN_WARPS-th key. Prompts, and decode steps by default.
// - attention_split_kernel (decode steps with AttentionSplits): the keys of a head are
//   cut into n_splits ranges, one block each, so that a long context keeps every SM
//   busy (one block per head leaves most of them idle); each block stores its (m, l,
//   acc) and the last block of a head to finish merges them.
#include "cuda/attention.cuh"

#include <cmath>

#include "cuda/cuda-common.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

namespace {

constexpr int ATTN_WARPS = 16;    // decode has one block per head: spread its keys wide
constexpr int SPLIT_WARPS = 8;    // one block per (head, key range)
constexpr int PER_LANE = ATTN_MAX_HEAD_DIM / 32;

// The query of head h, token t, rounded to fp16 like the cached keys (as the CPU backend).
__device__ __forceinline__ void load_query(const float* q, int t, int h, int n_head, int head_dim, int lane,
                                           float (&qr)[PER_LANE]) {
    const float* qh = q + ((int64_t)t * n_head + h) * head_dim;
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) {
        const int i = lane + 32 * e;
        qr[e] = i < head_dim ? __half2float(__float2half_rn(qh[i])) : 0.0f;
    }
}

// Keys j0, j0 + stride, ... below j1 of KV head kvh, folded into (m, l, acc).
__device__ __forceinline__ void attend(const float (&qr)[PER_LANE], const __half* __restrict__ k_cache,
                                       const __half* __restrict__ v_cache, int kvh, int kv_width, int head_dim,
                                       float scale, int j0, int j1, int stride, int lane, float& m, float& l,
                                       float (&acc)[PER_LANE]) {
#pragma unroll 2
    for (int j = j0; j < j1; j += stride) {
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
}

// Merges the block's WARPS partial results: every thread gets the block's maximum *m_out
// and sum *l_out, and threads 0.. write the unnormalised sum acc_out[i] = sum_w acc_w[i]
// e^(m_w - M), times out_scale (1 / L for a final result).
template <int WARPS>
__device__ __forceinline__ void merge_warps(float m, float l, const float (&acc)[PER_LANE], int head_dim, int lane,
                                            int warp, bool normalise, float* acc_out, float* m_out, float* l_out) {
    __shared__ float s_m[WARPS], s_l[WARPS];
    __shared__ float s_acc[WARPS][ATTN_MAX_HEAD_DIM];
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
    for (int w = 0; w < WARPS; w++) big = fmaxf(big, s_m[w]);
    float total = 0.0f;
    float weight[WARPS];
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
        weight[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - big);   // warps that saw no key
        total += s_l[w] * weight[w];
    }
    const float out_scale = normalise ? 1.0f / total : 1.0f;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) sum += s_acc[w][i] * weight[w];
        acc_out[i] = sum * out_scale;
    }
    *m_out = big;
    *l_out = total;
}

__global__ void attention_kernel(const float* __restrict__ q, const __half* __restrict__ k_cache,
                                 const __half* __restrict__ v_cache, float* __restrict__ out, int n_head,
                                 int n_head_kv, int head_dim, float scale, const int* pos, const int* skip) {
    wait_for_inputs();
    if (skipped(skip)) return;
    const int h = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int kvh = h / (n_head / n_head_kv);
    const int n_keys = *pos + t + 1;

    float qr[PER_LANE], acc[PER_LANE];
    load_query(q, t, h, n_head, head_dim, lane, qr);
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) acc[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    attend(qr, k_cache, v_cache, kvh, n_head_kv * head_dim, head_dim, scale, warp, n_keys, ATTN_WARPS, lane, m, l, acc);
    float big, total;
    merge_warps<ATTN_WARPS>(m, l, acc, head_dim, lane, warp, true, out + ((int64_t)t * n_head + h) * head_dim, &big,
                            &total);
}

// One token (a decode step): block (h, split) takes keys [split * chunk, (split + 1) * chunk).
__global__ void attention_split_kernel(const float* __restrict__ q, const __half* __restrict__ k_cache,
                                       const __half* __restrict__ v_cache, float* __restrict__ out, int n_head,
                                       int n_head_kv, int head_dim, float scale, const int* pos, const int* skip,
                                       AttentionSplits splits) {
    wait_for_inputs();
    if (skipped(skip)) return;
    const int h = blockIdx.x, split = blockIdx.y, n_splits = gridDim.y;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int kvh = h / (n_head / n_head_kv);
    const int n_keys = *pos + 1;
    const int chunk = (n_keys + n_splits - 1) / n_splits;
    const int j0 = split * chunk, j1 = min(n_keys, j0 + chunk);

    float qr[PER_LANE], acc[PER_LANE];
    load_query(q, 0, h, n_head, head_dim, lane, qr);
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) acc[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    attend(qr, k_cache, v_cache, kvh, n_head_kv * head_dim, head_dim, scale, j0 + warp, j1, SPLIT_WARPS, lane, m, l,
           acc);

    // This range's result: acc (head_dim), then m and l.
    const int row = head_dim + 2;
    float* mine = splits.partial + ((int64_t)h * n_splits + split) * row;
    merge_warps<SPLIT_WARPS>(m, l, acc, head_dim, lane, warp, false, mine, &m, &l);
    if (threadIdx.x == 0) {
        mine[head_dim] = m;
        mine[head_dim + 1] = l;
    }

    // The last block of head h to finish merges every range (the other blocks' stores are
    // made visible by their fences before they count themselves done).
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&splits.done[h], 1u) == (unsigned)n_splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float* part = splits.partial + (int64_t)h * n_splits * row;
    float big = -INFINITY;
    for (int s = 0; s < n_splits; s++) big = fmaxf(big, __ldcg(part + (int64_t)s * row + head_dim));
    float total = 0.0f;
    for (int s = 0; s < n_splits; s++) {
        const float ms = __ldcg(part + (int64_t)s * row + head_dim);
        if (ms != -INFINITY) total += __ldcg(part + (int64_t)s * row + head_dim + 1) * expf(ms - big);
    }
    const float inv = 1.0f / total;
    float* o = out + (int64_t)h * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float sum = 0.0f;
        for (int s = 0; s < n_splits; s++) {
            const float ms = __ldcg(part + (int64_t)s * row + head_dim);
            if (ms != -INFINITY) sum += __ldcg(part + (int64_t)s * row + i) * expf(ms - big);
        }
        o[i] = sum * inv;
    }
    if (threadIdx.x == 0) splits.done[h] = 0;   // ready for the next layer
}

}  // namespace

size_t AttentionSplits::bytes(int n_head, int head_dim, int n_splits) {
    return (size_t)n_head * n_splits * (head_dim + 2) * sizeof(float) + (size_t)n_head * sizeof(unsigned);
}

void attention(const float* q, const __half* k_cache, const __half* v_cache, float* out, int n_tokens, int n_head,
               int n_head_kv, int head_dim, const int* pos, const int* skip, const Launch& l,
               const AttentionSplits* splits) {
    const float scale = 1.0f / std::sqrt((float)head_dim);
    if (n_tokens == 1 && splits && splits->n_splits > 1) {
        launch(l, attention_split_kernel, dim3(n_head, splits->n_splits), 32 * SPLIT_WARPS, 0, q, k_cache, v_cache, out,
               n_head, n_head_kv, head_dim, scale, pos, skip, *splits);
        return;
    }
    launch(l, attention_kernel, dim3(n_head, n_tokens), 32 * ATTN_WARPS, 0, q, k_cache, v_cache, out, n_head, n_head_kv,
           head_dim, scale, pos, skip);
}

}  // namespace cuda
}  // namespace ffnskip
