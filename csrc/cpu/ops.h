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

// y (n_tokens, W.n_out) = x (n_tokens, W.n_in) times W transposed. `scratch` receives
// the activations converted to W's vec_dot type (grown as needed, never shrunk).
void matmul(ThreadPool& pool, const WeightMatrix& W, const float* x, float* y, int n_tokens,
            std::vector<uint8_t>& scratch);

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
