#include "cuda/backend-cuda.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <optional>
#include <stdexcept>

#include "cuda/attention.cuh"
#include "cuda/cuda-common.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/graph-if.cuh"
#include "cuda/norm.cuh"

namespace ffnskip {

namespace cuda {
void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
    const char* base = std::strrchr(file, '/');
    throw Error(std::string("CUDA error: ") + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ") in " + what +
                " at " + (base ? base + 1 : file) + ":" + std::to_string(line));
}
}  // namespace cuda

namespace {

constexpr size_t ALIGN = 256;
size_t align_up(size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }
std::string gib(double bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
    return buf;
}

}  // namespace

// ---- availability ------------------------------------------------------------------

bool cuda_device_available(std::string* why) {
    // The runtime is linked statically and opens the driver library itself; say so
    // plainly when it is missing rather than "driver version is insufficient".
    void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!driver) {
        *why = "no NVIDIA driver (libcuda.so.1 could not be loaded)";
        return false;
    }
    dlclose(driver);
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        cudaGetLastError();   // clear the sticky error for later calls
        *why = std::string("the CUDA runtime found no usable device: ") + cudaGetErrorString(err);
        return false;
    }
    if (count == 0) {
        *why = "no CUDA device found";
        return false;
    }
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        *why = "cannot query CUDA device 0";
        return false;
    }
    if (prop.major < 8) {
        *why = std::string(prop.name) + " has compute capability " + std::to_string(prop.major) + "." +
               std::to_string(prop.minor) + "; this build needs 8.0 or newer";
        return false;
    }
    return cuda::cublas_api(why) != nullptr;
}

// Whether environment variable `name` is set to exactly `value`.
static bool env_is(const char* name, const char* value) {
    const char* v = std::getenv(name);
    return v && std::strcmp(v, value) == 0;
}

// Decode kernel settings from the environment, for benchmarks and tests:
// FFNSKIP_CUDA_PDL=1 programmatic dependent launch (compute capability 9.0 and newer),
// FFNSKIP_CUDA_MV_ROWS=2|4 matrix rows per warp, FFNSKIP_CUDA_Q8X=1 Q4_K and Q8_0
// products with 8-bit activations, FFNSKIP_CUDA_MV_SPLIT=1 F16/BF16 products with a
// block's warps sharing its rows.
static cuda::Launch decode_settings(cuda::Launch base, int device) {
    if (env_is("FFNSKIP_CUDA_PDL", "1")) {
        int major = 0;
        FFNSKIP_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
        base.pdl = major >= 9;
    }
    if (const char* rows = std::getenv("FFNSKIP_CUDA_MV_ROWS")) {
        if (std::strcmp(rows, "2") != 0 && std::strcmp(rows, "4") != 0)
            throw std::invalid_argument(std::string("FFNSKIP_CUDA_MV_ROWS must be 2 or 4, not '") + rows + "'");
        base.mv_rows = std::atoi(rows);
    }
    base.q8_activations = env_is("FFNSKIP_CUDA_Q8X", "1");
    base.mv_split = env_is("FFNSKIP_CUDA_MV_SPLIT", "1");
    return base;
}

// FFNSKIP_CUDA_ATTN_SPLIT=1: decode attention cuts each head's keys into ranges, about
// four blocks per SM over all heads (2 to 32 ranges per head); else one block per head.
static int attention_splits(int n_head, int device) {
    if (!env_is("FFNSKIP_CUDA_ATTN_SPLIT", "1")) return 0;
    int sms = 0;
    FFNSKIP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return std::clamp((4 * sms + n_head - 1) / n_head, 2, 32);
}

std::unique_ptr<Backend> make_cuda_backend(const Model::Impl& model, const BackendParams& params) {
    return std::make_unique<CudaForward>(model, params);
}

// ---- the per-step block ------------------------------------------------------------

void StepBlock::place(void* base, int32_t n_batch, int32_t n_layer) {
    uint8_t* p = static_cast<uint8_t*>(base);
    size_t off = 0;
    auto take = [&](size_t bytes) { uint8_t* at = p ? p + off : nullptr; off += (bytes + 15) / 16 * 16; return at; };
    pos = reinterpret_cast<int32_t*>(take(sizeof(int32_t)));
    rules = reinterpret_cast<cuda::GateRules*>(take(sizeof(cuda::GateRules)));
    tokens = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_batch));
    skip_attn = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_layer));
    skip_kv = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_layer));
    skip_ffn = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_layer));
    gate_allowed = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_layer));
    cosines = reinterpret_cast<float*>(take(sizeof(float) * n_layer));
    sur_on = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_layer));
    bytes = off;
}

