// The CPU forward pass: token ids in, logits out, KV cache updated.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend.h"
#include "cpu/ops.h"
#include "cpu/thread-pool.h"

namespace ffnskip {

struct FfnSurrogate;

// Keys and values of every layer for every position, stored as fp16 (as llama.cpp's
// default cache type) to halve the memory that attention reads.
// With several sequence slots (batched decoding) each slot has its own n_ctx rows per
// layer; `slot` selects the one that k_at / v_at address.
struct KvCache {
    int32_t n_ctx = 0;
    int32_t n_layer = 0;
    int32_t kv_width = 0;          // n_head_kv * head_dim
    int32_t n_slots = 1;
    int32_t slot = 0;
    std::vector<uint16_t> k;       // (n_layer, n_slots, n_ctx, kv_width)
    std::vector<uint16_t> v;       // (n_layer, n_slots, n_ctx, kv_width)
    size_t slot_row(int layer, int s, int pos) const { return (((size_t)layer * n_slots + s) * n_ctx + pos) * kv_width; }
    size_t row(int layer, int pos) const { return slot_row(layer, slot, pos); }
    uint16_t* k_at(int layer, int pos) { return k.data() + row(layer, pos); }
    uint16_t* v_at(int layer, int pos) { return v.data() + row(layer, pos); }
};

// Activation buffers for up to n_batch tokens, allocated once.
struct RunState {
    int32_t n_batch = 0;
    std::vector<float> x;          // (n_batch, n_embd) residual stream
    std::vector<float> xb;         // (n_batch, n_embd) normalised residual
    std::vector<float> xb2;        // (n_batch, n_embd) block output, added to x
    std::vector<float> q;          // (n_batch, n_head * head_dim)
    std::vector<float> k;          // (n_batch, kv_width)
    std::vector<float> v;          // (n_batch, kv_width)
    std::vector<float> att_out;    // (n_batch, n_head * head_dim)
    // Attention scratch per thread (ctx_pad = n_ctx rounded up to 8, tokens = ATTN_TOKENS):
    std::vector<float> att_kv;     // (n_threads, 2, ctx_pad, head_dim) one KV head's keys, values as float
    std::vector<int32_t> att_conv; // (n_threads, 2) which KV head att_kv holds, and how many rows
    std::vector<float> att_q;      // (n_threads, tokens * group, head_dim) queries rounded to fp16; decode: (n_head, head_dim)
    std::vector<float> scores;     // (n_threads, tokens, ctx_pad) attention weights; decode: (n_head, ctx_pad)
    std::vector<float> hb;         // (n_batch, n_ff) gate, then silu(gate) * up
    std::vector<float> hb2;        // (n_batch, n_ff) up
    std::vector<float> logits;     // (rows asked for, n_vocab): one row until all_logits asks more
    ActRows act;                   // activations converted to a weight's vec_dot type
    // Batched decoding (forward_rows), grown on first use: per thread, one row's queries
    // rounded to fp16 (n_head, head_dim) and attention weights (n_head, ctx_pad).
    std::vector<float> rows_q;
    std::vector<float> rows_scores;
    std::vector<int32_t> ffn_rows;   // rows of one FFN block group (the FFN, or one surrogate)
    std::vector<uint8_t> row_runs;   // (rows) 1 = the row runs this layer's FFN
    std::vector<const FfnSurrogate*> row_surrogates;   // null (the FFN), then each distinct surrogate the left-out rows run
};

// forward_rows' batch-wide options, and what its step read.
class CpuForward : public Backend {
  public:
    CpuForward(const Model::Impl& model, const BackendParams& params);
    const char* name() const override { return "cpu"; }

    // Evaluates n tokens (1 <= n <= n_batch) at positions pos .. pos+n-1, writing their
    // keys and values into the cache. Returns the logits of the last token, or of all
    // n tokens (row-major) when all_logits; valid until the next call.
    // `skip` (may be null = full model): for a decode step (n == 1, decode_step) the
    // caller has called skip->begin_step and calls end_step after; for prompt batches
    // only the policy's position-independent removals apply.
    const float* forward(const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                         SkipSchedule* skip, bool decode_step) override;

    void set_ffn_trace(Session::FfnTrace* trace) override;
    bool runs_surrogates() const override { return true; }
    bool runs_surrogates_in_batches() const override { return true; }

    // Batched decoding (Backend::forward_slot, forward_rows). A row's arithmetic equals a
    // single-sequence decode step's; a left-out row whose schedule has a surrogate for the
    // layer runs it (rows sharing a surrogate in one product).
    const float* forward_slot(int32_t slot, const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                              SkipSchedule* skip) override;
    const float* forward_rows(const int32_t* tokens, const int32_t* slots, const int32_t* pos, int32_t n,
                              SkipSchedule* const* skips, RowsStep* step) override;
    int32_t n_slots() const { return kv_.n_slots; }

    int32_t n_ctx() const { return kv_.n_ctx; }
    int32_t n_batch() const override { return s_.n_batch; }
    uint64_t kv_bytes() const { return (kv_.k.size() + kv_.v.size()) * sizeof(uint16_t); }

  private:
    static constexpr int ATTN_TOKENS = 16;   // tokens whose queries share one pass over the keys
    void attention(ThreadPool& pool, int layer, int32_t n, int32_t pos);
    void store_kv(ThreadPool& pool, int layer, int32_t n, int32_t pos, bool xb_converted);
    float* trace_row(std::vector<float>& rows, int il, int32_t pos);
    void record_trace(std::vector<float>& rows, int il, int32_t n, int32_t pos, const float* src);
    void attention_rows(ThreadPool& pool, int layer, const int32_t* slots, const int32_t* pos, int32_t n);
    void ffn_block(ThreadPool& pool, int layer, const FfnSurrogate* sur, const int32_t* rows, int32_t n);

    const Model::Impl& m_;
    KvCache kv_;
    RunState s_;
    std::unique_ptr<ThreadPool> pool_decode_;
    std::unique_ptr<ThreadPool> pool_batch_;   // null when it would equal pool_decode_
    Session::FfnTrace* trace_ = nullptr;       // calibration: rows by absolute position
};

}  // namespace ffnskip
