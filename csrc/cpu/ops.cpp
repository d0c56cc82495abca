#include "cpu/ops.h"

#include <algorithm>
#include <cmath>

namespace ffnskip {

// ---- attention inner loops ----------------------------------------------------------

float dot_f32_f16_avx2(const float* q, const uint16_t* k, int n);
void axpy_f16_avx2(float* out, float a, const uint16_t* v, int n);
void fp32_to_fp16_row_avx2(uint16_t* dst, const float* src, int n);

static float dot_f32_f16_scalar(const float* q, const uint16_t* k, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += q[i] * fp16_to_fp32(k[i]);
    return sum;
}

static void axpy_f16_scalar(float* out, float a, const uint16_t* v, int n) {
    for (int i = 0; i < n; i++) out[i] += a * fp16_to_fp32(v[i]);
}

static void fp32_to_fp16_row_scalar(uint16_t* dst, const float* src, int n) {
    for (int i = 0; i < n; i++) dst[i] = fp32_to_fp16(src[i]);
}

AttnKernels attn_kernels() {
#if defined(__x86_64__) || defined(__i386__)
    // simd_level() is "avx2" or better only after the CPUID/XGETBV check of F16C and FMA.
    if (simd_level()[0] == 'a') return {dot_f32_f16_avx2, axpy_f16_avx2, fp32_to_fp16_row_avx2};
#endif
    return {dot_f32_f16_scalar, axpy_f16_scalar, fp32_to_fp16_row_scalar};
}

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
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
    // Each thread takes a range of rows (whole tiles: the kernels' tiles are 2 or 3 rows
    // high) and runs it against the tokens 64 at a time, so the activations it reuses
    // stay in cache.
    const int TOKEN_BLOCK = 64;
    const int64_t ROW_GRAIN = 24;
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
          const float* freq_factors) {
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
    for (int h = 0; h < n_heads; h++) {
        float* v = x + (int64_t)h * head_dim;
        for (int i = 0; i < n_rot / 2; i++) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * cos_t[i] - x1 * sin_t[i];
            v[2 * i + 1] = x0 * sin_t[i] + x1 * cos_t[i];
        }
    }
}

void swiglu(float* out, const float* gate, const float* up, int64_t n) {
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
