// The CUDA backend: the forward pass of csrc/cpu/forward-cpu.cpp on one GPU.
//
// Weights are uploaded once. A decode step (one token) runs entirely on the device
// as one CUDA graph, captured at the first step and replayed: the host writes the
// step's inputs (token, position, the skip policy's plan) into a small device block,
// launches the graph, and copies back the logits with the step's skip mask and
// cosines; that copy is the only synchronisation per token. The FFN-Skip gate is a
// kernel (skip-gate.cu) that writes skip words which the FFN kernels of later layers
// read. Prompt batches run eagerly: cuBLAS GEMMs (quantized weights de-quantized to
// F16 tiles first), with the policy's position-independent removals decided on the host.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "cuda/attention.cuh"
#include "cuda/cublas-dl.h"
#include "cuda/gemv.cuh"
#include "cuda/launch.cuh"
#include "cuda/rope.cuh"
#include "cuda/skip-gate.cuh"
#include "cuda/surrogate.cuh"

namespace ffnskip {

struct CudaLayer {
    const float* attn_norm = nullptr;   // (n_embd)
    cuda::DeviceMatrix wq, wk, wv, wo;  // as LayerWeights
    cuda::QkvBias bias;                 // biases of wq, wk, wv (qwen2), null when none
    const float* ffn_norm = nullptr;    // (n_embd)
    cuda::DeviceMatrix ffn_gate, ffn_up, ffn_down;
};

// The per-step block in device memory (and its pinned host mirror), int32 words:
struct StepBlock {
    int32_t* pos = nullptr;                // (1) position of the first token
    cuda::GateRules* rules = nullptr;      // the gate's rules for this step
    int32_t* tokens = nullptr;             // (n_batch)
    int32_t* skip_attn = nullptr;          // (n_layer) 1: attention of the layer left out
    int32_t* skip_kv = nullptr;            // (n_layer) 1: no keys/values stored either
    int32_t* skip_ffn = nullptr;           // (n_layer) 1: FFN left out (written by the gate too)
    int32_t* gate_allowed = nullptr;       // (n_layer) 1: the gate may leave this FFN out
    float* cosines = nullptr;              // (n_layer) measured by the gate; NaN = not measured
    int32_t* sur_on = nullptr;             // (n_layer) 1: a left-out FFN of the layer runs its surrogate
    size_t bytes = 0;
    void place(void* base, int32_t n_batch, int32_t n_layer);
};

class CudaForward : public Backend {
  public:
    CudaForward(const Model::Impl& model, const BackendParams& params);
    ~CudaForward() override;
    CudaForward(const CudaForward&) = delete;
    CudaForward& operator=(const CudaForward&) = delete;

    const char* name() const override { return "cuda"; }
    int32_t n_batch() const override { return n_batch_; }
    const float* forward(const int32_t* tokens, int32_t n, int32_t pos, bool all_logits, SkipSchedule* skip,
                         bool decode_step) override;
    // Batched decoding (forward-rows.cu): a step that repeats the previous one's shape
    // (rows and skip masks, no cosine gate looking) is captured and replayed as a graph,
    // others launch eagerly; RoPE with the cache writes and attention one launch each
    // for all rows, each over its own slot; the products over all rows (cuBLAS beyond
    // one row), each FFN over the rows whose schedule runs it, each surrogate over the
    // left-out rows whose sidecar has it.
    const float* forward_slot(int32_t slot, const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                              SkipSchedule* skip) override;
    const float* forward_rows(const int32_t* tokens, const int32_t* slots, const int32_t* pos, int32_t n,
                              SkipSchedule* const* skips, RowsStep* step) override;
    bool runs_surrogates() const override { return true; }
    bool runs_surrogates_in_batches() const override { return true; }
    void prepare_surrogates(const std::shared_ptr<const SurrogateSet>& set) override;