// ---- setup -------------------------------------------------------------------------

CudaForward::CudaForward(const Model::Impl& model, const BackendParams& params) : m_(model) {
    const HParams& hp = model.hp;
    n_ctx_ = params.n_ctx;
    n_batch_ = params.n_batch;
    n_slots_ = std::max(1, params.n_slots);
    kv_width_ = hp.n_head_kv * hp.head_dim;
    use_graph_ = !env_is("FFNSKIP_CUDA_GRAPH", "0");       // "0": launch decode steps one kernel at a time
    fuse_ = !env_is("FFNSKIP_CUDA_FUSE", "0");             // "0": one launch per matrix, as the prompt path
    fuse_norm_ = env_is("FFNSKIP_CUDA_FUSE_NORM", "1");    // the gate kernel computes the next RMSNorm
    fuse_rope_ = env_is("FFNSKIP_CUDA_FUSE_ROPE", "1");    // Q/K/V products rotate and store the cache
    ffn_if_nodes_ = use_graph_ && env_is("FFNSKIP_CUDA_GRAPH_IF", "1");   // left-out FFNs launch nothing
    fuse_ffn_norm_ = env_is("FFNSKIP_CUDA_FUSE_FFN_NORM", "1");   // the gate/up product computes the FFN's RMSNorm
    // The products' epilogue holds adjacent rows of one warp: NEOX pairs (i, i + n_rot/2)
    // span warps, and the biases are added by the rope kernel; such models keep the
    // separate rope kernel.
    const bool has_bias = !model.w.layers.empty() && !model.w.layers[0].bq.empty();
    if (hp.rope_neox || has_bias) fuse_rope_ = false;
    check_supported();
    std::string why;
    blas_ = cuda::cublas_api(&why);
    if (!blas_) throw Error("backend 'cuda': " + why);
    FFNSKIP_CUDA_CHECK(cudaSetDevice(device_));
    decode_launch_ = decode_settings(launch_, device_);   // before anything needs releasing
    FFNSKIP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    launch_.stream = decode_launch_.stream = stream_;
    launch_.attn_tiled = env_is("FFNSKIP_CUDA_ATTN_TILED", "1");   // prompt attention over query/key tiles
    try {
        if (ffn_if_nodes_) FFNSKIP_CUDA_CHECK(cudaStreamCreateWithFlags(&body_stream_, cudaStreamNonBlocking));
        allocate_and_upload();
    } catch (...) {
        release();   // the destructor does not run for a constructor that throws
        throw;
    }
}

CudaForward::~CudaForward() { release(); }

void CudaForward::release() {
    surrogates_.reset();
    drop_rows_graphs();
    if (graph_) cudaGraphExecDestroy(graph_);
    if (blas_handle_) blas_->destroy(blas_handle_);
    if (stream_) cudaStreamDestroy(stream_);
    if (body_stream_) cudaStreamDestroy(body_stream_);
    if (arena_) cudaFree(arena_);
    if (step_host_mem_) cudaFreeHost(step_host_mem_);
    if (logits_host_) cudaFreeHost(logits_host_);
    if (rows_dev_mem_) cudaFree(rows_dev_mem_);
    if (rows_host_mem_) cudaFreeHost(rows_host_mem_);
    rows_dev_mem_ = rows_host_mem_ = nullptr;
    graph_ = nullptr;
    blas_handle_ = nullptr;
    stream_ = body_stream_ = nullptr;
    arena_ = step_host_mem_ = nullptr;
    logits_host_ = nullptr;
}

void CudaForward::check_supported() const {
    const HParams& hp = m_.hp;
    auto check = [](const WeightMatrix& w, const std::string& what) {
        if (!cuda::matrix_type_supported(w.type))
            throw Error("backend 'cuda': " + what + " has type " + type_traits(w.type).name +
                        ", which has no GPU kernel (the GPU decodes F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
                        "Q4_K, Q6_K); use backend='cpu' for this model");
        if (w.n_in % 32 != 0)
            throw Error("backend 'cuda': " + what + " has rows of " + std::to_string(w.n_in) +
                        " elements; the GPU kernels need a multiple of 32");
    };
    check(m_.w.token_embd, "token_embd");
    check(m_.w.output, "output");
    for (size_t il = 0; il < m_.w.layers.size(); il++) {
        const LayerWeights& L = m_.w.layers[il];
        const std::string p = "layer " + std::to_string(il) + " ";
        check(L.wq, p + "attn_q"); check(L.wk, p + "attn_k"); check(L.wv, p + "attn_v"); check(L.wo, p + "attn_output");
        check(L.ffn_gate, p + "ffn_gate"); check(L.ffn_up, p + "ffn_up"); check(L.ffn_down, p + "ffn_down");
    }
    if (hp.head_dim % 2 != 0 || hp.head_dim > cuda::ATTN_MAX_HEAD_DIM)
        throw Error("backend 'cuda': head size " + std::to_string(hp.head_dim) + " is not supported (even, at most " +
                    std::to_string(cuda::ATTN_MAX_HEAD_DIM) + ")");
}

