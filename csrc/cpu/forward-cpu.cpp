// The LLaMA-family forward pass on the CPU, read top to bottom:
//   x = embed(token)
//   for each layer:  h  = x + Wo attention(rope(Wq norm(x) + bq), rope(Wk norm(x) + bk), Wv norm(x) + bv)
//                    x' = h + Wdown (silu(Wgate norm(h)) * Wup norm(h))
//   logits = Wout norm(x)
// What differs between architectures is data from the loader: the biases (empty when
// the architecture has none) and the RoPE pairing (hp.rope_neox).
#include "cpu/forward-cpu.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cpu/ops.h"
#include "skip/surrogate.h"

namespace ffnskip {

CpuForward::CpuForward(const Model::Impl& model, const BackendParams& params) : m_(model) {
    const HParams& hp = model.hp;
    const int32_t n_ctx = params.n_ctx, n_batch = params.n_batch;
    const int32_t n_threads = params.n_threads, n_threads_batch = params.n_threads_batch;
    kv_.n_ctx = n_ctx;
    kv_.n_layer = hp.n_layer;
    kv_.kv_width = hp.n_head_kv * hp.head_dim;
    kv_.n_slots = std::max(params.n_slots, 1);
    const size_t kv_elems = (size_t)hp.n_layer * kv_.n_slots * n_ctx * kv_.kv_width;
    kv_.k.assign(kv_elems, 0);
    kv_.v.assign(kv_elems, 0);

    const size_t nb = (size_t)n_batch;
    const size_t q_width = (size_t)hp.n_head * hp.head_dim;
    s_.n_batch = n_batch;
    s_.x.resize(nb * hp.n_embd);
    s_.xb.resize(nb * hp.n_embd);
    s_.xb2.resize(nb * hp.n_embd);
    s_.q.resize(nb * q_width);
    s_.k.resize(nb * kv_.kv_width);
    s_.v.resize(nb * kv_.kv_width);
    s_.att_out.resize(nb * q_width);
    s_.hb.resize(nb * hp.n_ff);
    s_.hb2.resize(nb * hp.n_ff);
    // logits grow on demand: most calls want one row, and n_batch rows of a large
    // vocabulary (512 x 49152 floats: 96 MiB) would dominate the resident memory.
    s_.logits.resize(hp.n_vocab);
    s_.act.data.resize(row_size(GgmlType::F32, std::max(hp.n_ff, hp.n_embd)) * nb);

    pool_decode_ = std::make_unique<ThreadPool>(n_threads);
    if (n_threads_batch != n_threads) pool_batch_ = std::make_unique<ThreadPool>(n_threads_batch);
    const size_t max_threads = (size_t)std::max(n_threads, n_threads_batch);
    const size_t ctx_pad = ((size_t)n_ctx + 7) / 8 * 8;
    const size_t group = (size_t)(hp.n_head / hp.n_head_kv);
    // Rows past n_ctx stay zero: the kernels read keys in groups of 8.
    s_.att_kv.assign(max_threads * 2 * ctx_pad * hp.head_dim, 0.0f);
    s_.att_conv.assign(max_threads * 2, -1);
    // The prompt path's per-thread tiles, or a decode step's whole layer (attend_step).
    s_.att_q.resize(std::max(max_threads * ATTN_TOKENS * group, (size_t)hp.n_head) * hp.head_dim);
    s_.scores.resize(std::max(max_threads * ATTN_TOKENS, (size_t)hp.n_head) * ctx_pad);
}

// dst = src rounded to fp16 values.
static void round_queries_f16(const AttnKernels& ak, const float* src, float* dst, size_t n) {
    for (size_t i0 = 0; i0 < n; i0 += 256) {
        uint16_t h[256];
        const int m = (int)std::min<size_t>(256, n - i0);
        ak.to_f16(h, src + i0, m);
        ak.to_f32(dst + i0, h, m);
    }
}

void CpuForward::attention(ThreadPool& pool, int layer, int32_t n, int32_t pos) {
    const HParams& hp = m_.hp;
    const int hd = hp.head_dim;
    const int group = hp.n_head / hp.n_head_kv;   // query heads per key/value head
    const int q_width = hp.n_head * hd;
    const float scale = 1.0f / std::sqrt((float)hd);
    const AttnKernels ak = attn_kernels(hd);
    const int n_ctx = kv_.n_ctx;
    const size_t ctx_pad = ((size_t)n_ctx + 7) / 8 * 8;
    if (n == 1) {
        // A decode step reads the fp16 cache in place, each row once for all heads:
        // converting it to float first wrote and re-read twice its size per head.
        const size_t q_elems = (size_t)hp.n_head * hd;
        round_queries_f16(ak, s_.q.data(), s_.att_q.data(), q_elems);
        attend_step(pool, ak, s_.att_q.data(), hp.n_head, hp.n_head_kv, hd, kv_.k_at(layer, 0), kv_.v_at(layer, 0),
                    kv_.kv_width, pos + 1, scale, s_.scores.data(), ctx_pad, s_.att_out.data());
        return;
    }
    // One task per (KV head, block of ATTN_TOKENS tokens): its keys and values are
    // converted to float once and read by all group * ATTN_TOKENS queries. Each token
    // sees the cache up to its own position.
    const int n_blocks = (n + ATTN_TOKENS - 1) / ATTN_TOKENS;
    for (size_t i = 0; i < s_.att_conv.size(); i += 2) s_.att_conv[i] = -1;
    pool.parallel_for((int64_t)hp.n_head_kv * n_blocks, 1, [&](int ith, int64_t b, int64_t e) {
        float* kf = s_.att_kv.data() + (size_t)ith * 2 * ctx_pad * hd;
        float* vf = kf + ctx_pad * hd;
        float* qf = s_.att_q.data() + (size_t)ith * ATTN_TOKENS * group * hd;
        float* scores = s_.scores.data() + (size_t)ith * ATTN_TOKENS * ctx_pad;
        int32_t& conv_head = s_.att_conv[2 * ith];
        int32_t& conv_rows = s_.att_conv[2 * ith + 1];
        for (int64_t task = b; task < e; task++) {
            const int kvh = (int)(task / n_blocks);
            const int t0 = (int)(task % n_blocks) * ATTN_TOKENS;
            const int nt = std::min(ATTN_TOKENS, n - t0);
            // Rows up to the next multiple of 8 (cache rows past the last key hold
            // leftovers or zeros; the lanes they fill are never used).
            const int rows = std::min((pos + t0 + nt + 7) / 8 * 8, n_ctx);
            // A thread's tasks come in order, so consecutive blocks of one KV head only
            // convert the rows they add.
            if (conv_head != kvh) conv_head = kvh, conv_rows = 0;
            for (int j = conv_rows; j < rows; j++) {
                ak.to_f32(kf + (size_t)j * hd, kv_.k_at(layer, j) + kvh * hd, hd);
                ak.to_f32(vf + (size_t)j * hd, kv_.v_at(layer, j) + kvh * hd, hd);
            }
            conv_rows = std::max(conv_rows, rows);
            // The queries are rounded to fp16 like the cached keys, as llama.cpp's
            // F16-cache attention does; matching it keeps greedy output identical.
            // qf: (group, nt, hd)
            for (int t = 0; t < nt; t++) {
                for (int g = 0; g < group; g++) {
                    const float* q32 = s_.q.data() + (size_t)(t0 + t) * q_width + (size_t)(kvh * group + g) * hd;
                    round_queries_f16(ak, q32, qf + ((size_t)g * nt + t) * hd, hd);
                }
            }
            for (int g = 0; g < group; g++) {
                float* out = s_.att_out.data() + (size_t)t0 * q_width + (size_t)(kvh * group + g) * hd;
                attend(ak, qf + (size_t)g * nt * hd, hd, nt, pos + t0 + 1, kf, vf, hd, scale, scores, ctx_pad, out,
                       q_width);
            }
        }
    });
}

// Keys and values of layer `layer` for the n tokens whose normalised residual is in
// xb: project, rotate, store in the cache as fp16. xb_converted: the query projection
// has just converted xb (K and V reuse that when their type matches).
void CpuForward::store_kv(ThreadPool& pool, int il, int32_t n, int32_t pos, bool xb_converted) {
    const HParams& hp = m_.hp;
    const LayerWeights& L = m_.w.layers[il];
    const int kv_width = kv_.kv_width;
    const float* rope_ff = m_.w.rope_freq_factors.empty() ? nullptr : m_.w.rope_freq_factors.data();
    const AttnKernels ak = attn_kernels(hp.head_dim);
    matmul(pool, L.wk, s_.xb.data(), s_.k.data(), n, s_.act, xb_converted);
    matmul(pool, L.wv, s_.xb.data(), s_.v.data(), n, s_.act, true);
    if (!L.bk.empty()) add_bias(s_.k.data(), L.bk.data(), n, kv_width);
    if (!L.bv.empty()) add_bias(s_.v.data(), L.bv.data(), n, kv_width);
    for (int t = 0; t < n; t++) {
        rope(s_.k.data() + (size_t)t * kv_width, hp.n_head_kv, hp.head_dim, hp.n_rot, pos + t, hp.rope_freq_base,
             hp.rope_freq_scale, rope_ff, hp.rope_neox);
        uint16_t* kc = kv_.k_at(il, pos + t);
        uint16_t* vc = kv_.v_at(il, pos + t);
        ak.to_f16(kc, s_.k.data() + (size_t)t * kv_width, kv_width);
        ak.to_f16(vc, s_.v.data() + (size_t)t * kv_width, kv_width);
    }
}

// The FFN block of layer il for n rows of the residual s_.x: row k is rows[k] (rows
// null: rows 0 .. n-1). u = ffn_norm(h) goes to s_.xb and the block's output f to
// s_.xb2, packed (row k at k); the caller adds f to the residual (and measures the gate).
void CpuForward::ffn_block(ThreadPool& pool, int il, const FfnSurrogate* sur, const int32_t* rows, int32_t n) {
    const HParams& hp = m_.hp;
    const LayerWeights& L = m_.w.layers[il];
    const int64_t D = hp.n_embd;
    for (int k = 0; k < n; k++)
        rmsnorm(s_.xb.data() + k * D, s_.x.data() + (rows ? rows[k] : k) * D, L.ffn_norm.data(), D, hp.rms_eps);
    if (!sur) {
        // ---- the FFN: f = Wdown (silu(Wgate u) * Wup u) ----
        matmul(pool, L.ffn_gate, s_.xb.data(), s_.hb.data(), n, s_.act);
        matmul(pool, L.ffn_up, s_.xb.data(), s_.hb2.data(), n, s_.act, true);   // same input as gate
        swiglu(s_.hb.data(), s_.hb.data(), s_.hb2.data(), (int64_t)n * hp.n_ff);
        matmul(pool, L.ffn_down, s_.hb.data(), s_.xb2.data(), n, s_.act);
        return;
    }
    // ---- its surrogate: f = b + U (V^T u), rank << n_ff ----
    if (sur->rank > 0) {
        matmul(pool, sur->up, s_.xb.data(), s_.hb.data(), n, s_.act);
        matmul(pool, sur->down, s_.hb.data(), s_.xb2.data(), n, s_.act);
    } else {
        std::fill_n(s_.xb2.data(), (size_t)n * D, 0.0f);
    }
    add_bias(s_.xb2.data(), sur->bias.data(), n, D);
}

const float* CpuForward::forward(const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                                 SkipSchedule* skip, bool decode_step) {
    const HParams& hp = m_.hp;
    const ModelWeights& w = m_.w;
    if (n < 1 || n > s_.n_batch) throw std::invalid_argument("forward: batch of " + std::to_string(n) + " tokens");
    if (pos < 0 || pos + n > kv_.n_ctx) throw std::invalid_argument("forward: positions past the context");
    if (decode_step && n != 1) throw std::invalid_argument("forward: a decode step takes one token");
    ThreadPool& pool = (n > 1 && pool_batch_) ? *pool_batch_ : *pool_decode_;
    const int64_t D = hp.n_embd;
    const int q_width = hp.n_head * hp.head_dim;
    const float* rope_ff = w.rope_freq_factors.empty() ? nullptr : w.rope_freq_factors.data();
    const bool step = skip && decode_step;   // the per-token skip policy decides

    for (int t = 0; t < n; t++) embedding_row(w.token_embd, tokens[t], s_.x.data() + t * D);

    for (int il = 0; il < hp.n_layer; il++) {
        const LayerWeights& L = w.layers[il];

        // ---- whole-layer skipping (shortgpt, skipdecode) ----
        const bool layer_runs = !skip || (step ? skip->layer_runs(il) : skip->prompt_layer_runs(il));
        if (!layer_runs) {
            if (step && il >= skip->exit_layer()) {
                // skipdecode: later tokens attend to this position in every layer, so
                // its keys and values come from the exit hidden state.
                rmsnorm(s_.xb.data(), s_.x.data(), L.attn_norm.data(), D, hp.rms_eps);
                store_kv(pool, il, 1, pos, false);
            }
            continue;
        }

        // ---- attention: h = x + Wo attn(norm(x)) ----
        for (int t = 0; t < n; t++) rmsnorm(s_.xb.data() + t * D, s_.x.data() + t * D, L.attn_norm.data(), D, hp.rms_eps);
        matmul(pool, L.wq, s_.xb.data(), s_.q.data(), n, s_.act);
        if (!L.bq.empty()) add_bias(s_.q.data(), L.bq.data(), n, q_width);
        for (int t = 0; t < n; t++)
            rope(s_.q.data() + (size_t)t * q_width, hp.n_head, hp.head_dim, hp.n_rot, pos + t, hp.rope_freq_base,
                 hp.rope_freq_scale, rope_ff, hp.rope_neox);
        store_kv(pool, il, n, pos, true);
        attention(pool, il, n, pos);
        matmul(pool, L.wo, s_.att_out.data(), s_.xb2.data(), n, s_.act);
        for (int64_t i = 0; i < n * D; i++) s_.x[i] += s_.xb2[i];

        // ---- the skip gate: leave this layer's FFN out? Then x' = h, or h plus its surrogate. ----
        const bool ffn_runs = !skip || (step ? skip->ffn_runs(il) : skip->prompt_ffn_runs(il));
        const FfnSurrogate* sur = ffn_runs ? nullptr : skip->surrogate(il);
        if (trace_) record_trace(trace_->h, il, n, pos, s_.x.data());
        if (!ffn_runs && !sur) {
            if (trace_) std::fill_n(trace_row(trace_->f, il, pos), (size_t)n * D, 0.0f);
            continue;
        }

        // ---- feed-forward, or its surrogate in its place: f into xb2 (u = ffn_norm(h) in xb) ----
        ffn_block(pool, il, ffn_runs ? nullptr : sur, nullptr, n);
        if (trace_) {
            record_trace(trace_->u, il, n, pos, s_.xb.data());
            record_trace(trace_->f, il, n, pos, s_.xb2.data());
        }

        // ---- residual: x' = h + f; the gate's input, fused with the add: cos(h + f, h) ----
        if (step && skip->wants_cosine(il)) {
            const double c = residual_add_cosine(s_.x.data(), s_.xb2.data(), D);
            skip->after_ffn(il, c);
        } else {
            for (int64_t i = 0; i < n * D; i++) s_.x[i] += s_.xb2[i];
        }
    }

    // ---- logits, only for the rows asked for ----
    const int first = all_logits ? 0 : n - 1;
    const int rows = n - first;
    if (s_.logits.size() < (size_t)rows * hp.n_vocab) s_.logits.resize((size_t)rows * hp.n_vocab);
    for (int t = 0; t < rows; t++) rmsnorm(s_.xb.data() + t * D, s_.x.data() + (first + t) * D, w.output_norm.data(), D, hp.rms_eps);
    matmul(pool, w.output, s_.xb.data(), s_.logits.data(), rows, s_.act);
    return s_.logits.data();
}

float* CpuForward::trace_row(std::vector<float>& rows, int il, int32_t pos) {
    return rows.data() + ((size_t)il * trace_->n_tokens + pos) * trace_->n_embd;
}

void CpuForward::record_trace(std::vector<float>& rows, int il, int32_t n, int32_t pos, const float* src) {
    std::copy(src, src + (size_t)n * trace_->n_embd, trace_row(rows, il, pos));
}

void CpuForward::set_ffn_trace(Session::FfnTrace* trace) {
    if (trace && (trace->n_layer != m_.hp.n_layer || trace->n_embd != m_.hp.n_embd || trace->n_tokens > kv_.n_ctx))
        throw std::invalid_argument("set_ffn_trace: the trace does not fit the model and context");
    trace_ = trace;
}

}  // namespace ffnskip
