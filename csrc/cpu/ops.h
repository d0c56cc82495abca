// CPU kernels of the forward pass. Activations are float32, row-major
// (token, feature); weights stay in their GGUF block format.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/thread-pool.h"
#include "model/model.h"

namespace ffnskip {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]   (sum of squares in double, as llama.cpp;
// the SIMD version sums in 8 lanes)
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);

// Activation rows converted to a weight's vec_dot type (grown as needed, never shrunk),
// and what they were made from, so that matrices reading the same input (Q, K, V;
// gate, up) convert it once.
struct ActRows {
    const float* src = nullptr;    // the float rows converted; null = nothing valid
    GgmlType type = GgmlType::F32;
    int64_t n_in = 0;
    int n_tokens = 0;
    std::vector<uint8_t> data;     // (n_tokens, row_size(type, n_in))
};

// y (n_tokens, W.n_out) = x (n_tokens, W.n_in) times W transposed. same_input: x has
// not changed since the previous matmul with `act`, whose conversion is reused when
// it was made from x for the same type and shape.
void matmul(ThreadPool& pool, const WeightMatrix& W, const float* x, float* y, int n_tokens, ActRows& act,
            bool same_input = false);

// Inner loops of attention. Keys and values arrive as float rows of head_dim (fp16
// cache rows converted once and shared by every query that reads them). Every output's
// arithmetic depends only on its own inputs, never on how many queries or keys are
// processed together, so a prompt batch and token-by-token decoding agree bit for bit.
// attn_kernels(hd) picks SIMD or scalar versions (SIMD needs hd % 8 == 0; the choice
// honours set_force_scalar at the time of the call).
struct AttnKernels {
    void (*to_f16)(uint16_t* dst, const float* src, int n);   // round to nearest even
    void (*to_f32)(float* dst, const uint16_t* src, int n);
    // s[j] = scale * (q . k_j) for j < n_keys. k: (round_up(n_keys, 8), hd), the rows
    // past n_keys readable (any value); s: room for round_up(n_keys, 8).
    void (*scores)(float* s, const float* q, const float* k, int n_keys, int hd, float scale);
    // s[0..n) = softmax(s[0..n)); s: room for round_up(n, 8).
    void (*softmax)(float* s, int n);
    // out[0..hd) += sum over j < n_keys of p[j] * v_j, in key order. v: (n_keys, hd)
    void (*accum)(float* out, const float* p, const float* v, int n_keys, int hd);
    // The same two read straight from fp16 rows (row j at k + j * k_stride), for n_q
    // queries that share the keys; each result equals scores / accum on the rows
    // converted to float. scores_f16: s[i * s_stride + j] for i < n_q, j < n_keys
    // (nothing past n_keys is read or written). accum_f16: out[i * out_stride + d] +=
    // sum over j of p[i * p_stride + j] * v_j[d], for d < n_dims (a multiple of 8 on
    // the SIMD path).
    void (*scores_f16)(float* s, size_t s_stride, const float* q, size_t q_stride, int n_q, const uint16_t* k,
                       size_t k_stride, int n_keys, int hd, float scale);
    void (*accum_f16)(float* out, size_t out_stride, const float* p, size_t p_stride, int n_q, const uint16_t* v,
                      size_t v_stride, int n_keys, int n_dims);
};
AttnKernels attn_kernels(int head_dim);

// Causal attention of n_q queries of one head: query i sees keys [0, n_keys0 + i).
// q: (n_q, q_stride), k and v: (round_up(n_keys0 + n_q - 1, 8), hd) float rows,
// scores: (n_q, s_stride) scratch with s_stride >= that row count, out: (n_q, out_stride).
// Keys are taken in tiles that stay in L1 while every query reads them.
void attend(const AttnKernels& ak, const float* q, size_t q_stride, int n_q, int n_keys0, const float* k,
            const float* v, int hd, float scale, float* scores, size_t s_stride, float* out, size_t out_stride);

// One decode step of every head of a layer: query h (of n_head) sees keys [0, n_keys)
// of KV head h / (n_head / n_head_kv), read from the fp16 cache in place. q: (n_head,
// hd) already rounded to fp16 values; k, v: cache rows of kv_stride elements, KV head
// h at offset h * hd; scores: (n_head, s_stride) scratch, s_stride >= n_keys rounded
// up to 8; out: (n_head, hd). Each row of keys and values is read from memory once for all heads
// (the threads split the keys for the scores, the heads' dims for the values), and
// every output equals attend() on the same query, keys and values.
void attend_step(ThreadPool& pool, const AttnKernels& ak, const float* q, int n_head, int n_head_kv, int hd,
                 const uint16_t* k, const uint16_t* v, size_t kv_stride, int n_keys, float scale, float* scores,
                 size_t s_stride, float* out);

// out[i] = exp(x[i]); the SIMD version is within ~2 ulp of std::exp.
void vec_exp(float* out, const float* x, int64_t n);

// One embedding row, decoded to float.
void embedding_row(const WeightMatrix& table, int32_t token, float* out);

// Rotates the first n_rot dims of each of n_heads heads of width head_dim in place for
// position pos: llama.cpp's "normal" mode (pairs (2i, 2i + 1)), or with neox its NEOX
// mode (pairs (i, i + n_rot/2)); pair i turns by the same angle in both.
void rope(float* x, int n_heads, int head_dim, int n_rot, int pos, float freq_base, float freq_scale,
          const float* freq_factors, bool neox = false);

// y[t * width + i] += bias[i] for each of n rows (the Q/K/V biases of qwen2).
void add_bias(float* y, const float* bias, int64_t n, int64_t width);

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise; each element's
// result does not depend on n or its index (tails take the SIMD path too).
void swiglu(float* out, const float* gate, const float* up, int64_t n);

// x += f, returning cos(x + f, x) of the old x (double accumulators): the FFN-skip
// gate measured in the same pass as the residual add.
double residual_add_cosine(float* x, const float* f, int64_t n);

}  // namespace ffnskip