void CudaForward::allocate_and_upload() {
    const HParams& hp = m_.hp;
    const ModelWeights& w = m_.w;
    const size_t nb = (size_t)n_batch_;
    const size_t q_width = (size_t)hp.n_head * hp.head_dim;

    // Weights: each distinct host matrix once (a tied output shares token_embd's rows),
    // then the norm vectors.
    std::vector<const WeightMatrix*> matrices = {&w.token_embd, &w.output};
    std::vector<const std::vector<float>*> vectors = {&w.output_norm, &w.rope_freq_factors};
    for (const LayerWeights& L : w.layers) {
        for (const WeightMatrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_gate, &L.ffn_up, &L.ffn_down}) matrices.push_back(m);
        for (const std::vector<float>* v : {&L.attn_norm, &L.ffn_norm, &L.bq, &L.bk, &L.bv}) vectors.push_back(v);
    }
    std::map<const uint8_t*, size_t> matrix_at;   // host rows -> offset in the arena
    std::vector<const WeightMatrix*> distinct;
    size_t weight_bytes = 0;
    int64_t max_in = 0, max_quant_elems = 0;
    for (const WeightMatrix* m : matrices) {
        max_in = std::max(max_in, m->n_in);
        if (m->type != GgmlType::F32 && m->type != GgmlType::F16 && m->type != GgmlType::BF16)
            max_quant_elems = std::max(max_quant_elems, m->n_in * m->n_out);
        if (matrix_at.count(m->data)) continue;
        matrix_at[m->data] = weight_bytes;
        distinct.push_back(m);
        weight_bytes += align_up(m->n_bytes());
    }
    const size_t matrices_end = weight_bytes;
    for (const std::vector<float>* v : vectors) weight_bytes += align_up(v->size() * sizeof(float));

    const size_t kv_bytes = 2 * align_up((size_t)hp.n_layer * n_slots_ * n_ctx_ * kv_width_ * sizeof(__half));
    // De-quantized tiles for the prompt GEMMs: at most 32 Mi elements (64 MiB).
    tile_elems_ = std::min<int64_t>(max_quant_elems, (int64_t)32 << 20);
    attn_splits_.n_splits = attention_splits(hp.n_head, device_);
    const size_t split_bytes =
        attn_splits_.n_splits ? align_up(cuda::AttentionSplits::bytes(hp.n_head, hp.head_dim, attn_splits_.n_splits)) : 0;
    const size_t buffer_bytes = split_bytes + 3 * align_up(nb * hp.n_embd * 4) + 2 * align_up(nb * q_width * 4) +
                                2 * align_up(nb * kv_width_ * 4) + 2 * align_up(nb * hp.n_ff * 4) +
                                align_up(nb * hp.n_vocab * 4) + align_up(nb * max_in * 2) +
                                align_up((size_t)tile_elems_ * 2);
    step_d_.place(nullptr, n_batch_, hp.n_layer);
    const size_t step_bytes = align_up(step_d_.bytes);
    const size_t need = weight_bytes + kv_bytes + buffer_bytes + step_bytes;

    size_t free_b = 0, total_b = 0;
    FFNSKIP_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const std::string budget = "the CUDA backend needs " + gib((double)need) + " of GPU memory (weights " +
                               gib((double)weight_bytes) + ", KV cache " + gib((double)kv_bytes) + ", buffers " +
                               gib((double)(buffer_bytes + step_bytes)) + ") but only " + gib((double)free_b) + " of " +
                               gib((double)total_b) + " are free";
    if (need > free_b) throw Error("out of GPU memory: " + budget + "; lower n_ctx or n_batch, or use a smaller model");
    const cudaError_t err = cudaMalloc(&arena_, need);
    if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        arena_ = nullptr;
        throw Error("out of GPU memory: " + budget + " (the allocation failed); lower n_ctx or n_batch");
    }
    FFNSKIP_CUDA_CHECK(err);

    // Upload, in the planned layout.
    uint8_t* base = static_cast<uint8_t*>(arena_);
    for (const WeightMatrix* m : distinct)
        FFNSKIP_CUDA_CHECK(cudaMemcpy(base + matrix_at.at(m->data), m->data, m->n_bytes(), cudaMemcpyHostToDevice));
    size_t off = matrices_end;   // vectors, then the buffers
    auto device_matrix = [&](const WeightMatrix& m) {
        cuda::DeviceMatrix d;
        d.type = m.type;
        d.n_in = m.n_in;
        d.n_out = m.n_out;
        d.row_bytes = m.row_bytes;
        d.data = base + matrix_at.at(m.data);
        return d;
    };
    auto take = [&](size_t bytes) { void* p = base + off; off += align_up(bytes); return p; };
    auto upload_vector = [&](const std::vector<float>& v) -> const float* {
        void* d = take(v.size() * sizeof(float));
        if (v.empty()) return nullptr;
        FFNSKIP_CUDA_CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
        return static_cast<const float*>(d);
    };
    token_embd_ = device_matrix(w.token_embd);
    output_ = device_matrix(w.output);
    output_norm_ = upload_vector(w.output_norm);
    rope_.freq_factors = upload_vector(w.rope_freq_factors);
    layers_.resize(w.layers.size());
    for (size_t il = 0; il < w.layers.size(); il++) {
        const LayerWeights& L = w.layers[il];
        CudaLayer& D = layers_[il];
        D.wq = device_matrix(L.wq);
        D.wk = device_matrix(L.wk);
        D.wv = device_matrix(L.wv);
        D.wo = device_matrix(L.wo);
        D.ffn_gate = device_matrix(L.ffn_gate);
        D.ffn_up = device_matrix(L.ffn_up);
        D.ffn_down = device_matrix(L.ffn_down);
        D.attn_norm = upload_vector(L.attn_norm);
        D.ffn_norm = upload_vector(L.ffn_norm);
        D.bias.q = upload_vector(L.bq);
        D.bias.k = upload_vector(L.bk);
        D.bias.v = upload_vector(L.bv);
    }
    if (off != weight_bytes) throw Error("CUDA backend: internal error: weight layout mismatch");

    // RoPE constants as the CPU computes them.
    rope_.n_rot = hp.n_rot;
    rope_.head_dim = hp.head_dim;
    rope_.theta_scale = std::pow(hp.rope_freq_base, -2.0f / (float)hp.n_rot);
    rope_.freq_scale = hp.rope_freq_scale;
    rope_.neox = hp.rope_neox;

    const size_t kv_half = (size_t)hp.n_layer * n_slots_ * n_ctx_ * kv_width_;
    k_cache_ = static_cast<__half*>(take(kv_half * sizeof(__half)));
    v_cache_ = static_cast<__half*>(take(kv_half * sizeof(__half)));
    FFNSKIP_CUDA_CHECK(cudaMemset(k_cache_, 0, kv_half * sizeof(__half)));
    FFNSKIP_CUDA_CHECK(cudaMemset(v_cache_, 0, kv_half * sizeof(__half)));
    x_ = static_cast<float*>(take(nb * hp.n_embd * 4));
    xb_ = static_cast<float*>(take(nb * hp.n_embd * 4));
    xb2_ = static_cast<float*>(take(nb * hp.n_embd * 4));
    q_ = static_cast<float*>(take(nb * q_width * 4));
    att_ = static_cast<float*>(take(nb * q_width * 4));
    k_ = static_cast<float*>(take(nb * kv_width_ * 4));
    v_ = static_cast<float*>(take(nb * kv_width_ * 4));
    hb_ = static_cast<float*>(take(nb * hp.n_ff * 4));
    hb2_ = static_cast<float*>(take(nb * hp.n_ff * 4));
    logits_ = static_cast<float*>(take(nb * hp.n_vocab * 4));
    act16_ = take(nb * max_in * 2);
    tile_ = static_cast<__half*>(take((size_t)tile_elems_ * 2));
    step_d_.place(take(step_d_.bytes), n_batch_, hp.n_layer);
    if (attn_splits_.n_splits) {
        attn_splits_.place(take(cuda::AttentionSplits::bytes(hp.n_head, hp.head_dim, attn_splits_.n_splits)), hp.n_head,
                           hp.head_dim);
        FFNSKIP_CUDA_CHECK(cudaMemset(attn_splits_.done, 0, (size_t)hp.n_head * sizeof(unsigned)));
    }
    if (off > need) throw Error("CUDA backend: internal error: buffer layout overflow");

    // Pinned host mirrors: the per-token copies run asynchronously.
    FFNSKIP_CUDA_CHECK(cudaMallocHost(&step_host_mem_, step_d_.bytes));
    std::memset(step_host_mem_, 0, step_d_.bytes);
    step_h_.place(step_host_mem_, n_batch_, hp.n_layer);
    FFNSKIP_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&logits_host_), nb * hp.n_vocab * sizeof(float)));
    mask_.assign(hp.n_layer, 0);
    cuda::matvec_prepare(max_in, hp.n_embd);
    // The memsets above ran on the legacy stream, which stream_ (non-blocking) does not wait for.
    FFNSKIP_CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- matrix products ---------------------------------------------------------------