  private:
    void check_supported() const;
    void release();
    void allocate_and_upload();
    // Issues the kernels of one forward pass on stream_. device_skip: every skippable
    // kernel reads its skip word (decode steps, graph-capturable); otherwise `prompt_skip`
    // (may be null) decides on the host which blocks are launched.
    void encode(int32_t n, bool all_logits, const SkipSchedule* prompt_skip, bool device_skip);
    void mul_mat(const cuda::DeviceMatrix& W, const float* x, float* y, int32_t n, const int* skip,
                 const cuda::Launch& s);
    void gemm(const cuda::DeviceMatrix& W, const float* x, float* y, int32_t n);
    void mul_rows(const cuda::DeviceMatrix& W, const float* x, float* y, int32_t n);   // batched decoding
    bool project_qkv(const CudaLayer& L, int il, int32_t n, const int* skip_attn, const int* skip_kv,
                     const cuda::Launch& s, bool fold_rope);
    void write_step_plan(const SkipSchedule* skip);
    // A layer's cache rows of a sequence slot; without a slot, the one forward() uses.
    __half* k_cache(int layer, int slot) const { return k_cache_ + ((size_t)layer * n_slots_ + slot) * n_ctx_ * kv_width_; }
    __half* v_cache(int layer, int slot) const { return v_cache_ + ((size_t)layer * n_slots_ + slot) * n_ctx_ * kv_width_; }
    __half* k_cache(int layer) const { return k_cache(layer, slot_); }
    __half* v_cache(int layer) const { return v_cache(layer, slot_); }

    const Model::Impl& m_;
    int32_t n_ctx_ = 0, n_batch_ = 0, kv_width_ = 0;
    int32_t n_slots_ = 1;   // sequence slots of the KV cache (batched decoding)
    int32_t slot_ = 0;      // the slot forward() reads and writes (0 but inside forward_slot)
    int device_ = 0;
    cudaStream_t stream_ = nullptr;
    cuda::Launch launch_;          // prompt batches: stream_, default kernel settings
    cuda::Launch decode_launch_;   // decode steps: stream_, the settings of decode_settings()
    const cuda::CublasApi* blas_ = nullptr;
    cublasHandle_t blas_handle_ = nullptr;
    bool use_graph_ = true;
    bool fuse_ = true;   // decode: Q/K/V in one launch, gate/up with SwiGLU, Wo with the residual add
    bool fuse_norm_ = false;   // decode: the FFN's gate kernel also computes the next RMSNorm
    bool fuse_rope_ = false;   // decode: the Q/K/V products rotate and store keys and values (normal RoPE, no biases)
    bool fuse_ffn_norm_ = false;  // decode: the fused gate/up product normalizes x itself
    bool ffn_if_nodes_ = false;   // decode graph: each FFN after layer 0 is an IF node's body
    cudaGraphExec_t graph_ = nullptr;
    cudaStream_t body_stream_ = nullptr;   // captures the IF nodes' bodies
    std::vector<cudaGraphConditionalHandle> ffn_runs_;   // (n_layer) while capturing: the FFNs' conditions, 0 = none
    cudaGraphConditionalHandle ffn_condition(int layer) const {
        return layer < (int)ffn_runs_.size() ? ffn_runs_[layer] : 0;
    }

    // Device memory: one allocation, carved up in allocate_and_upload.
    void* arena_ = nullptr;
    std::vector<CudaLayer> layers_;
    cuda::DeviceMatrix token_embd_, output_;
    const float* output_norm_ = nullptr;    // (n_embd)
    cuda::RopeParams rope_;
    __half* k_cache_ = nullptr;             // (n_layer, n_slots, n_ctx, kv_width)
    __half* v_cache_ = nullptr;             // (n_layer, n_slots, n_ctx, kv_width)
    float *x_ = nullptr, *xb_ = nullptr, *xb2_ = nullptr;   // (n_batch, n_embd)
    float *q_ = nullptr, *att_ = nullptr;   // (n_batch, n_head * head_dim)
    float *k_ = nullptr, *v_ = nullptr;     // (n_batch, kv_width)
    float *hb_ = nullptr, *hb2_ = nullptr;  // (n_batch, n_ff)
    float* logits_ = nullptr;               // (n_batch, n_vocab)
    void* act16_ = nullptr;                 // (n_batch, max n_in) F16/BF16 GEMM activations
    __half* tile_ = nullptr;                // (tile_elems_) de-quantized weight rows
    int64_t tile_elems_ = 0;
    StepBlock step_d_;                      // device
    cuda::AttentionSplits attn_splits_;     // decode attention work space (n_splits 0: none)

