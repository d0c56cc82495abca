// Rotary position embedding (llama.cpp's "normal" mode: adjacent pairs rotate) and
// the store of rotated keys and values into the F16 cache.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

struct RopeParams {
    int n_rot = 0;              // rotated dimensions per head (even, <= head_dim)
    int head_dim = 0;
    float theta_scale = 1.0f;   // freq_base^(-2 / n_rot), computed on the host as the CPU does
    float freq_scale = 1.0f;
    const float* freq_factors = nullptr;   // device (n_rot / 2) or null
};

// cos and sin of the angle of pair i at position p. theta is built by repeated
// multiplication in float, as the CPU (and llama.cpp) do, so the angles round alike.
__device__ __forceinline__ void rope_angle(int p, int i, const RopeParams& rp, float* c, float* s) {
    float theta = (float)p;
    for (int j = 0; j < i; j++) theta *= rp.theta_scale;
    const float t = rp.freq_scale * (rp.freq_factors ? theta / rp.freq_factors[i] : theta);
    *c = cosf(t);
    *s = sinf(t);
}

// Rotates k and stores k, v (n_tokens, kv_width) as fp16 at rows *pos + t of one
// layer's caches k_cache, v_cache (n_ctx, kv_width); with q given, also rotates q
// (n_tokens, n_head, head_dim) in place (unless *skip_q), in the same launch.
void rope_store_kv(const float* k, const float* v, __half* k_cache, __half* v_cache, int n_tokens, int n_head_kv,
                   const RopeParams& rp, const int* pos, const int* skip, const Launch& l, float* q = nullptr,
                   int n_head = 0, const int* skip_q = nullptr);

}  // namespace cuda
}  // namespace ffnskip