void CudaForward::mul_mat(const cuda::DeviceMatrix& W, const float* x, float* y, int32_t n, const int* skip,
                          const cuda::Launch& s) {
    if (n == 1) {
        cuda::matvec(W, x, y, skip, s);
        return;
    }
    if (skip) throw Error("CUDA backend: internal error: a batched product cannot read a skip word");
    gemm(W, x, y, n);
}

void CudaForward::gemm(const cuda::DeviceMatrix& W, const float* x, float* y, int32_t n) {
    if (!blas_handle_) {
        const cublasStatus_t st = blas_->create(&blas_handle_);
        if (st != CUBLAS_STATUS_SUCCESS) {
            blas_handle_ = nullptr;
            throw Error(std::string("cuBLAS could not start: ") + blas_->status_string(st));
        }
        blas_->set_stream(blas_handle_, stream_);
    }
    // Row-major W (n_out, n_in) is column-major (n_in, n_out): y^T = op_T(W) x^T.
    const float one = 1.0f, zero = 0.0f;
    auto run = [&](const void* A, cudaDataType a_type, const void* B, cudaDataType b_type, int64_t rows, float* C) {
        const cublasStatus_t st = blas_->gemm_ex(blas_handle_, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, n, (int)W.n_in, &one,
                                                 A, a_type, (int)W.n_in, B, b_type, (int)W.n_in, &zero, C, CUDA_R_32F,
                                                 (int)W.n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) throw Error(std::string("cuBLAS GEMM failed: ") + blas_->status_string(st));
    };
    const int64_t n_act = (int64_t)n * W.n_in;
    switch (W.type) {
        case GgmlType::F32:
            run(W.data, CUDA_R_32F, x, CUDA_R_32F, W.n_out, y);
            break;
        case GgmlType::BF16:
            cuda::to_bf16(static_cast<__nv_bfloat16*>(act16_), x, n_act, stream_);
            run(W.data, CUDA_R_16BF, act16_, CUDA_R_16BF, W.n_out, y);
            break;
        case GgmlType::F16:
            cuda::to_f16(static_cast<__half*>(act16_), x, n_act, stream_);
            run(W.data, CUDA_R_16F, act16_, CUDA_R_16F, W.n_out, y);
            break;
        default: {
            // Quantized: de-quantize a tile of rows to F16, multiply, next tile.
            cuda::to_f16(static_cast<__half*>(act16_), x, n_act, stream_);
            const int64_t tile_rows = std::max<int64_t>(1, tile_elems_ / W.n_in);
            for (int64_t r0 = 0; r0 < W.n_out; r0 += tile_rows) {
                const int64_t rows = std::min(tile_rows, W.n_out - r0);
                cuda::dequantize_rows_f16(W, r0, rows, tile_, stream_);
                run(tile_, CUDA_R_16F, act16_, CUDA_R_16F, rows, y + r0);
            }
        }
    }
}

