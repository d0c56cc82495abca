// Rotary position embedding (llama.cpp's "normal" mode: pairs (2i, 2i + 1) rotate; NEOX
// mode: pairs (i, i + n_rot/2)), the Q/K/V biases, and the store of rotated keys and
// values into the F16 cache.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda-common.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

struct RopeParams {
    int n_rot = 0;              // rotated dimensions per head (even, <= head_dim)
    int head_dim = 0;
    float theta_scale = 1.0f;   // freq_base^(-2 / n_rot), computed on the host as the CPU does
    float freq_scale = 1.0f;
    const float* freq_factors = nullptr;   // device (n_rot / 2) or null
    bool neox = false;          // pairs (i, i + n_rot/2) instead of (2i, 2i + 1)
};

// Elements (*e0, *e1) of pair i (0 <= i < head_dim / 2) of a head. Pairs below n_rot / 2
// rotate; the rest, which pass through, are adjacent in both modes, so the pairs of
// either mode cover the head once.
__device__ __forceinline__ void rope_pair(int i, const RopeParams& rp, int* e0, int* e1) {
    const int half = rp.n_rot / 2;
    if (rp.neox && i < half) {
        *e0 = i;
        *e1 = i + half;
    } else {
        *e0 = 2 * i;
        *e1 = 2 * i + 1;
    }
}

// The Q/K/V biases of a layer (device, nullptr when the architecture has none).
struct QkvBias {
    const float* q = nullptr;   // (n_head * head_dim)
    const float* k = nullptr;   // (kv_width)
    const float* v = nullptr;   // (kv_width)
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

// Adds the biases to k and v (n_tokens, kv_width), rotates k and stores k, v as fp16 at
// rows *pos + t of one layer's caches k_cache, v_cache (n_ctx, kv_width); with q given,
// also adds its bias to q (n_tokens, n_head, head_dim) and rotates it in place (unless
// *skip_q), in the same launch. With rows.slot, token t is a batch row stored at row pos[t]
// of its own slot's caches (cuda-common.cuh).
void rope_store_kv(const float* k, const float* v, __half* k_cache, __half* v_cache, int n_tokens, int n_head_kv,
                   const RopeParams& rp, const int* pos, const int* skip, const Launch& l, float* q = nullptr,
                   int n_head = 0, const int* skip_q = nullptr, const QkvBias& bias = {}, const RowSlots& rows = {});

}  // namespace cuda
}  // namespace ffnskip
