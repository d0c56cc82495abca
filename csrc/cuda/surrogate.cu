#include "cuda/surrogate.cuh"

#include <string>

#include "cuda/cuda-common.cuh"
#include "skip/surrogate.h"

namespace ffnskip {
namespace cuda {

namespace {

constexpr int SUR_WARPS = 8;   // one matrix row per warp, 8 rows per block
constexpr size_t ALIGN = 256;
size_t align_up(size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

__device__ __forceinline__ bool surrogate_idle(const int32_t* ffn_skip, const int32_t* sur_on) {
    return ffn_skip != nullptr && (*ffn_skip == 0 || *sur_on == 0);
}

__device__ __forceinline__ float weight_at(const void* rows, bool f16, int64_t i) {
    return f16 ? __half2float(static_cast<const __half*>(rows)[i]) : static_cast<const float*>(rows)[i];
}

// t[tok, r] = up[r] . (rmsnorm(x[tok]) * norm_w): grid (ceil(rank / SUR_WARPS), n).
// Every block normalizes its row into shared memory (n_embd floats), the sum of squares
// in double and the scale as norm.cu computes them.
__global__ void __launch_bounds__(SUR_WARPS * 32)
    surrogate_up_kernel(const void* up, bool up_f16, int32_t rank, const float* __restrict__ x,
                        const float* __restrict__ norm_w, float eps, int64_t n_embd, float* __restrict__ t,
                        const int32_t* ffn_skip, const int32_t* sur_on) {
    wait_for_inputs();
    if (surrogate_idle(ffn_skip, sur_on)) return;
    extern __shared__ float u[];   // (n_embd)
    __shared__ double scratch[32];
    const int64_t tok = blockIdx.y;
    const float* xr = x + tok * n_embd;
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < n_embd; i += blockDim.x) sum += (double)xr[i] * xr[i];
    sum = block_sum(sum, scratch);
    const float scale = 1.0f / sqrtf((float)(sum / (double)n_embd) + eps);
    for (int64_t i = threadIdx.x; i < n_embd; i += blockDim.x) u[i] = (xr[i] * scale) * norm_w[i];
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t r = (int64_t)blockIdx.x * SUR_WARPS + warp;
    if (r >= rank) return;
    const int64_t row0 = r * n_embd;
    float acc = 0.0f;
    if (up_f16) {
        const __half* row = static_cast<const __half*>(up) + row0;
        for (int64_t i = lane; i < n_embd; i += 32) acc += __half2float(row[i]) * u[i];
    } else {
        const float* row = static_cast<const float*>(up) + row0;
        for (int64_t i = lane; i < n_embd; i += 32) acc += row[i] * u[i];
    }
    acc = warp_sum(acc);
    if (lane == 0) t[tok * rank + r] = acc;
}

// out[tok, r] = bias[r] + down[r] . t[tok]: grid (ceil(n_embd / SUR_WARPS), n).
__global__ void __launch_bounds__(SUR_WARPS * 32)
    surrogate_down_kernel(const void* down, bool down_f16, int32_t rank, const float* __restrict__ t,
                          const float* __restrict__ bias, int64_t n_embd, float* __restrict__ out,
                          const int32_t* ffn_skip, const int32_t* sur_on) {
    wait_for_inputs();
    if (surrogate_idle(ffn_skip, sur_on)) return;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t r = (int64_t)blockIdx.x * SUR_WARPS + warp;
    if (r >= n_embd) return;
    const int64_t tok = blockIdx.y;
    const float* tr = t + tok * rank;
    float acc = 0.0f;
    for (int64_t j = lane; j < rank; j += 32) acc += weight_at(down, down_f16, r * rank + j) * tr[j];
    acc = warp_sum(acc);
    if (lane == 0) out[tok * n_embd + r] = bias[r] + acc;
}

bool is_f16(GgmlType type) { return type == GgmlType::F16; }

}  // namespace

// ---- upload --------------------------------------------------------------------------

DeviceSurrogates::DeviceSurrogates(std::shared_ptr<const SurrogateSet> set, int64_t n_embd) : set_(std::move(set)) {
    const size_t n_layer = set_->layers.size();
    layers_.assign(n_layer, DeviceSurrogate{});
    present_.assign(n_layer, 0);
    size_t need = 0;
    for (size_t il = 0; il < n_layer; il++) {
        const FfnSurrogate* s = set_->at((int)il);
        if (!s) continue;
        need += align_up((size_t)n_embd * sizeof(float));
        if (s->rank > 0) need += align_up(s->up.n_bytes()) + align_up(s->down.n_bytes());
    }
    if (need == 0) return;
    const cudaError_t err = cudaMalloc(&mem_, need);
    if (err != cudaSuccess) {
        cudaGetLastError();
        mem_ = nullptr;
        throw Error("backend 'cuda': the FFN surrogates of " + set_->path + " need " + std::to_string(need >> 20) +
                    " MiB of device memory: " + cudaGetErrorString(err));
    }
    bytes_ = need;
    uint8_t* p = static_cast<uint8_t*>(mem_);
    try {
        size_t off = 0;
        auto put = [&](const void* src, size_t bytes) {
            void* at = p + off;
            FFNSKIP_CUDA_CHECK(cudaMemcpy(at, src, bytes, cudaMemcpyHostToDevice));
            off += align_up(bytes);
            return at;
        };
        for (size_t il = 0; il < n_layer; il++) {
            const FfnSurrogate* s = set_->at((int)il);
            if (!s) continue;
            DeviceSurrogate& d = layers_[il];
            d.rank = s->rank;
            d.bias = static_cast<const float*>(put(s->bias.data(), (size_t)n_embd * sizeof(float)));
            if (s->rank > 0) {
                d.up_type = s->up.type;
                d.down_type = s->down.type;
                d.up = put(s->up.data, s->up.n_bytes());
                d.down = put(s->down.data, s->down.n_bytes());
            }
            present_[il] = 1;
        }
        // The up kernel normalizes a row into shared memory.
        const size_t smem = (size_t)n_embd * sizeof(float);
        if (smem > 48 * 1024)
            FFNSKIP_CUDA_CHECK(cudaFuncSetAttribute(surrogate_up_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    (int)smem));
    } catch (...) {
        cudaFree(mem_);
        mem_ = nullptr;
        throw;
    }
}

DeviceSurrogates::~DeviceSurrogates() {
    if (mem_) cudaFree(mem_);
}

const DeviceSurrogate* DeviceSurrogates::at(int il) const {
    return il >= 0 && il < (int)present_.size() && present_[il] ? &layers_[il] : nullptr;
}

// ---- the forward step ----------------------------------------------------------------

void surrogate_forward(const DeviceSurrogate& s, const float* x, const float* norm_w, float eps, int n,
                       int64_t n_embd, float* t, float* out, const int32_t* ffn_skip, const int32_t* sur_on,
                       const Launch& l, bool first_pdl) {
    Launch first = l;
    first.pdl = l.pdl && first_pdl;
    if (s.rank > 0) {
        const dim3 grid((unsigned)((s.rank + SUR_WARPS - 1) / SUR_WARPS), (unsigned)n);
        launch(first, surrogate_up_kernel, grid, SUR_WARPS * 32, (size_t)n_embd * sizeof(float), s.up,
               is_f16(s.up_type), s.rank, x, norm_w, eps, n_embd, t, ffn_skip, sur_on);
        first = l;
    }
    const dim3 grid((unsigned)((n_embd + SUR_WARPS - 1) / SUR_WARPS), (unsigned)n);
    launch(first, surrogate_down_kernel, grid, SUR_WARPS * 32, 0, s.down, is_f16(s.down_type), s.rank,
           static_cast<const float*>(t), s.bias, n_embd, out, ffn_skip, sur_on);
}

}  // namespace cuda
}  // namespace ffnskip