// ---- the forward pass --------------------------------------------------------------

// q, k, v of one layer from xb_: for one token in as few launches as their types allow.
// With fold_rope (decode steps), the products also rotate q and k and store k and v into
// the layer's cache, and true is returned: no rope_store_kv launch is needed.
bool CudaForward::project_qkv(const CudaLayer& L, int il, int32_t n, const int* skip_attn, const int* skip_kv,
                              const cuda::Launch& s, bool fold_rope) {
    const cuda::DeviceMatrix* W[3] = {&L.wq, &L.wk, &L.wv};
    float* y[3] = {q_, k_, v_};
    const int* skip[3] = {skip_attn, skip_kv, skip_kv};
    if (n > 1 || !fuse_) {
        for (int i = 0; i < 3; i++) mul_mat(*W[i], xb_, y[i], n, skip[i], s);
        return false;
    }
    const cuda::RowStore stores[3] = {cuda::RowStore::ROPE_FLOAT, cuda::RowStore::ROPE_CACHE, cuda::RowStore::CACHE};
    __half* caches[3] = {nullptr, k_cache(il), v_cache(il)};
    for (int i = 0; i < 3;) {
        int j = i + 1;
        while (j < 3 && cuda::fusable(*W[i], *W[j])) j++;
        if (!fold_rope) {
            cuda::matvec_multi(W + i, y + i, skip + i, j - i, xb_, s);
        } else {
            cuda::QkvStore qkv;   // this launch's matrices: their slice of stores and caches
            qkv.rope = rope_;
            qkv.pos = step_d_.pos;
            std::copy(stores + i, stores + j, qkv.store);
            std::copy(caches + i, caches + j, qkv.cache);
            cuda::matvec_multi(W + i, y + i, skip + i, j - i, xb_, s, &qkv);
        }
        i = j;
    }
    return fold_rope;
}

