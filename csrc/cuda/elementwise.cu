#include "cuda/elementwise.cuh"

#include "cuda/cuda-common.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

namespace {

__global__ void swiglu_kernel(float* out, const float* gate, const float* up, int64_t n, const int* skip) {
    wait_for_inputs();
    if (skipped(skip)) return;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}

__global__ void add_kernel(float* x, const float* y, int64_t n, const int* skip) {
    wait_for_inputs();
    if (skipped(skip)) return;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

__global__ void to_f16_kernel(__half* out, const float* x, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2half_rn(x[i]);
}

__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* x, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

unsigned blocks(int64_t n) { return (unsigned)((n + 255) / 256); }

}  // namespace

void swiglu(float* out, const float* gate, const float* up, int64_t n, const int* skip, const Launch& l) {
    launch(l, swiglu_kernel, blocks(n), 256, 0, out, gate, up, n, skip);
}

void add_inplace(float* x, const float* y, int64_t n, const int* skip, const Launch& l) {
    launch(l, add_kernel, blocks(n), 256, 0, x, y, n, skip);
}

void to_f16(__half* out, const float* x, int64_t n, cudaStream_t stream) {
    to_f16_kernel<<<blocks(n), 256, 0, stream>>>(out, x, n);
    FFNSKIP_CUDA_LAUNCHED();
}

void to_bf16(__nv_bfloat16* out, const float* x, int64_t n, cudaStream_t stream) {
    to_bf16_kernel<<<blocks(n), 256, 0, stream>>>(out, x, n);
    FFNSKIP_CUDA_LAUNCHED();
}

}  // namespace cuda
}  // namespace ffnskip
