// Shared by the CUDA backend's files: error checks that throw ffnskip errors, and the
// "skip word" convention every kernel of a token step follows.
//
// Skip words: a kernel that belongs to a block which a skip policy may leave out takes
// `const int* skip` (a word in device memory, or null = always run). When *skip != 0
// the kernel returns at once. The words are written by the host before a step (policy
// decisions known up front) and by the gate kernel during the step (ffn_skip), so a
// captured CUDA graph serves every step and no layer waits for the host.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include <ffnskip/ffnskip.h>

namespace ffnskip {
namespace cuda {

// Throws ffnskip::Error naming the failed call and CUDA's reason.
void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

#define FFNSKIP_CUDA_CHECK(call)                                                        \
    do {                                                                                \
        cudaError_t err_ = (call);                                                      \
        if (err_ != cudaSuccess) ::ffnskip::cuda::throw_cuda_error(err_, #call, __FILE__, __LINE__); \
    } while (0)

// After a kernel launch: reports bad launch configurations at once.
#define FFNSKIP_CUDA_LAUNCHED() FFNSKIP_CUDA_CHECK(cudaGetLastError())

__device__ __forceinline__ bool skipped(const int* skip) { return skip != nullptr && *skip != 0; }

// The rows of a batched step (forward_rows): token t is the next token of the sequence in
// KV cache slot slot[t], at position pos[t] (pos then points at n positions, one per row,
// instead of the first of n consecutive ones). The layer's cache pointer is slot 0's;
// slot s starts slot_elems elements further on. slot == nullptr: one sequence.
struct RowSlots {
    const int* slot = nullptr;   // device (n_tokens)
    int64_t slot_elems = 0;
};

// Where token t of a step sits: its position and the offset of its sequence's cache.
__device__ __forceinline__ int token_pos(const int* pos, int t, const RowSlots& rows) {
    return rows.slot ? pos[t] : *pos + t;
}
__device__ __forceinline__ int64_t cache_offset(int t, const RowSlots& rows) {
    return rows.slot ? (int64_t)rows.slot[t] * rows.slot_elems : 0;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of up to 1024 threads (a multiple of 32); every thread gets it.
// `scratch` holds 32 values of T in shared memory.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();   // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T total = lane < n_warps ? scratch[lane] : T(0);
    return warp_sum(total);
}

}  // namespace cuda
}  // namespace ffnskip
