// Batched decoding on the CPU: one forward pass for one token of each of several
// sequences, each in its own KV cache slot at its own position. The matrix products
// take the rows together (each weight block is read once for all of them); RoPE, the
// cache writes and attention are per row, over the row's own slot. Every row's
// arithmetic is that of a single-sequence decode step (forward with n == 1), so a
// sequence's logits do not depend on what it is batched with.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu/forward-cpu.h"
#include "cpu/ops.h"
#include "skip/skip-policy.h"
#include "skip/surrogate.h"

namespace ffnskip {

const float* CpuForward::forward_slot(int32_t slot, const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                                      SkipSchedule* skip) {
    if (slot < 0 || slot >= kv_.n_slots) throw std::invalid_argument("forward_slot: no slot " + std::to_string(slot));
    // forward() addresses the cache through kv_.slot; put it back whatever happens.
    struct SlotScope {
        KvCache& kv;
        ~SlotScope() { kv.slot = 0; }
    } scope{kv_};
    kv_.slot = slot;
    return forward(tokens, n, pos, all_logits, skip, false);
}

// dst = src rounded to fp16 values.
static void round_f16(const AttnKernels& ak, const float* src, float* dst, int n) {
    for (int i0 = 0; i0 < n; i0 += 256) {
        uint16_t h[256];
        const int m = std::min(256, n - i0);
        ak.to_f16(h, src + i0, m);
        ak.to_f32(dst + i0, h, m);
    }
}

// attend_step's arithmetic on one thread: every head of one query row over n_keys
// cache rows (the same kernels on the same tiles, so the results are equal).
static void attend_row(const AttnKernels& ak, const float* q, int n_head, int n_head_kv, int hd, const uint16_t* k,
                       const uint16_t* v, size_t kv_stride, int n_keys, float scale, float* scores, size_t s_stride,
                       float* out) {
    const int group = n_head / n_head_kv;
    const int K_TILE = 8, V_TILE = 16, SLICE = 32;
    for (int j0 = 0; j0 < n_keys; j0 += K_TILE) {
        const int nk = std::min(K_TILE, n_keys - j0);
        for (int h = 0; h < n_head_kv; h++)
            ak.scores_f16(scores + (size_t)h * group * s_stride + j0, s_stride, q + (size_t)h * group * hd, hd, group,
                          k + (size_t)j0 * kv_stride + (size_t)h * hd, kv_stride, nk, hd, scale);
    }
    for (int i = 0; i < n_head; i++) {
        ak.softmax(scores + (size_t)i * s_stride, n_keys);
        std::fill(out + (size_t)i * hd, out + (size_t)(i + 1) * hd, 0.0f);
    }
    for (int j0 = 0; j0 < n_keys; j0 += V_TILE) {
        const int nk = std::min(V_TILE, n_keys - j0);
        for (int h = 0; h < n_head_kv; h++)
            for (int d0 = 0; d0 < hd; d0 += SLICE)
                ak.accum_f16(out + (size_t)h * group * hd + d0, hd, scores + (size_t)h * group * s_stride + j0, s_stride,
                             group, v + (size_t)j0 * kv_stride + (size_t)h * hd + d0, kv_stride, nk,
                             std::min(SLICE, hd - d0));
    }
}

// The decode step's attention (CpuForward::attention with n == 1) for each row, over
// its own slot. Fewer rows than threads: each row's heads and keys are split between
// the threads (attend_step); else one row per task, so that a step waits for the
// threads once per layer rather than three times per row.
void CpuForward::attention_rows(ThreadPool& pool, int il, const int32_t* slots, const int32_t* pos, int32_t n) {
    const HParams& hp = m_.hp;
    const int hd = hp.head_dim;
    const int q_width = hp.n_head * hd;
    const AttnKernels ak = attn_kernels(hd);
    const float scale = 1.0f / std::sqrt((float)hd);
    const size_t ctx_pad = ((size_t)kv_.n_ctx + 7) / 8 * 8;
    if (n < pool.n_threads()) {
        for (int t = 0; t < n; t++) {
            kv_.slot = slots[t];
            round_f16(ak, s_.q.data() + (size_t)t * q_width, s_.att_q.data(), q_width);
            attend_step(pool, ak, s_.att_q.data(), hp.n_head, hp.n_head_kv, hd, kv_.k_at(il, 0), kv_.v_at(il, 0),
                        kv_.kv_width, pos[t] + 1, scale, s_.scores.data(), ctx_pad,
                        s_.att_out.data() + (size_t)t * q_width);
        }
        return;
    }
    const size_t n_threads = (size_t)pool.n_threads();
    if (s_.rows_q.size() < n_threads * q_width) s_.rows_q.resize(n_threads * q_width);
    if (s_.rows_scores.size() < n_threads * hp.n_head * ctx_pad) s_.rows_scores.resize(n_threads * hp.n_head * ctx_pad);
    pool.parallel_for(n, 1, [&](int ith, int64_t b, int64_t e) {
        float* q = s_.rows_q.data() + (size_t)ith * q_width;
        float* scores = s_.rows_scores.data() + (size_t)ith * hp.n_head * ctx_pad;
        for (int64_t t = b; t < e; t++) {
            const size_t base = kv_.slot_row(il, slots[t], 0);
            round_f16(ak, s_.q.data() + (size_t)t * q_width, q, q_width);
            attend_row(ak, q, hp.n_head, hp.n_head_kv, hd, kv_.k.data() + base, kv_.v.data() + base, kv_.kv_width,
                       pos[t] + 1, scale, scores, ctx_pad, s_.att_out.data() + (size_t)t * q_width);
        }
    });
}

const float* CpuForward::forward_rows(const int32_t* tokens, const int32_t* slots, const int32_t* pos, int32_t n,
                                      SkipSchedule* const* skips, RowsStep* step) {
    const HParams& hp = m_.hp;
    const ModelWeights& w = m_.w;
    if (n < 1 || n > s_.n_batch) throw std::invalid_argument("forward_rows: batch of " + std::to_string(n) + " rows");
    for (int t = 0; t < n; t++) {
        if (slots[t] < 0 || slots[t] >= kv_.n_slots) throw std::invalid_argument("forward_rows: no slot " + std::to_string(slots[t]));
        if (pos[t] < 0 || pos[t] >= kv_.n_ctx) throw std::invalid_argument("forward_rows: position past the context");
        for (int u = 0; u < t; u++)
            if (slots[u] == slots[t]) throw std::invalid_argument("forward_rows: slot " + std::to_string(slots[t]) + " twice");
    }
    ThreadPool& pool = *pool_decode_;
    const int64_t D = hp.n_embd;
    const int hd = hp.head_dim;
    const int q_width = hp.n_head * hd;
    const int kv_width = kv_.kv_width;
    const float* rope_ff = w.rope_freq_factors.empty() ? nullptr : w.rope_freq_factors.data();
    const AttnKernels ak = attn_kernels(hd);
    struct SlotScope {
        KvCache& kv;
        ~SlotScope() { kv.slot = 0; }
    } scope{kv_};

    for (int t = 0; t < n; t++) embedding_row(w.token_embd, tokens[t], s_.x.data() + t * D);

    for (int il = 0; il < hp.n_layer; il++) {
        const LayerWeights& L = w.layers[il];

        // ---- attention: h = x + Wo attn(norm(x)), each row over its own slot ----
        for (int t = 0; t < n; t++) rmsnorm(s_.xb.data() + t * D, s_.x.data() + t * D, L.attn_norm.data(), D, hp.rms_eps);
        matmul(pool, L.wq, s_.xb.data(), s_.q.data(), n, s_.act);
        matmul(pool, L.wk, s_.xb.data(), s_.k.data(), n, s_.act, true);
        matmul(pool, L.wv, s_.xb.data(), s_.v.data(), n, s_.act, true);
        if (!L.bq.empty()) add_bias(s_.q.data(), L.bq.data(), n, q_width);
        if (!L.bk.empty()) add_bias(s_.k.data(), L.bk.data(), n, kv_width);
        if (!L.bv.empty()) add_bias(s_.v.data(), L.bv.data(), n, kv_width);
        for (int t = 0; t < n; t++) {
            kv_.slot = slots[t];
            rope(s_.q.data() + (size_t)t * q_width, hp.n_head, hd, hp.n_rot, pos[t], hp.rope_freq_base,
                 hp.rope_freq_scale, rope_ff, hp.rope_neox);
            float* k = s_.k.data() + (size_t)t * kv_width;
            rope(k, hp.n_head_kv, hd, hp.n_rot, pos[t], hp.rope_freq_base, hp.rope_freq_scale, rope_ff, hp.rope_neox);
            ak.to_f16(kv_.k_at(il, pos[t]), k, kv_width);
            ak.to_f16(kv_.v_at(il, pos[t]), s_.v.data() + (size_t)t * kv_width, kv_width);
        }
        attention_rows(pool, il, slots, pos, n);
        matmul(pool, L.wo, s_.att_out.data(), s_.xb2.data(), n, s_.act);
        for (int64_t i = 0; i < n * D; i++) s_.x[i] += s_.xb2[i];

        // ---- the skip gate: which rows run this layer's FFN (each row's own schedule,
        // or with the vote the rows' majority for all of them) ----
        decide_ffn_rows(il, skips, n, step && step->vote, s_.row_runs);

        // ---- feed-forward for the rows that run it, then each surrogate for the left-out
        // rows that have it (one product per group); the other rows keep x' = h ----
        auto surrogate_of = [&](int t) -> const FfnSurrogate* {   // a left-out row's stand-in, or null
            return s_.row_runs[t] || !skips || !skips[t] ? nullptr : skips[t]->surrogate(il);
        };
        std::vector<const FfnSurrogate*>& surs = s_.row_surrogates;
        surs.assign(1, nullptr);   // group 0: the FFN itself
        for (int t = 0; t < n; t++) {
            const FfnSurrogate* sur = surrogate_of(t);
            if (sur && std::find(surs.begin(), surs.end(), sur) == surs.end()) surs.push_back(sur);
        }
        for (const FfnSurrogate* sur : surs) {
            std::vector<int32_t>& rows = s_.ffn_rows;
            rows.clear();
            for (int t = 0; t < n; t++)
                if (sur ? surrogate_of(t) == sur : s_.row_runs[t]) rows.push_back(t);
            const int nr = (int)rows.size();
            if (nr == 0) continue;   // no row needs this FFN: its weights are not read
            ffn_block(pool, il, sur, rows.data(), nr);
            if (step) {
                if (sur)
                    step->surrogate_bytes_read += sur->up.n_bytes() + sur->down.n_bytes() + sur->bias.size() * sizeof(float);
                else
                    step->ffn_bytes_read += L.ffn_bytes();
            }
            // ---- residual: x' = h + f; the row's own gate looks at cos(h + f, h) ----
            for (int k = 0; k < nr; k++) {
                const int t = rows[k];
                float* x = s_.x.data() + t * D;
                const float* f = s_.xb2.data() + k * D;
                if (skips && skips[t] && skips[t]->wants_cosine(il)) {
                    skips[t]->after_ffn(il, residual_add_cosine(x, f, D));
                } else {
                    for (int64_t i = 0; i < D; i++) x[i] += f[i];
                }
            }
        }
    }

    // ---- logits of every row ----
    if (s_.logits.size() < (size_t)n * hp.n_vocab) s_.logits.resize((size_t)n * hp.n_vocab);
    for (int t = 0; t < n; t++) rmsnorm(s_.xb.data() + t * D, s_.x.data() + t * D, w.output_norm.data(), D, hp.rms_eps);
    matmul(pool, w.output, s_.xb.data(), s_.logits.data(), n, s_.act);
    return s_.logits.data();
}

}  // namespace ffnskip
