// The decode products' launch description, shared by gemv.cu (which builds it for a
// call) and gemv-kernels.cuh (the kernels, compiled per group of weight types in the
// gemv-*.cu files, so that they build in parallel).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/gemv.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {
namespace gemv_detail {

constexpr int UNIT = 32;   // weights per decoded unit: a block, or a K-quant sub-block
constexpr int MV_WARPS = 4;
constexpr int XS_UNIT = UNIT + 8;    // halves per F16-staged unit: 32 values + 16 bytes of padding
constexpr int XQ_UNIT = UNIT + 16;   // bytes per 8-bit-staged unit: 32 values + 16 bytes of padding

// What a launch computes: up to three matrices of one type and row length times x.
// STORE: y_m = W_m x. ACCUMULATE: y_0 += W_0 x. SWIGLU: y_0 = silu(W_0 x) * (W_1 x), a
// warp taking the same rows of W_0 and W_1. QKV: as STORE, rows stored as a.qkv says
// (its own mode so that the other kernels carry none of its registers). SWIGLU_NORM:
// SWIGLU of rmsnorm(x) * a.norm_w, each block computing x's RMS itself, so that the
// FFN's RMSNorm needs no launch of its own.
enum MatvecMode : int { MV_STORE = 0, MV_ACCUMULATE = 1, MV_SWIGLU = 2, MV_QKV = 3, MV_SWIGLU_NORM = 4 };

struct MatvecArgs {
    const uint8_t* W[3];
    float* y[3];
    const int* skip[3];
    int64_t n_out[3];
    int32_t block_start[4];   // blocks of matrix m: block_start[m] .. block_start[m+1]-1
    int n_mat;
    int64_t n_in;
    size_t row_bytes;
    QkvStore qkv;   // MV_QKV: how matrix m's rows are stored
    const float* norm_w;   // MV_SWIGLU_NORM: (n_in) the RMSNorm's weights
    float norm_eps;
};

// Whether the block's warps share its rows (Launch::mv_split): 16-bit dense types only.
inline bool splits_rows(GgmlType type, const Launch& l) {
    return l.mv_split && (type == GgmlType::F16 || type == GgmlType::BF16);
}

inline bool uses_q8x(GgmlType type, const Launch& l) {
    return l.q8_activations && (type == GgmlType::Q4_K || type == GgmlType::Q8_0);
}

// Shared memory for x: staged as F16 or 8-bit units for the block types; for the dense
// types only with the RMSNorm folded in (x normalized once per block, as floats).
inline size_t matvec_smem(GgmlType type, int64_t n_in, bool q8x, bool norm) {
    if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16) return norm ? n_in * sizeof(float) : 0;
    const size_t n_units = (size_t)(n_in / UNIT);
    if (q8x) return n_units * (XQ_UNIT + 2 * sizeof(float));
    return n_units * XS_UNIT * sizeof(__half);
}

// Per-type entry points: defined in gemv-kernels.cuh, instantiated in gemv-*.cu.
template <GgmlType T>
void launch_matvec_t(const MatvecArgs& a, const float* x, int mode, unsigned blocks, const Launch& l);
template <GgmlType T>
void set_smem_limit_t(int bytes);   // every decode kernel of type T that stages x in shared memory
template <GgmlType T>
void dequantize_rows_t(const DeviceMatrix& W, int64_t row0, int64_t n_rows, __half* out, cudaStream_t stream);
template <GgmlType T>
void embed_rows_t(const DeviceMatrix& W, const int32_t* tokens, int n, float* out, const Launch& l);

}  // namespace gemv_detail
}  // namespace cuda
}  // namespace ffnskip
