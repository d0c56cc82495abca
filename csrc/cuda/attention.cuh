// Causal attention of n query tokens over the F16 KV cache of one layer.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/cuda-common.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

constexpr int ATTN_MAX_HEAD_DIM = 256;

// Work space of the split decode attention (see attention.cu), in device memory.
struct AttentionSplits {
    int n_splits = 0;           // key ranges per head; 0 or 1: one block per head
    float* partial = nullptr;   // (n_head, n_splits, head_dim + 2): each range's acc, m, l
    unsigned* done = nullptr;   // (n_head) ranges finished; zero between launches
    // Bytes of partial followed by done.
    static size_t bytes(int n_head, int head_dim, int n_splits);
    // Points partial and done into `bytes()` of device memory at base (n_splits set).
    void place(void* base, int n_head, int head_dim);
};

// q, out: (n_tokens, n_head * head_dim); caches: (n_ctx, n_head_kv * head_dim).
// Token t (at position *pos + t) sees keys 0 .. *pos + t. Query heads share key/value
// heads in groups of n_head / n_head_kv. A decode step (one token) splits each head's
// keys over splits->n_splits blocks when splits is given with n_splits > 1. With rows.slot,
// the n_tokens are the rows of a batch, each over its own slot's cache (cuda-common.cuh).
void attention(const float* q, const __half* k_cache, const __half* v_cache, float* out, int n_tokens, int n_head,
               int n_head_kv, int head_dim, const int* pos, const int* skip, const Launch& l,
               const AttentionSplits* splits = nullptr, const RowSlots& rows = {});

}  // namespace cuda
}  // namespace ffnskip
