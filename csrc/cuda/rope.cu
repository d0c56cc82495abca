#include "cuda/rope.cuh"

#include "cuda/cuda-common.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

namespace {

// One thread per (token, kv head, pair of elements) of k/v, then one per (token, head,
// pair) of q when q is given: pairs below n_rot / 2 rotate, the rest pass through. q
// needs only its rotated pairs unless it has a bias to add (q_pairs).
__global__ void rope_store_kernel(float* q, int n_head, int q_pairs, const int* skip_q, const float* k, const float* v,
                                  __half* k_cache, __half* v_cache, int n_tokens, int n_head_kv, RopeParams rp,
                                  const int* pos, const int* skip, QkvBias bias, RowSlots rows) {
    wait_for_inputs();
    const int pairs = rp.head_dim / 2;
    const int half = rp.n_rot / 2;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t n_kv = (int64_t)n_tokens * n_head_kv * pairs;
    if (idx >= n_kv) {
        idx -= n_kv;
        if (q == nullptr || skipped(skip_q) || idx >= (int64_t)n_tokens * n_head * q_pairs) return;
        const int i = (int)(idx % q_pairs);
        const int h = (int)((idx / q_pairs) % n_head);
        const int t = (int)(idx / ((int64_t)q_pairs * n_head));
        int e0, e1;
        rope_pair(i, rp, &e0, &e1);
        float* r = q + ((int64_t)t * n_head + h) * rp.head_dim;
        float x0 = r[e0], x1 = r[e1];
        if (bias.q) {
            x0 += bias.q[h * rp.head_dim + e0];
            x1 += bias.q[h * rp.head_dim + e1];
        }
        if (i < half) {
            float c, s;
            rope_angle(token_pos(pos, t, rows), i, rp, &c, &s);
            const float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
            x0 = r0;
            x1 = r1;
        }
        r[e0] = x0;
        r[e1] = x1;
        return;
    }
    if (skipped(skip)) return;
    const int i = (int)(idx % pairs);
    const int h = (int)((idx / pairs) % n_head_kv);
    const int t = (int)(idx / ((int64_t)pairs * n_head_kv));
    const int kv_width = n_head_kv * rp.head_dim;
    const int p = token_pos(pos, t, rows);
    int e0, e1;
    rope_pair(i, rp, &e0, &e1);
    const int b0 = h * rp.head_dim + e0, b1 = h * rp.head_dim + e1;   // within a token's row
    const int64_t src = (int64_t)t * kv_width, dst = cache_offset(t, rows) + (int64_t)p * kv_width;
    float x0 = k[src + b0], x1 = k[src + b1];
    float v0 = v[src + b0], v1 = v[src + b1];
    if (bias.k) {
        x0 += bias.k[b0];
        x1 += bias.k[b1];
    }
    if (bias.v) {
        v0 += bias.v[b0];
        v1 += bias.v[b1];
    }
    if (i < half) {
        float c, s;
        rope_angle(p, i, rp, &c, &s);
        const float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
        x0 = r0;
        x1 = r1;
    }
    k_cache[dst + b0] = __float2half_rn(x0);
    k_cache[dst + b1] = __float2half_rn(x1);
    v_cache[dst + b0] = __float2half_rn(v0);
    v_cache[dst + b1] = __float2half_rn(v1);
}

unsigned blocks(int64_t n) { return (unsigned)((n + 127) / 128); }

}  // namespace

void rope_store_kv(const float* k, const float* v, __half* k_cache, __half* v_cache, int n_tokens, int n_head_kv,
                   const RopeParams& rp, const int* pos, const int* skip, const Launch& l, float* q, int n_head,
                   const int* skip_q, const QkvBias& bias, const RowSlots& rows) {
    const int q_pairs = bias.q ? rp.head_dim / 2 : rp.n_rot / 2;
    const int64_t n = (int64_t)n_tokens * n_head_kv * (rp.head_dim / 2) + (q ? (int64_t)n_tokens * n_head * q_pairs : 0);
    launch(l, rope_store_kernel, blocks(n), 128, 0, q, n_head, q_pairs, skip_q, k, v, k_cache, v_cache, n_tokens,
           n_head_kv, rp, pos, skip, bias, rows);
}

}  // namespace cuda
}  // namespace ffnskip
