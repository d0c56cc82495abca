#include "cuda/norm.cuh"

#include "cuda/cuda-common.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

namespace {

// One block per row, float4 loads. The sum of squares is accumulated in double, as the CPU does.
constexpr int NORM_THREADS = 512;

__global__ void __launch_bounds__(NORM_THREADS) rmsnorm_kernel(float* __restrict__ out, const float* __restrict__ x,
                                                               const float* __restrict__ w, int64_t n, float eps,
                                                               const int* skip) {
    wait_for_inputs();
    if (skipped(skip)) return;
    __shared__ double scratch[32];
    const float4* xr = reinterpret_cast<const float4*>(x + (int64_t)blockIdx.x * n);
    float4* o = reinterpret_cast<float4*>(out + (int64_t)blockIdx.x * n);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    const int64_t n4 = n / 4;
    double sum = 0.0;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = xr[i];
        sum += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    sum = block_sum(sum, scratch);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = xr[i], g = w4[i];
        o[i] = make_float4((v.x * scale) * g.x, (v.y * scale) * g.y, (v.z * scale) * g.z, (v.w * scale) * g.w);
    }
}

}  // namespace

void rmsnorm(float* out, const float* x, const float* w, int n_rows, int64_t n, float eps, const int* skip,
             const Launch& l) {
    launch(l, rmsnorm_kernel, n_rows, NORM_THREADS, 0, out, x, w, n, eps, skip);
}

}  // namespace cuda
}  // namespace ffnskip
