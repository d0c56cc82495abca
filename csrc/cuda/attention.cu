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
// - attention_tiled_kernel (prompts with Launch::attn_tiled): one block per (head,
//   TILE_Q queries) walks TILE_K keys at a time through shared memory, so each key and
//   value is read once per 32 queries instead of once per query, and a score is one
//   lane's dot product (no reduction across the warp per key).
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
                                 int n_head_kv, int head_dim, float scale, const int* pos, const int* skip,
                                 RowSlots rows) {
    wait_for_inputs();
    if (skipped(skip)) return;
    const int h = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int kvh = h / (n_head / n_head_kv);
    const int n_keys = token_pos(pos, t, rows) + 1;
    k_cache += cache_offset(t, rows);
    v_cache += cache_offset(t, rows);

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

// ---- prompts: tiles of queries and keys -------------------------------------------------

constexpr int TILE_Q = 32;                       // queries per block
constexpr int TILE_K = 32;                       // keys per step: one per lane
constexpr int TILE_WARPS = 8;
constexpr int Q_PER_WARP = TILE_Q / TILE_WARPS;  // queries each warp owns

// Shared memory: queries (TILE_Q, hd) float, keys and values (TILE_K, hd + 2) fp16 (the
// padding puts lane j's row j on its own bank), probabilities (TILE_Q, TILE_K) float.
size_t tiled_smem(int head_dim) {
    return (size_t)TILE_Q * head_dim * 4 + 2 * (size_t)TILE_K * (head_dim + 2) * 2 + (size_t)TILE_Q * TILE_K * 4;
}

// HL: head elements per lane (head_dim <= 32 * HL).
template <int HL>
__global__ void __launch_bounds__(32 * TILE_WARPS)
    attention_tiled_kernel(const float* __restrict__ q, const __half* __restrict__ k_cache,
                           const __half* __restrict__ v_cache, float* __restrict__ out, int n_tokens, int n_head,
                           int n_head_kv, int head_dim, float scale, const int* pos, const int* skip) {
    wait_for_inputs();
    if (skipped(skip)) return;
    extern __shared__ float smem[];
    const int h = blockIdx.x, t0 = blockIdx.y * TILE_Q;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int kvh = h / (n_head / n_head_kv);
    const int kv_width = n_head_kv * head_dim;
    const int p0 = *pos;
    const int nq = min(TILE_Q, n_tokens - t0);
    const int row = head_dim + 2;   // halves per staged key or value
    float* qs = smem;
    __half* ks = reinterpret_cast<__half*>(qs + TILE_Q * head_dim);
    __half* vs = ks + TILE_K * row;
    float* ps = reinterpret_cast<float*>(vs + TILE_K * row);

    // The block's queries, rounded to fp16 like the cached keys (as the other kernels).
    for (int i = threadIdx.x; i < TILE_Q * head_dim; i += blockDim.x) {
        const int qi = i / head_dim, d = i % head_dim;
        qs[i] = qi < nq ? __half2float(__float2half_rn(q[((int64_t)(t0 + qi) * n_head + h) * head_dim + d])) : 0.0f;
    }
    float m[Q_PER_WARP], l[Q_PER_WARP], acc[Q_PER_WARP][HL];
#pragma unroll
    for (int a = 0; a < Q_PER_WARP; a++) {
        m[a] = -INFINITY;
        l[a] = 0.0f;
#pragma unroll
        for (int e = 0; e < HL; e++) acc[a][e] = 0.0f;
    }
    const int n_keys = p0 + t0 + nq;   // the block's last query sees keys 0 .. n_keys - 1
    const int half_dim = head_dim / 2;
    for (int k0 = 0; k0 < n_keys; k0 += TILE_K) {
        __syncthreads();   // the queries are stored, the previous tile is used up
        for (int i = threadIdx.x; i < TILE_K * half_dim; i += blockDim.x) {
            const int j = i / half_dim, c = i % half_dim;
            const int key = k0 + j;
            __half2 kv = __float2half2_rn(0.0f), vv = __float2half2_rn(0.0f);
            if (key < n_keys) {
                const int64_t at = (int64_t)key * kv_width + (int64_t)kvh * head_dim + 2 * c;
                kv = *reinterpret_cast<const __half2*>(k_cache + at);
                vv = *reinterpret_cast<const __half2*>(v_cache + at);
            }
            *reinterpret_cast<__half2*>(ks + j * row + 2 * c) = kv;
            *reinterpret_cast<__half2*>(vs + j * row + 2 * c) = vv;
        }
        __syncthreads();

        // Scores: lane j takes key k0 + j against the warp's queries.
        float s[Q_PER_WARP];
#pragma unroll
        for (int a = 0; a < Q_PER_WARP; a++) s[a] = 0.0f;
        const __half2* kr = reinterpret_cast<const __half2*>(ks + lane * row);
        const float* qw = qs + warp * Q_PER_WARP * head_dim;
        for (int c = 0; c < half_dim; c++) {
            const float2 kf = __half22float2(kr[c]);
#pragma unroll
            for (int a = 0; a < Q_PER_WARP; a++) {
                const float2 qv = *reinterpret_cast<const float2*>(qw + a * head_dim + 2 * c);
                s[a] += qv.x * kf.x;
                s[a] += qv.y * kf.y;
            }
        }
        const int key = k0 + lane;
        float* pw = ps + warp * Q_PER_WARP * TILE_K;
#pragma unroll
        for (int a = 0; a < Q_PER_WARP; a++) {
            const int t = t0 + warp * Q_PER_WARP + a;
            const float sa = (t < n_tokens && key <= p0 + t) ? s[a] * scale : -INFINITY;
            const float m_new = fmaxf(m[a], warp_max(sa));
            // A query past the batch never sees a key: keep it at zero, not NaN.
            const float rescale = m_new == -INFINITY ? 1.0f : expf(m[a] - m_new);
            const float p = m_new == -INFINITY ? 0.0f : expf(sa - m_new);
            l[a] = l[a] * rescale + warp_sum(p);
            pw[a * TILE_K + lane] = p;
#pragma unroll
            for (int e = 0; e < HL; e++) acc[a][e] *= rescale;
            m[a] = m_new;
        }
        __syncwarp();

        // Weighted values: lane holds head elements lane, lane + 32, ...
        for (int j = 0; j < TILE_K; j++) {
            const __half* vr = vs + j * row;
            float v[HL];
#pragma unroll
            for (int e = 0; e < HL; e++) {
                const int d = lane + 32 * e;
                v[e] = d < head_dim ? __half2float(vr[d]) : 0.0f;
            }
#pragma unroll
            for (int a = 0; a < Q_PER_WARP; a++) {
                const float pj = pw[a * TILE_K + j];
#pragma unroll
                for (int e = 0; e < HL; e++) acc[a][e] += pj * v[e];
            }
        }
    }
#pragma unroll
    for (int a = 0; a < Q_PER_WARP; a++) {
        const int t = t0 + warp * Q_PER_WARP + a;
        if (t >= n_tokens) continue;
        const float inv = 1.0f / l[a];
        float* o = out + ((int64_t)t * n_head + h) * head_dim;
#pragma unroll
        for (int e = 0; e < HL; e++) {
            const int d = lane + 32 * e;
            if (d < head_dim) o[d] = acc[a][e] * inv;
        }
    }
}

template <int HL>
void launch_tiled(const Launch& l, const float* q, const __half* k_cache, const __half* v_cache, float* out,
                  int n_tokens, int n_head, int n_head_kv, int head_dim, float scale, const int* pos, const int* skip) {
    const size_t smem = tiled_smem(head_dim);
    if (smem > 48 * 1024)
        FFNSKIP_CUDA_CHECK(cudaFuncSetAttribute(attention_tiled_kernel<HL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                (int)smem));
    launch(l, attention_tiled_kernel<HL>, dim3(n_head, (n_tokens + TILE_Q - 1) / TILE_Q), 32 * TILE_WARPS, smem, q,
           k_cache, v_cache, out, n_tokens, n_head, n_head_kv, head_dim, scale, pos, skip);
}

}  // namespace

