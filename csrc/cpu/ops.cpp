#include "cpu/ops.h"

#include <algorithm>
#include <cmath>

namespace ffnskip {

// ---- attention inner loops ----------------------------------------------------------

void fp32_to_fp16_row_avx2(uint16_t* dst, const float* src, int n);
void fp16_to_fp32_row_avx2(float* dst, const uint16_t* src, int n);
void attn_scores_avx2(float* s, const float* q, const float* k, int n_keys, int hd, float scale);
void attn_softmax_avx2(float* s, int n);
void attn_accum_avx2(float* out, const float* p, const float* v, int n_keys, int hd);
void attn_scores_f16_avx2(float* s, size_t s_stride, const float* q, size_t q_stride, int n_q, const uint16_t* k,
                          size_t k_stride, int n_keys, int hd, float scale);
void attn_accum_f16_avx2(float* out, size_t out_stride, const float* p, size_t p_stride, int n_q, const uint16_t* v,
                         size_t v_stride, int n_keys, int n_dims);
void exp_row_avx2(float* out, const float* x, int64_t n);
void swiglu_avx2(float* out, const float* gate, const float* up, int64_t n);
void rmsnorm_avx2(float* out, const float* x, const float* w, int64_t n, float eps);

static bool use_avx2() {
#if defined(__x86_64__) || defined(__i386__)
    // simd_level() is "avx2" or better only after the CPUID/XGETBV check of F16C and FMA.
    return simd_level()[0] == 'a';
#else
    return false;
#endif
}

static void fp32_to_fp16_row_scalar(uint16_t* dst, const float* src, int n) {
    for (int i = 0; i < n; i++) dst[i] = fp32_to_fp16(src[i]);
}

static void fp16_to_fp32_row_scalar(float* dst, const uint16_t* src, int n) {
    for (int i = 0; i < n; i++) dst[i] = fp16_to_fp32(src[i]);
}

static void attn_scores_scalar(float* s, const float* q, const float* k, int n_keys, int hd, float scale) {
    for (int j = 0; j < n_keys; j++) {
        const float* kj = k + (size_t)j * hd;
        float sum = 0.0f;
        for (int i = 0; i < hd; i++) sum += q[i] * kj[i];
        s[j] = sum * scale;
    }
}

static void attn_softmax_scalar(float* s, int n) {
    float max_score = -INFINITY;
    for (int j = 0; j < n; j++) max_score = std::max(max_score, s[j]);
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        s[j] = std::exp(s[j] - max_score);
        sum += s[j];
    }
    const float inv_sum = (float)(1.0 / sum);
    for (int j = 0; j < n; j++) s[j] *= inv_sum;
}

static void attn_accum_scalar(float* out, const float* p, const float* v, int n_keys, int hd) {
    for (int j = 0; j < n_keys; j++) {
        const float* vj = v + (size_t)j * hd;
        for (int i = 0; i < hd; i++) out[i] += p[j] * vj[i];
    }
}

static void attn_scores_f16_scalar(float* s, size_t s_stride, const float* q, size_t q_stride, int n_q,
                                   const uint16_t* k, size_t k_stride, int n_keys, int hd, float scale) {
    for (int j = 0; j < n_keys; j++) {
        const uint16_t* kj = k + (size_t)j * k_stride;
        for (int i = 0; i < n_q; i++) {
            const float* qi = q + i * q_stride;
            float sum = 0.0f;
            for (int c = 0; c < hd; c++) sum += qi[c] * fp16_to_fp32(kj[c]);
            s[i * s_stride + j] = sum * scale;
        }
    }
}

static void attn_accum_f16_scalar(float* out, size_t out_stride, const float* p, size_t p_stride, int n_q,
                                  const uint16_t* v, size_t v_stride, int n_keys, int n_dims) {
    for (int j = 0; j < n_keys; j++) {
        const uint16_t* vj = v + (size_t)j * v_stride;
        for (int i = 0; i < n_q; i++) {
            float* oi = out + i * out_stride;
            const float pj = p[i * p_stride + j];
            for (int d = 0; d < n_dims; d++) oi[d] += pj * fp16_to_fp32(vj[d]);
        }
    }
}

AttnKernels attn_kernels(int head_dim) {
    if (use_avx2() && head_dim % 8 == 0) {
        return {fp32_to_fp16_row_avx2, fp16_to_fp32_row_avx2, attn_scores_avx2, attn_softmax_avx2, attn_accum_avx2,
                attn_scores_f16_avx2, attn_accum_f16_avx2};
    }
    return {fp32_to_fp16_row_scalar, fp16_to_fp32_row_scalar, attn_scores_scalar, attn_softmax_scalar,
            attn_accum_scalar, attn_scores_f16_scalar, attn_accum_f16_scalar};
}

