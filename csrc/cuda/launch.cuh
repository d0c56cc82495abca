// How the kernels of a forward pass are launched: the stream, and the decode settings
// that the benchmark compares (read once from the environment by the backend).
//
// Programmatic dependent launch (Hopper and newer): a kernel launched with it may start
// while the kernel before it on the stream is still finishing, so the launch and the
// first blocks overlap the previous kernel's tail. Every kernel of a token step begins
// with wait_for_inputs(), which returns once the previous kernel has completed and its
// writes are visible (at once when the kernel was launched normally), so a kernel never
// reads an input or a skip word early.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda/cuda-common.cuh"

namespace ffnskip {
namespace cuda {

struct Launch {
    cudaStream_t stream = nullptr;
    bool pdl = false;              // programmatic dependent launch
    int mv_rows = 2;               // matrix rows per warp of the decode products: 2 or 4
    bool q8_activations = false;   // Q4_K and Q8_0 decode products with 8-bit x (dp4a), as llama.cpp
    bool mv_split = false;         // F16/BF16 decode products: a block's 4 warps share its rows
    bool attn_tiled = false;       // prompt attention over tiles of 32 queries x 32 keys
};

// Launches kernel<<<grid, block, smem, l.stream>>>(args...), with programmatic
// dependent launch when l.pdl.
template <typename... Params, typename... Args>
void launch(const Launch& l, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = l.stream;
    cfg.attrs = attr;
    cfg.numAttrs = l.pdl ? 1 : 0;
    FFNSKIP_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// The first statement of every kernel of a token step (see above). It then lets the
// next kernel on the stream begin its launch.
__device__ __forceinline__ void wait_for_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

}  // namespace cuda
}  // namespace ffnskip
