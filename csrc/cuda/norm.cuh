// RMSNorm on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w for n_rows rows of n elements.
void rmsnorm(float* out, const float* x, const float* w, int n_rows, int64_t n, float eps, const int* skip,
             const Launch& l);

}  // namespace cuda
}  // namespace ffnskip
