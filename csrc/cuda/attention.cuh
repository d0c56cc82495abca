// Causal attention of n query tokens over the F16 KV cache of one layer.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ffnskip {
namespace cuda {

constexpr int ATTN_MAX_HEAD_DIM = 256;

// q, out: (n_tokens, n_head * head_dim); caches: (n_ctx, n_head_kv * head_dim).
// Token t (at position *pos + t) sees keys 0 .. *pos + t. Query heads share key/value
// heads in groups of n_head / n_head_kv.
void attention(const float* q, const __half* k_cache, const __half* v_cache, float* out, int n_tokens, int n_head,
               int n_head_kv, int head_dim, const int* pos, const int* skip, cudaStream_t stream);

}  // namespace cuda
}  // namespace ffnskip
