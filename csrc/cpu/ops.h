// CPU kernels of the forward pass. Activations are float32, row-major
// (token, feature); weights stay in their GGUF block format.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/thread-pool.h"
#include "model/model.h"

namespace ffnskip {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]   (sum of squares in double, as llama.cpp)
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);

// Activation rows converted to a weight's vec_dot type (grown as needed, never shrunk),
// and what they were made from, so that matrices reading the same input (Q, K, V;
// gate, up) convert it once.
struct ActRows {
    const float* src = nullptr;    // the float rows converted; null = nothing valid
    GgmlType type = GgmlType::F32;
    int64_t n_in = 0;
    int n_tokens = 0;
    std::vector<uint8_t> data;     // (n_tokens, row_size(type, n_in))
};

// y (n_tokens, W.n_out) = x (n_tokens, W.n_in) times W transposed. same_input: x has
// not changed since the previous matmul with `act`, whose conversion is reused when
// it was made from x for the same type and shape.
void matmul(ThreadPool& pool, const WeightMatrix& W, const float* x, float* y, int n_tokens, ActRows& act,
            bool same_input = false);

// fp16 inner loops of attention; attn_kernels() picks SIMD or scalar versions (the
// choice honours set_force_scalar at the time of the call).
struct AttnKernels {
    float (*dot_f16)(const float* q, const uint16_t* k, int n);      // sum q[i] * k[i]
    void (*axpy_f16)(float* out, float a, const uint16_t* v, int n);  // out += a * v
    void (*to_f16)(uint16_t* dst, const float* src, int n);           // round to nearest even
};
AttnKernels attn_kernels();

// One embedding row, decoded to float.
void embedding_row(const WeightMatrix& table, int32_t token, float* out);

// Rotates the first n_rot dims of each of n_heads heads of width head_dim in place,
// llama.cpp's "normal" mode (adjacent pairs) for position pos.
void rope(float* x, int n_heads, int head_dim, int n_rot, int pos, float freq_base, float freq_scale,
          const float* freq_factors);

// out = silu(gate) * up, elementwise.
void swiglu(float* out, const float* gate, const float* up, int64_t n);

// x += f, returning cos(x + f, x) of the old x (double accumulators): the FFN-skip
// gate measured in the same pass as the residual add.
double residual_add_cosine(float* x, const float* f, int64_t n);

}  // namespace ffnskip