size_t AttentionSplits::bytes(int n_head, int head_dim, int n_splits) {
    return (size_t)n_head * n_splits * (head_dim + 2) * sizeof(float) + (size_t)n_head * sizeof(unsigned);
}

void AttentionSplits::place(void* base, int n_head, int head_dim) {
    partial = static_cast<float*>(base);
    done = reinterpret_cast<unsigned*>(partial + (size_t)n_head * n_splits * (head_dim + 2));
}

void attention(const float* q, const __half* k_cache, const __half* v_cache, float* out, int n_tokens, int n_head,
               int n_head_kv, int head_dim, const int* pos, const int* skip, const Launch& l,
               const AttentionSplits* splits, const RowSlots& rows) {
    const float scale = 1.0f / std::sqrt((float)head_dim);
    if (n_tokens > 1 && l.attn_tiled && !rows.slot) {
        if (head_dim <= 64) launch_tiled<2>(l, q, k_cache, v_cache, out, n_tokens, n_head, n_head_kv, head_dim, scale, pos, skip);
        else if (head_dim <= 128) launch_tiled<4>(l, q, k_cache, v_cache, out, n_tokens, n_head, n_head_kv, head_dim, scale, pos, skip);
        else launch_tiled<8>(l, q, k_cache, v_cache, out, n_tokens, n_head, n_head_kv, head_dim, scale, pos, skip);
        return;
    }
    if (n_tokens == 1 && splits && splits->n_splits > 1 && !rows.slot) {
        launch(l, attention_split_kernel, dim3(n_head, splits->n_splits), 32 * SPLIT_WARPS, 0, q, k_cache, v_cache, out,
               n_head, n_head_kv, head_dim, scale, pos, skip, *splits);
        return;
    }
    launch(l, attention_kernel, dim3(n_head, n_tokens), 32 * ATTN_WARPS, 0, q, k_cache, v_cache, out, n_head, n_head_kv,
           head_dim, scale, pos, skip, rows);
}

}  // namespace cuda
}  // namespace ffnskip
