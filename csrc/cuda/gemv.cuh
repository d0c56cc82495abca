// Weight matrices on the device: de-quantizing matrix-vector products for decode,
// de-quantization to F16 tiles for the prompt GEMMs, and embedding rows.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/launch.cuh"
#include "cuda/rope.cuh"
#include "quant/quant.h"

namespace ffnskip {
namespace cuda {

// A weight matrix in device memory, laid out exactly as in the GGUF file:
// n_out rows of n_in elements, each row row_bytes long; y = W x.
struct DeviceMatrix {
    GgmlType type = GgmlType::F32;
    int64_t n_in = 0;
    int64_t n_out = 0;
    size_t row_bytes = 0;
    const uint8_t* data = nullptr;
};

// Types the kernels decode: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K.
// Rows must hold a multiple of 32 elements.
bool matrix_type_supported(GgmlType type);

// y[r] = sum_i W[r, i] x[i] for one token (x, y float). Returns at once when *skip != 0.
void matvec(const DeviceMatrix& W, const float* x, float* y, const int* skip, const Launch& l);

// How a product's rows are stored when it is Q, K or V of a decode step with RoPE folded
// in: rows (2i, 2i + 1) of a head are a rotation pair, and a warp holds both (normal
// RoPE only, without biases: the backend folds nothing for other models).
enum class RowStore : int {
    FLOAT = 0,        // y[r] as computed
    ROPE_FLOAT = 1,   // q: rotated pairs into y
    ROPE_CACHE = 2,   // k: rotated pairs into the F16 cache row at *pos
    CACHE = 3,        // v: into the F16 cache row at *pos
};
struct QkvStore {
    RowStore store[3] = {RowStore::FLOAT, RowStore::FLOAT, RowStore::FLOAT};   // per matrix of the launch
    __half* cache[3] = {nullptr, nullptr, nullptr};   // the layer's (n_ctx, n_out) cache for ROPE_CACHE, CACHE
    RopeParams rope;
    const int* pos = nullptr;   // device
};

// y_m = W_m x for n (1..3) matrices of one type and row length, in one launch; matrix m
// returns at once when *skip[m] != 0 (skip may be null). With qkv, rows are stored as
// qkv->store[m] says (rotated, or into a KV cache) instead of into y_m.
void matvec_multi(const DeviceMatrix* const* W, float* const* y, const int* const* skip, int n, const float* x,
                  const Launch& l, const QkvStore* qkv = nullptr);

// y += W x (the residual add fused into the product).
void matvec_accumulate(const DeviceMatrix& W, const float* x, float* y, const int* skip, const Launch& l);

// y = silu(gate x) * (up x): the FFN's first half in one launch (gate, up fusable).
// With norm_w, x is first replaced by rmsnorm(x) * norm_w (as norm.cu computes it): the
// FFN's RMSNorm folded in.
void matvec_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x, float* y, const int* skip,
                   const Launch& l, const float* norm_w = nullptr, float norm_eps = 0.0f);

// Whether two matrices can share a launch (same type and row length).
bool fusable(const DeviceMatrix& a, const DeviceMatrix& b);

// Raises the shared-memory limit of the kernels that stage x in shared memory (every
// setting of Launch) for rows of up to max_n_in elements, and of norm_n_in elements for
// the products with the RMSNorm folded in. Call once before the first product.
void matvec_prepare(int64_t max_n_in, int64_t norm_n_in);

// Rows [row0, row0 + n_rows) of W as F16, row-major (n_rows, n_in), for cuBLAS.
void dequantize_rows_f16(const DeviceMatrix& W, int64_t row0, int64_t n_rows, __half* out, cudaStream_t stream);

// out[t] = row tokens[t] of W as float (n tokens; the ids are read on the device).
void embed_rows(const DeviceMatrix& W, const int32_t* tokens, int n, float* out, const Launch& l);

}  // namespace cuda
}  // namespace ffnskip
