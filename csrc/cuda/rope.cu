#include "cuda/rope.cuh"

#include "cuda/cuda-common.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

namespace {

// One thread per (token, kv head, pair of elements) of k/v, then one per (token, head,
// rotated pair) of q when q is given: pairs below n_rot rotate, the rest pass through.
__global__ void rope_store_kernel(float* q, int n_head, const int* skip_q, const float* k, const float* v,
                                  __half* k_cache, __half* v_cache, int n_tokens, int n_head_kv, RopeParams rp,
                                  const int* pos, const int* skip) {
    wait_for_inputs();
    const int pairs = rp.head_dim / 2;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t n_kv = (int64_t)n_tokens * n_head_kv * pairs;
    if (idx >= n_kv) {
        idx -= n_kv;
        const int half = rp.n_rot / 2;
        if (q == nullptr || skipped(skip_q) || idx >= (int64_t)n_tokens * n_head * half) return;
        const int i = (int)(idx % half);
        const int h = (int)((idx / half) % n_head);
        const int t = (int)(idx / ((int64_t)half * n_head));
        float c, s;
        rope_angle(*pos + t, i, rp, &c, &s);
        float* r = q + ((int64_t)t * n_head + h) * rp.head_dim;
        const float x0 = r[2 * i], x1 = r[2 * i + 1];
        r[2 * i] = x0 * c - x1 * s;
        r[2 * i + 1] = x0 * s + x1 * c;
        return;
    }
    if (skipped(skip)) return;
    const int i = (int)(idx % pairs);
    const int h = (int)((idx / pairs) % n_head_kv);
    const int t = (int)(idx / ((int64_t)pairs * n_head_kv));
    const int kv_width = n_head_kv * rp.head_dim;
    const int p = *pos + t;
    const int64_t src = (int64_t)t * kv_width + (int64_t)h * rp.head_dim + 2 * i;
    const int64_t dst = (int64_t)p * kv_width + (int64_t)h * rp.head_dim + 2 * i;
    float x0 = k[src], x1 = k[src + 1];
    if (2 * i < rp.n_rot) {
        float c, s;
        rope_angle(p, i, rp, &c, &s);
        const float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
        x0 = r0;
        x1 = r1;
    }
    k_cache[dst] = __float2half_rn(x0);
    k_cache[dst + 1] = __float2half_rn(x1);
    v_cache[dst] = __float2half_rn(v[src]);
    v_cache[dst + 1] = __float2half_rn(v[src + 1]);
}

unsigned blocks(int64_t n) { return (unsigned)((n + 127) / 128); }

}  // namespace

void rope_store_kv(const float* k, const float* v, __half* k_cache, __half* v_cache, int n_tokens, int n_head_kv,
                   const RopeParams& rp, const int* pos, const int* skip, const Launch& l, float* q, int n_head,
                   const int* skip_q) {
    const int64_t n = (int64_t)n_tokens * n_head_kv * (rp.head_dim / 2) +
                      (q ? (int64_t)n_tokens * n_head * (rp.n_rot / 2) : 0);
    launch(l, rope_store_kernel, blocks(n), 128, 0, q, n_head, skip_q, k, v, k_cache, v_cache, n_tokens, n_head_kv, rp,
           pos, skip);
}

}  // namespace cuda
}  // namespace ffnskip