    // Pinned host memory.
    void* step_host_mem_ = nullptr;
    StepBlock step_h_;
    float* logits_host_ = nullptr;          // (n_batch, n_vocab)
    std::vector<uint8_t> mask_;             // (n_layer) outcome for the schedule

    // Batched decoding's step inputs (RowsBlock::place), device and pinned host: a
    // separate allocation, made on the first forward_rows.
    struct RowsBlock {
        int32_t* pos = nullptr;        // (n_batch) position of each row
        int32_t* slots = nullptr;      // (n_batch) KV cache slot of each row
        int32_t* ffn_rows = nullptr;   // (n_layer, n_batch) per layer: the rows whose FFN runs, then
                                       // the left-out rows with a surrogate, grouped by sidecar
        double* cosines = nullptr;     // (n_layer, n_batch) the gate's cosine of each of those rows
        size_t bytes = 0;
        void place(void* base, int32_t n_batch, int32_t n_layer);
    };
    RowsBlock rows_d_, rows_h_;
    void* rows_dev_mem_ = nullptr;
    void* rows_host_mem_ = nullptr;
    std::vector<uint8_t> row_runs_;   // (rows) 1 = the row runs this layer's FFN
    // The batch's surrogate sidecars on the device, one upload per set (rows may use
    // different ones), and which of them each row of the current step uses (or null).
    std::vector<std::unique_ptr<cuda::DeviceSurrogates>> batch_surrogates_;
    std::vector<const cuda::DeviceSurrogates*> row_surrogates_;   // (rows)
    const cuda::DeviceSurrogates* batch_surrogates(const std::shared_ptr<const SurrogateSet>& set,
                                                   const SkipSchedule* const* skips, int32_t n);
    // One layer of a batched step as decided on the host: rows_h_.ffn_rows[layer] holds
    // the FFN's nr rows, then each sidecar's rows from start[g] to start[g + 1].
    struct RowsLayerPlan {
        int nr = 0, n_all = 0;
        bool want_cosines = false;
        std::vector<const cuda::DeviceSurrogates*> sets;
        std::vector<int> start;   // (sets + 1)
    };
    std::vector<RowsLayerPlan> row_plans_;   // (n_layer)
    void plan_rows_layer(int il, SkipSchedule* const* skips, int32_t n, RowsStep* step, RowsLayerPlan& plan);
    void encode_rows_attention(int il, int32_t n);
    void encode_rows_ffn(int il, const RowsLayerPlan& plan);
    void encode_rows_planned(int32_t n);
    void encode_rows_output(int32_t n);
    void launch_rows_planned(int32_t n);
    void drop_rows_graphs();
    // Captured batched steps, most recently used first, by shape (launch_rows_planned).
    struct RowsGraph {
        std::vector<uintptr_t> key;
        cudaGraphExec_t exec = nullptr;
    };
    std::vector<RowsGraph> rows_graphs_;
    std::vector<uintptr_t> rows_key_, rows_last_key_;
    bool use_rows_graphs_ = true;
    // FFN surrogates (skip/surrogate.h), uploaded by prepare_surrogates; the decode graph
    // holds their kernels for the layers that have one, so a new set drops the graph.
    std::unique_ptr<cuda::DeviceSurrogates> surrogates_;
};

}  // namespace ffnskip
