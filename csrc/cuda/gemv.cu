// The decode products' host side: which kernel a call takes, and the launch description
// (gemv-impl.cuh); the kernels are in gemv-kernels.cuh, compiled per group of types in
// the gemv-*.cu files.
#include "cuda/gemv.cuh"

#include <algorithm>
#include <string>

#include "cuda/cuda-common.cuh"
#include "cuda/gemv-impl.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

using namespace gemv_detail;

namespace {

// Calls F.template operator()<T>() for the matrix's type.
template <typename F>
void dispatch(GgmlType type, F&& f) {
    switch (type) {
        case GgmlType::F32: f.template operator()<GgmlType::F32>(); break;
        case GgmlType::F16: f.template operator()<GgmlType::F16>(); break;
        case GgmlType::BF16: f.template operator()<GgmlType::BF16>(); break;
        case GgmlType::Q8_0: f.template operator()<GgmlType::Q8_0>(); break;
        case GgmlType::Q4_0: f.template operator()<GgmlType::Q4_0>(); break;
        case GgmlType::Q4_1: f.template operator()<GgmlType::Q4_1>(); break;
        case GgmlType::Q5_0: f.template operator()<GgmlType::Q5_0>(); break;
        case GgmlType::Q5_1: f.template operator()<GgmlType::Q5_1>(); break;
        case GgmlType::Q4_K: f.template operator()<GgmlType::Q4_K>(); break;
        case GgmlType::Q6_K: f.template operator()<GgmlType::Q6_K>(); break;
        default: throw Error(std::string("CUDA backend: no kernel for tensor type ") + type_traits(type).name);
    }
}

unsigned blocks_for(int64_t n, int per_block) { return (unsigned)((n + per_block - 1) / per_block); }

struct MatvecLaunch {
    const MatvecArgs& a; const float* x; int mode; unsigned blocks; const Launch& l;
    template <GgmlType T> void operator()() const { launch_matvec_t<T>(a, x, mode, blocks, l); }
};
struct MatvecSmemLimit {
    int bytes;
    template <GgmlType T> void operator()() const { set_smem_limit_t<T>(bytes); }
};
struct DequantLaunch {
    const DeviceMatrix& W; int64_t row0, n_rows; __half* out; cudaStream_t s;
    template <GgmlType T> void operator()() const { dequantize_rows_t<T>(W, row0, n_rows, out, s); }
};
struct EmbedLaunch {
    const DeviceMatrix& W; const int32_t* tokens; int n; float* out; const Launch& l;
    template <GgmlType T> void operator()() const { embed_rows_t<T>(W, tokens, n, out, l); }
};

void launch_matvec(const DeviceMatrix* const* W, float* const* y, const int* const* skip, int n_mat, int mode,
                   const float* x, const Launch& l, const QkvStore* qkv = nullptr, const float* norm_w = nullptr,
                   float norm_eps = 0.0f) {
    if (l.mv_rows != 2 && l.mv_rows != 4)
        throw Error("CUDA backend: rows per warp must be 2 or 4, not " + std::to_string(l.mv_rows));
    MatvecArgs a{};
    const int rows_per_block = splits_rows(W[0]->type, l) ? l.mv_rows : MV_WARPS * l.mv_rows;
    const int counted = mode == MV_SWIGLU || mode == MV_SWIGLU_NORM ? 1 : n_mat;   // SWIGLU: W_1 shares W_0's rows
    int32_t blocks = 0;
    for (int m = 0; m < 3; m++) {
        a.block_start[m] = blocks;
        if (m < n_mat) {
            if (W[m]->type != W[0]->type || W[m]->n_in != W[0]->n_in || W[m]->row_bytes != W[0]->row_bytes)
                throw Error("CUDA backend: internal error: fused matrix-vector product over unlike matrices");
            a.W[m] = W[m]->data;
            a.y[m] = y[m];
            a.skip[m] = skip ? skip[m] : nullptr;
            a.n_out[m] = W[m]->n_out;
        }
        if (m < counted) blocks += (int32_t)blocks_for(W[m]->n_out, rows_per_block);
    }
    a.block_start[3] = blocks;
    for (int m = counted; m < 3; m++) a.block_start[m] = blocks;
    a.n_mat = n_mat;
    if (qkv) {
        if (mode != MV_QKV) throw Error("CUDA backend: internal error: a RoPE store in a fused product");
        a.qkv = *qkv;
        for (int m = 0; m < n_mat; m++)
            if (a.qkv.store[m] != RowStore::FLOAT && W[m]->n_out % 2 != 0)
                throw Error("CUDA backend: internal error: RoPE pairs over an odd number of rows");
    }
    if ((mode == MV_SWIGLU_NORM) != (norm_w != nullptr))
        throw Error("CUDA backend: internal error: RMSNorm weights without the folded-norm product");
    a.norm_w = norm_w;
    a.norm_eps = norm_eps;
    a.n_in = W[0]->n_in;
    a.row_bytes = W[0]->row_bytes;
    dispatch(W[0]->type, MatvecLaunch{a, x, mode, (unsigned)blocks, l});
}

}  // namespace