void attend(const AttnKernels& ak, const float* q, size_t q_stride, int n_q, int n_keys0, const float* k,
            const float* v, int hd, float scale, float* scores, size_t s_stride, float* out, size_t out_stride) {
    // A tile of keys (about 16 KiB) serves every query before the next is read; the
    // tiling only reorders independent outputs (scores) or continues each output's
    // running sum in key order (values), so results equal one pass over all keys.
    const int tile = std::max(8, (4096 / hd) & ~7);
    const int max_keys = n_keys0 + n_q - 1;
    for (int j0 = 0; j0 < max_keys; j0 += tile) {
        for (int i = 0; i < n_q; i++) {
            const int nk = std::min(tile, n_keys0 + i - j0);
            if (nk > 0) ak.scores(scores + i * s_stride + j0, q + i * q_stride, k + (size_t)j0 * hd, nk, hd, scale);
        }
    }
    for (int i = 0; i < n_q; i++) {
        ak.softmax(scores + i * s_stride, n_keys0 + i);
        std::fill(out + i * out_stride, out + i * out_stride + hd, 0.0f);
    }
    for (int j0 = 0; j0 < max_keys; j0 += tile) {
        for (int i = 0; i < n_q; i++) {
            const int nk = std::min(tile, n_keys0 + i - j0);
            if (nk > 0) ak.accum(out + i * out_stride, scores + i * s_stride + j0, v + (size_t)j0 * hd, nk, hd);
        }
    }
}

void attend_step(ThreadPool& pool, const AttnKernels& ak, const float* q, int n_head, int n_head_kv, int hd,
                 const uint16_t* k, const uint16_t* v, size_t kv_stride, int n_keys, float scale, float* scores,
                 size_t s_stride, float* out) {
    const int group = n_head / n_head_kv;
    // The cache rows are walked in short tiles, every head taking its part of a tile
    // before the next: memory then sees one forward stream over the layer's keys (and
    // later its values). Reading one head's part of every row, then the next head's,
    // took about 2.8 times as long at 1500 rows; tiles of 64 rows, 1.9 times.
    const int K_TILE = 8, V_TILE = 16;
    const int n_tiles = (n_keys + K_TILE - 1) / K_TILE;
    pool.parallel_for(n_tiles, 8, [&](int, int64_t b, int64_t e) {
        for (int64_t t = b; t < e; t++) {
            const int j0 = (int)t * K_TILE, nk = std::min(K_TILE, n_keys - j0);
            for (int h = 0; h < n_head_kv; h++)
                ak.scores_f16(scores + (size_t)h * group * s_stride + j0, s_stride, q + (size_t)h * group * hd, hd,
                              group, k + (size_t)j0 * kv_stride + (size_t)h * hd, kv_stride, nk, hd, scale);
        }
    });
    pool.parallel_for(n_head, 1, [&](int, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) {
            ak.softmax(scores + i * s_stride, n_keys);
            std::fill(out + i * hd, out + (i + 1) * hd, 0.0f);
        }
    });
    // Values: a running sum per output, so keys cannot be split between threads; the
    // threads split the (KV head, 32 dims) slices instead, each walking all rows once.
    const int SLICE = 32;
    const int n_slices = (hd + SLICE - 1) / SLICE;
    const int n_units = n_head_kv * n_slices;
    const int n_parts = std::min(pool.n_threads(), n_units);
    pool.parallel_for(n_parts, 1, [&](int, int64_t b, int64_t e) {
        for (int64_t part = b; part < e; part++) {
            const int u0 = (int)(part * n_units / n_parts), u1 = (int)((part + 1) * n_units / n_parts);
            for (int j0 = 0; j0 < n_keys; j0 += V_TILE) {
                const int nk = std::min(V_TILE, n_keys - j0);
                for (int u = u0; u < u1; u++) {
                    const int h = u / n_slices, d0 = (u % n_slices) * SLICE, nd = std::min(SLICE, hd - d0);
                    ak.accum_f16(out + (size_t)h * group * hd + d0, hd, scores + (size_t)h * group * s_stride + j0,
                                 s_stride, group, v + (size_t)j0 * kv_stride + (size_t)h * hd + d0, kv_stride, nk, nd);
                }
            }
        }
    });
}

