#include "cpu/ops.h"

#include <algorithm>
#include <cmath>

namespace ffnskip {

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * (double)x[i];
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / std::sqrt(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void matmul(ThreadPool& pool, const WeightMatrix& W, const float* x, float* y, int n_tokens,
            std::vector<uint8_t>& scratch) {
    const GgmlType act_type = type_traits(W.type).vec_dot_type;
    const size_t act_row = row_size(act_type, W.n_in);
    if (scratch.size() < act_row * (size_t)n_tokens) scratch.resize(act_row * (size_t)n_tokens);
    uint8_t* act = scratch.data();
    // Convert the activations once; every weight row reuses them.
    pool.parallel_for(n_tokens, 1, [&](int, int64_t b, int64_t e) {
        for (int64_t t = b; t < e; t++) quantize_row(act_type, x + t * W.n_in, act + t * act_row, W.n_in);
    });
    const int64_t n_out = W.n_out;
    pool.parallel_for(n_out, 16, [&](int, int64_t b, int64_t e) {
        for (int64_t r = b; r < e; r++) {
            const uint8_t* wr = W.row(r);
            for (int t = 0; t < n_tokens; t++) y[(int64_t)t * n_out + r] = vec_dot(W.type, W.n_in, wr, act + t * act_row);
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