void CudaForward::encode(int32_t n, bool all_logits, const SkipSchedule* prompt_skip, bool device_skip) {
    const HParams& hp = m_.hp;
    const int64_t D = hp.n_embd;
    const cuda::Launch& s = device_skip ? decode_launch_ : launch_;
    const int* pos = step_d_.pos;

    cuda::embed_rows(token_embd_, step_d_.tokens, n, x_, s);
    bool xb_ready = false;   // xb_ already holds the next norm's output (written by the gate kernel)
    for (int il = 0; il < hp.n_layer; il++) {
        const CudaLayer& L = layers_[il];
        const int* skip_attn = device_skip ? step_d_.skip_attn + il : nullptr;
        const int* skip_kv = device_skip ? step_d_.skip_kv + il : nullptr;
        const int* skip_ffn = device_skip ? step_d_.skip_ffn + il : nullptr;
        if (prompt_skip && !prompt_skip->prompt_layer_runs(il)) continue;

        // ---- attention: h = x + Wo attn(norm(x)); keys/values also for skipdecode's exit layers ----
        if (!xb_ready) cuda::rmsnorm(xb_, x_, L.attn_norm, n, D, hp.rms_eps, skip_kv, s);
        xb_ready = false;
        if (!project_qkv(L, il, n, skip_attn, skip_kv, s, device_skip && fuse_rope_))
            cuda::rope_store_kv(k_, v_, k_cache(il), v_cache(il), n, hp.n_head_kv, rope_, pos, skip_kv, s, q_,
                                hp.n_head, skip_attn, L.bias);
        cuda::attention(q_, k_cache(il), v_cache(il), att_, n, hp.n_head, hp.n_head_kv, hp.head_dim, pos, skip_attn, s,
                        &attn_splits_);
        if (n == 1 && fuse_) {
            cuda::matvec_accumulate(L.wo, att_, x_, skip_attn, s);
        } else {
            mul_mat(L.wo, att_, xb2_, n, skip_attn, s);
            cuda::add_inplace(x_, xb2_, n * D, skip_attn, s);
        }

        // ---- the skip gate: on the device every FFN kernel reads skip_ffn[il], which the
        //      gate kernel of an earlier layer may have set during this step ----
        const cuda::DeviceSurrogate* sur = surrogates_ ? surrogates_->at(il) : nullptr;
        if (prompt_skip && !prompt_skip->prompt_ffn_runs(il)) {
            // A left-out FFN: x' = h, or h + its surrogate (forward checked the upload).
            if (prompt_skip->surrogate(il)) {
                if (!sur) throw Error("CUDA backend: internal error: surrogates not uploaded");
                cuda::surrogate_forward(*sur, x_, L.ffn_norm, hp.rms_eps, n, D, hb_, xb2_, nullptr, nullptr, s, true);
                cuda::add_inplace(x_, xb2_, n * D, nullptr, s);
            }
            continue;
        }

        // ---- feed-forward: x' = h + Wdown (silu(Wgate norm(h)) * Wup norm(h)) ----
        // In a graph with IF nodes the FFN is a node's body, launched only when it runs.
        const cudaGraphConditionalHandle ffn_runs = ffn_condition(il);
        std::optional<cuda::IfBody> ffn_body;
        cuda::Launch f = s;
        if (ffn_runs) {
            ffn_body.emplace(stream_, ffn_runs, body_stream_);
            f.stream = body_stream_;
            f.pdl = false;   // programmatic edges join kernel nodes only
        }
        const bool fused_ffn = n == 1 && fuse_ && cuda::fusable(L.ffn_gate, L.ffn_up);
        const bool fold_norm = fused_ffn && device_skip && fuse_ffn_norm_;   // the RMSNorm inside gate/up
        if (!fold_norm) cuda::rmsnorm(xb_, x_, L.ffn_norm, n, D, hp.rms_eps, skip_ffn, f);
        if (fold_norm) {
            cuda::matvec_swiglu(L.ffn_gate, L.ffn_up, x_, hb_, skip_ffn, f, L.ffn_norm, hp.rms_eps);
        } else if (fused_ffn) {
            cuda::matvec_swiglu(L.ffn_gate, L.ffn_up, xb_, hb_, skip_ffn, f);
        } else {
            mul_mat(L.ffn_gate, xb_, hb_, n, skip_ffn, f);
            mul_mat(L.ffn_up, xb_, hb2_, n, skip_ffn, f);
            cuda::swiglu(hb_, hb_, hb2_, (int64_t)n * hp.n_ff, skip_ffn, f);
        }
        mul_mat(L.ffn_down, hb_, xb2_, n, skip_ffn, f);
        if (ffn_body) ffn_body->end();
        if (device_skip) {
            // ---- surrogate: when the FFN was left out and the step turned its surrogate on,
            //      xb2_ = b + U (V^T ffn_norm(h)) instead (two kernels reading both words) ----
            if (sur)
                cuda::surrogate_forward(*sur, x_, L.ffn_norm, hp.rms_eps, 1, D, hb_, xb2_, skip_ffn,
                                        step_d_.sur_on + il, s, !ffn_runs);
            // With fuse_norm_ the gate kernel also writes the next layer's attention input
            // (or the output matrix's), whether or not this FFN ran; with IF nodes it
            // sets the next FFN's condition.
            const float* next_norm = !fuse_norm_ ? nullptr : il + 1 < hp.n_layer ? layers_[il + 1].attn_norm : output_norm_;
            const cudaGraphConditionalHandle next_ffn_runs = ffn_condition(il + 1);
            cuda::Launch g = s;
            g.pdl = s.pdl && (!ffn_runs || sur);   // after a kernel node, not the IF node
            cuda::residual_add_gate(x_, xb2_, D, il, step_d_.skip_ffn, step_d_.gate_allowed, step_d_.cosines,
                                    step_d_.rules, g, next_norm, xb_, hp.rms_eps, next_ffn_runs,
                                    sur ? step_d_.sur_on : nullptr);
            xb_ready = next_norm != nullptr;
        } else {
            cuda::add_inplace(x_, xb2_, n * D, nullptr, s);
        }
    }

    // ---- logits, only for the rows asked for ----
    const int first = all_logits ? 0 : n - 1;
    const int rows = n - first;
    if (!xb_ready) cuda::rmsnorm(xb_, x_ + (int64_t)first * D, output_norm_, rows, D, hp.rms_eps, nullptr, s);
    mul_mat(output_, xb_, logits_, rows, nullptr, s);
}

