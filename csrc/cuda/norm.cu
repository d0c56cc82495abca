#include "cuda/norm.cuh"

#include "cuda/cuda-common.cuh"

namespace ffnskip {
namespace cuda {

namespace {

// One block per row. The sum of squares is accumulated in double, as the CPU does.
__global__ void rmsnorm_kernel(float* __restrict__ out, const float* __restrict__ x, const float* __restrict__ w,
                               int64_t n, float eps, const int* skip) {
    if (skipped(skip)) return;
    __shared__ double scratch[32];
    const float* xr = x + (int64_t)blockIdx.x * n;
    float* o = out + (int64_t)blockIdx.x * n;
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += (double)xr[i] * (double)xr[i];
    sum = block_sum(sum, scratch);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = (xr[i] * scale) * w[i];
}

}  // namespace

void rmsnorm(float* out, const float* x, const float* w, int n_rows, int64_t n, float eps, const int* skip,
             cudaStream_t stream) {
    rmsnorm_kernel<<<n_rows, 256, 0, stream>>>(out, x, w, n, eps, skip);
    FFNSKIP_CUDA_LAUNCHED();
}

}  // namespace cuda
}  // namespace ffnskip