void vec_exp(float* out, const float* x, int64_t n) {
    if (use_avx2()) return exp_row_avx2(out, x, n);
    for (int64_t i = 0; i < n; i++) out[i] = std::exp(x[i]);
}

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
    if (use_avx2()) return rmsnorm_avx2(out, x, w, n, eps);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * (double)x[i];
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / std::sqrt(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void matmul(ThreadPool& pool, const WeightMatrix& W, const float* x, float* y, int n_tokens, ActRows& act,
            bool same_input) {
    const GgmlType act_type = type_traits(W.type).vec_dot_type;
    const size_t act_row = row_size(act_type, W.n_in);
    const bool reuse = same_input && act.src == x && act.type == act_type && act.n_in == W.n_in && act.n_tokens == n_tokens;
    if (!reuse) {
        // Convert the activations once; every weight row reuses them.
        if (act.data.size() < act_row * (size_t)n_tokens) act.data.resize(act_row * (size_t)n_tokens);
        uint8_t* dst = act.data.data();
        pool.parallel_for(n_tokens, 1, [&](int, int64_t b, int64_t e) {
            for (int64_t t = b; t < e; t++) quantize_row(act_type, x + t * W.n_in, dst + t * act_row, W.n_in);
        });
        act.src = x;
        act.type = act_type;
        act.n_in = W.n_in;
        act.n_tokens = n_tokens;
    }
    const uint8_t* a = act.data.data();
    const GemmFn gemm = gemm_fn(W.type);
    const VecDotFn dot = vec_dot_fn(W.type);
    const int64_t n_out = W.n_out;
    // Each thread takes a range of rows (whole tiles: the kernels' tiles are 2, 3 or 16
    // rows high) and runs it against the tokens 64 at a time, so the activations it
    // reuses stay in cache.
    const int TOKEN_BLOCK = 64;
    const int64_t ROW_GRAIN = 48;
    pool.parallel_for(n_out, ROW_GRAIN, [&](int, int64_t b, int64_t e) {
        for (int t0 = 0; t0 < n_tokens; t0 += TOKEN_BLOCK) {
            const int nt = std::min(TOKEN_BLOCK, n_tokens - t0);
            const uint8_t* at = a + (size_t)t0 * act_row;
            float* yt = y + (int64_t)t0 * n_out;
            if (gemm) {
                gemm(W.n_in, W.row(b), W.row_bytes, (int)(e - b), at, act_row, nt, yt + b, (size_t)n_out);
                continue;
            }
            for (int64_t r = b; r < e; r++) {
                const uint8_t* wr = W.row(r);
                for (int t = 0; t < nt; t++) yt[(int64_t)t * n_out + r] = dot(W.n_in, wr, at + t * act_row);
            }
        }
    });
}

void embedding_row(const WeightMatrix& table, int32_t token, float* out) {
    dequantize_row(table.type, table.row(token), out, table.n_in);
}

void rope(float* x, int n_heads, int head_dim, int n_rot, int pos, float freq_base, float freq_scale,
          const float* freq_factors, bool neox) {
    // theta_i = pos * base^(-2i/n_rot), built by repeated multiplication in float
    // exactly as llama.cpp does, so rounding matches.
    const float theta_scale = std::pow(freq_base, -2.0f / (float)n_rot);
    float cos_t[512], sin_t[512];
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        float t = freq_scale * (freq_factors ? theta / freq_factors[i] : theta);
        cos_t[i] = std::cos(t);
        sin_t[i] = std::sin(t);
        theta *= theta_scale;
    }
    const int half = n_rot / 2;
    const int step = neox ? 1 : 2;       // where pair i starts
    const int other = neox ? half : 1;   // how far its second element is
    for (int h = 0; h < n_heads; h++) {
        float* v = x + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float* a = v + step * i;
            const float x0 = a[0], x1 = a[other];
            a[0] = x0 * cos_t[i] - x1 * sin_t[i];
            a[other] = x0 * sin_t[i] + x1 * cos_t[i];
        }
    }
}

void add_bias(float* y, const float* bias, int64_t n, int64_t width) {
    for (int64_t t = 0; t < n; t++)
        for (int64_t i = 0; i < width; i++) y[t * width + i] += bias[i];
}

void swiglu(float* out, const float* gate, const float* up, int64_t n) {
    if (use_avx2()) return swiglu_avx2(out, gate, up, n);
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

double residual_add_cosine(float* x, const float* f, int64_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; i++) {
        const float before = x[i];
        const float after = before + f[i];
        x[i] = after;
        ab += (double)after * before;
        aa += (double)after * after;
        bb += (double)before * before;
    }
    if (aa == 0 || bb == 0) return 0.0;
    return ab / std::sqrt(aa * bb);
}

}  // namespace ffnskip