// The step's plan from the schedule (or the full model) into the pinned step block.
void CudaForward::write_step_plan(const SkipSchedule* skip) {
    const int n_layer = m_.hp.n_layer;
    cuda::GateRules& r = *step_h_.rules;
    r = cuda::GateRules{0, 0, -1, -1, 0, 1.0f, 0};
    for (int l = 0; l < n_layer; l++) {
        step_h_.skip_attn[l] = step_h_.skip_kv[l] = step_h_.skip_ffn[l] = 0;
        step_h_.gate_allowed[l] = 1;
        step_h_.cosines[l] = NAN;
        step_h_.sur_on[l] = 0;
    }
    if (!skip) return;
    const SkipSchedule::StepPlan p = skip->step_plan();
    r.live = p.gate_live;
    r.first = p.gate_first;
    r.last = p.gate_last;
    r.stop = p.gate_stop;
    r.max_skip = p.max_skip;
    r.threshold = p.threshold;
    for (int l = 0; l < n_layer; l++) {
        const bool layer_out = p.layer_skip[l] != 0;
        step_h_.skip_attn[l] = layer_out;
        step_h_.skip_kv[l] = layer_out && l < p.exit_layer;   // skipdecode: exit layers still store keys/values
        step_h_.skip_ffn[l] = layer_out || p.ffn_skip[l];
        step_h_.gate_allowed[l] = p.gate_allowed ? p.gate_allowed[l] : 1;
        // As the CPU: a left-out FFN runs its surrogate unless the whole layer is out.
        step_h_.sur_on[l] = !layer_out && skip->surrogate(l) != nullptr;
    }
}

