// Small element-wise steps of the forward pass.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

// out[i] = silu(gate[i]) * up[i]
void swiglu(float* out, const float* gate, const float* up, int64_t n, const int* skip, const Launch& l);
// x[i] += y[i]
void add_inplace(float* x, const float* y, int64_t n, const int* skip, const Launch& l);
// Activations for the cuBLAS GEMMs of the prompt (round to nearest even).
void to_f16(__half* out, const float* x, int64_t n, cudaStream_t stream);
void to_bf16(__nv_bfloat16* out, const float* x, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace ffnskip