bool matrix_type_supported(GgmlType type) {
    switch (type) {
        case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
        case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1:
        case GgmlType::Q4_K: case GgmlType::Q6_K:
            return true;
        default:
            return false;
    }
}

void matvec_prepare(int64_t max_n_in, int64_t norm_n_in) {
    const int bytes = (int)std::max({matvec_smem(GgmlType::Q4_0, max_n_in, false, false),
                                     matvec_smem(GgmlType::Q8_0, max_n_in, true, false),
                                     matvec_smem(GgmlType::F32, norm_n_in, false, true)});
    if (bytes <= 48 * 1024) return;
    for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1,
                       GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q6_K})
        dispatch(t, MatvecSmemLimit{bytes});
}

void matvec(const DeviceMatrix& W, const float* x, float* y, const int* skip, const Launch& l) {
    const DeviceMatrix* w[1] = {&W};
    float* ys[1] = {y};
    const int* sk[1] = {skip};
    launch_matvec(w, ys, sk, 1, MV_STORE, x, l);
}

void matvec_multi(const DeviceMatrix* const* W, float* const* y, const int* const* skip, int n, const float* x,
                  const Launch& l, const QkvStore* qkv) {
    if (n < 1 || n > 3) throw Error("CUDA backend: internal error: matvec_multi of " + std::to_string(n) + " matrices");
    launch_matvec(W, y, skip, n, qkv ? MV_QKV : MV_STORE, x, l, qkv);
}

void matvec_accumulate(const DeviceMatrix& W, const float* x, float* y, const int* skip, const Launch& l) {
    const DeviceMatrix* w[1] = {&W};
    float* ys[1] = {y};
    const int* sk[1] = {skip};
    launch_matvec(w, ys, sk, 1, MV_ACCUMULATE, x, l);
}

void matvec_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x, float* y, const int* skip,
                   const Launch& l, const float* norm_w, float norm_eps) {
    if (gate.n_out != up.n_out) throw Error("CUDA backend: internal error: gate and up differ in rows");
    const DeviceMatrix* w[2] = {&gate, &up};
    float* ys[2] = {y, nullptr};
    const int* sk[2] = {skip, skip};
    launch_matvec(w, ys, sk, 2, norm_w ? MV_SWIGLU_NORM : MV_SWIGLU, x, l, nullptr, norm_w, norm_eps);
}

bool fusable(const DeviceMatrix& a, const DeviceMatrix& b) {
    return a.type == b.type && a.n_in == b.n_in && a.row_bytes == b.row_bytes;
}

void dequantize_rows_f16(const DeviceMatrix& W, int64_t row0, int64_t n_rows, __half* out, cudaStream_t stream) {
    dispatch(W.type, DequantLaunch{W, row0, n_rows, out, stream});
}

void embed_rows(const DeviceMatrix& W, const int32_t* tokens, int n, float* out, const Launch& l) {
    dispatch(W.type, EmbedLaunch{W, tokens, n, out, l});
}

}  // namespace cuda
}  // namespace ffnskip