void CudaForward::prepare_surrogates(const std::shared_ptr<const SurrogateSet>& set) {
    if (!set || (surrogates_ && surrogates_->host() == set.get())) return;
    FFNSKIP_CUDA_CHECK(cudaStreamSynchronize(stream_));
    surrogates_.reset();
    if (graph_) {   // captured with the previous set's kernels
        cudaGraphExecDestroy(graph_);
        graph_ = nullptr;
    }
    surrogates_ = std::make_unique<cuda::DeviceSurrogates>(set, m_.hp.n_embd);
}

const float* CudaForward::forward(const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                                  SkipSchedule* skip, bool decode_step) {
    const HParams& hp = m_.hp;
    if (n < 1 || n > n_batch_) throw std::invalid_argument("forward: batch of " + std::to_string(n) + " tokens");
    if (pos < 0 || pos + n > n_ctx_) throw std::invalid_argument("forward: positions past the context");
    if (decode_step && n != 1) throw std::invalid_argument("forward: a decode step takes one token");
    cudaStream_t s = stream_;
    if (skip && skip->surrogate_set()) prepare_surrogates(skip->surrogate_set());   // no-op when uploaded
    *step_h_.pos = pos;
    std::copy(tokens, tokens + n, step_h_.tokens);

    if (decode_step) {
        write_step_plan(skip);
        FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(step_d_.pos, step_h_.pos, step_d_.bytes, cudaMemcpyHostToDevice, s));
        if (use_graph_) {
            if (!graph_) {
                cudaGraph_t graph = nullptr;
                FFNSKIP_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
                try {
                    if (ffn_if_nodes_) {
                        ffn_runs_.assign(hp.n_layer, 0);   // layer 0's FFN: no node, its kernels read the word
                        for (int l = 1; l < hp.n_layer; l++) ffn_runs_[l] = cuda::new_condition(s);
                    }
                    encode(1, false, nullptr, true);
                } catch (...) {
                    ffn_runs_.clear();
                    cudaStreamEndCapture(s, &graph);
                    if (graph) cudaGraphDestroy(graph);
                    throw;
                }
                ffn_runs_.clear();
                FFNSKIP_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
                // FFNSKIP_CUDA_GRAPH_DOT=FILE: the captured step as Graphviz, for debugging.
                const char* dot = std::getenv("FFNSKIP_CUDA_GRAPH_DOT");
                if (dot && *dot) cudaGraphDebugDotPrint(graph, dot, cudaGraphDebugDotFlagsVerbose);
                const cudaError_t err = cudaGraphInstantiate(&graph_, graph, 0);
                cudaGraphDestroy(graph);
                FFNSKIP_CUDA_CHECK(err);
            }
            FFNSKIP_CUDA_CHECK(cudaGraphLaunch(graph_, s));
        } else {
            encode(1, false, nullptr, true);
        }
        // One copy back per token: logits, then the skip words and cosines (contiguous).
        FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(logits_host_, logits_, hp.n_vocab * sizeof(float), cudaMemcpyDeviceToHost, s));
        const size_t outcome = reinterpret_cast<uint8_t*>(step_d_.cosines + hp.n_layer) -
                               reinterpret_cast<uint8_t*>(step_d_.skip_ffn);
        FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(step_h_.skip_ffn, step_d_.skip_ffn, outcome, cudaMemcpyDeviceToHost, s));
        FFNSKIP_CUDA_CHECK(cudaStreamSynchronize(s));
        if (skip) {
            for (int l = 0; l < hp.n_layer; l++) mask_[l] = step_h_.skip_ffn[l] != 0;
            skip->set_step_outcome(mask_.data(), step_h_.cosines);
        }
        return logits_host_;
    }

    // Prompt batch: position and tokens only; the host decides the removals.
    const size_t header = reinterpret_cast<uint8_t*>(step_d_.tokens + n) - reinterpret_cast<uint8_t*>(step_d_.pos);
    FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(step_d_.pos, step_h_.pos, header, cudaMemcpyHostToDevice, s));
    encode(n, all_logits, skip, false);
    const int rows = all_logits ? n : 1;
    FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(logits_host_, logits_, (size_t)rows * hp.n_vocab * sizeof(float),
                                       cudaMemcpyDeviceToHost, s));
    FFNSKIP_CUDA_CHECK(cudaStreamSynchronize(s));
    return logits_host_;
}

}  // namespace ffnskip
