// Batched decoding on the GPU: one forward pass for one token of each of several
// sequences, each in its own KV cache slot at its own position (the CPU's
// forward-batch.cpp). The matrix products take the rows together (cuBLAS GEMMs beyond
// one row, so each weight is read once per step for the whole batch; a few rows of
// quantized weights take the decode kernel once per row, see mul_rows); RoPE with the
// cache writes, and attention, are one launch each for all rows, every row over its own
// slot (cuda::RowSlots). Each row's FFN skip schedule is asked on the host, layer by layer; a layer's
// FFN runs for the rows that need it, gathered together, and not at all when none
// does; a left-out row whose sidecar has a surrogate for the layer runs it instead,
// the rows of one sidecar together (as the CPU's forward-batch.cpp). Where a row's
// gate wants its cosine the step waits for that layer's cosines.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/attention.cuh"
#include "cuda/backend-cuda.cuh"
#include "cuda/cuda-common.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"
#include "skip/skip-policy.h"
#include "skip/surrogate.h"

namespace ffnskip {

namespace {

constexpr int ROW_THREADS = 256;

// dst[k] = src[rows[k]] for k < gridDim.x, rows of n floats.
__global__ void gather_rows_kernel(float* dst, const float* src, const int32_t* rows, int64_t n) {
    const float* s = src + (int64_t)rows[blockIdx.x] * n;
    float* d = dst + (int64_t)blockIdx.x * n;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) d[i] = s[i];
}

// x[rows[k]] += f[k], and cosines[k] = cos(x before, x after) summed in double, as the
// CPU's residual_add_cosine (0 when either is zero).
__global__ void scatter_add_cosine_kernel(float* x, const float* f, const int32_t* rows, int64_t n, double* cosines) {
    float* xr = x + (int64_t)rows[blockIdx.x] * n;
    const float* fr = f + (int64_t)blockIdx.x * n;
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float before = xr[i];
        const float after = before + fr[i];
        xr[i] = after;
        ab += (double)after * before;
        aa += (double)after * after;
        bb += (double)before * before;
    }
    __shared__ double sums[3][ROW_THREADS / 32];
    for (int off = 16; off > 0; off /= 2) {
        ab += __shfl_down_sync(0xffffffffu, ab, off);
        aa += __shfl_down_sync(0xffffffffu, aa, off);
        bb += __shfl_down_sync(0xffffffffu, bb, off);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        sums[0][warp] = ab;
        sums[1][warp] = aa;
        sums[2][warp] = bb;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        ab = aa = bb = 0;
        for (int w = 0; w < (int)blockDim.x / 32; w++) {
            ab += sums[0][w];
            aa += sums[1][w];
            bb += sums[2][w];
        }
        cosines[blockIdx.x] = (aa == 0 || bb == 0) ? 0.0 : ab / sqrt(aa * bb);
    }
}

bool is_dense(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }

}  // namespace

// y = x W^T for n rows. Quantized weights reach cuBLAS through an F16 copy (read b bytes
// per weight, write and read 2 + 2): below n = 1 + 4 / b rows, n passes of the decode
// kernel over the b bytes cost less.
void CudaForward::mul_rows(const cuda::DeviceMatrix& W, const float* x, float* y, int32_t n) {
    const double bytes_per_weight = (double)W.row_bytes / (double)W.n_in;
    if (n > 1 && !is_dense(W.type) && n < 1.0 + 4.0 / bytes_per_weight) {
        for (int t = 0; t < n; t++) cuda::matvec(W, x + (size_t)t * W.n_in, y + (size_t)t * W.n_out, nullptr, launch_);
        return;
    }
    mul_mat(W, x, y, n, nullptr, launch_);
}

void CudaForward::RowsBlock::place(void* base, int32_t n_batch, int32_t n_layer) {
    uint8_t* p = static_cast<uint8_t*>(base);
    size_t off = 0;
    auto take = [&](size_t bytes) { uint8_t* at = p ? p + off : nullptr; off += (bytes + 255) / 256 * 256; return at; };
    pos = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_batch));
    slots = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_batch));
    ffn_rows = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n_batch * n_layer));
    cosines = reinterpret_cast<double*>(take(sizeof(double) * n_batch * n_layer));
    bytes = off;
}

const float* CudaForward::forward_slot(int32_t slot, const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                                       SkipSchedule* skip) {
    if (slot < 0 || slot >= n_slots_) throw std::invalid_argument("forward_slot: no slot " + std::to_string(slot));
    // forward() addresses the cache through slot_; put it back whatever happens (the
    // captured decode graph holds slot 0's addresses).
    struct SlotScope {
        int32_t& slot;
        ~SlotScope() { slot = 0; }
    } scope{slot_};
    slot_ = slot;
    return forward(tokens, n, pos, all_logits, skip, false);
}

// The device copy of `set`, uploaded on first use. Sets that none of the step's rows
// use are dropped once there are more than slots (a row keeps one sidecar for life).
const cuda::DeviceSurrogates* CudaForward::batch_surrogates(const std::shared_ptr<const SurrogateSet>& set,
                                                            const SkipSchedule* const* skips, int32_t n) {
    for (const auto& d : batch_surrogates_)
        if (d->host() == set.get()) return d.get();
    if ((int)batch_surrogates_.size() >= n_slots_) {
        FFNSKIP_CUDA_CHECK(cudaStreamSynchronize(stream_));
        auto unused = [&](const std::unique_ptr<cuda::DeviceSurrogates>& d) {
            for (int t = 0; t < n; t++)
                if (skips[t] && skips[t]->surrogate_set().get() == d->host()) return false;
            return true;
        };
        batch_surrogates_.erase(std::remove_if(batch_surrogates_.begin(), batch_surrogates_.end(), unused),
                                batch_surrogates_.end());
    }
    batch_surrogates_.push_back(std::make_unique<cuda::DeviceSurrogates>(set, m_.hp.n_embd));
    return batch_surrogates_.back().get();
}

const float* CudaForward::forward_rows(const int32_t* tokens, const int32_t* slots, const int32_t* pos, int32_t n,
                                       SkipSchedule* const* skips, RowsStep* step) {
    const HParams& hp = m_.hp;
    const int64_t D = hp.n_embd;
    if (n < 1 || n > n_batch_) throw std::invalid_argument("forward_rows: batch of " + std::to_string(n) + " rows");
    for (int t = 0; t < n; t++) {
        if (slots[t] < 0 || slots[t] >= n_slots_) throw std::invalid_argument("forward_rows: no slot " + std::to_string(slots[t]));
        if (pos[t] < 0 || pos[t] >= n_ctx_) throw std::invalid_argument("forward_rows: position past the context");
        for (int u = 0; u < t; u++)
            if (slots[u] == slots[t]) throw std::invalid_argument("forward_rows: slot " + std::to_string(slots[t]) + " twice");
    }
    if (!rows_dev_mem_) {
        rows_d_.place(nullptr, n_batch_, hp.n_layer);
        FFNSKIP_CUDA_CHECK(cudaMalloc(&rows_dev_mem_, rows_d_.bytes));
        rows_d_.place(rows_dev_mem_, n_batch_, hp.n_layer);
        FFNSKIP_CUDA_CHECK(cudaMallocHost(&rows_host_mem_, rows_d_.bytes));
        rows_h_.place(rows_host_mem_, n_batch_, hp.n_layer);
    }
    // Each row's surrogate sidecar on the device (uploads happen here, before the step).
    row_surrogates_.assign(n, nullptr);
    for (int t = 0; t < n; t++)
        if (skips && skips[t] && skips[t]->surrogate_set())
            row_surrogates_[t] = batch_surrogates(skips[t]->surrogate_set(), skips, n);
    cudaStream_t st = stream_;
    const cuda::Launch& s = launch_;

    // The step's tokens, positions and slots (pinned, so the copies run asynchronously;
    // slots follow positions in the block: one copy).
    std::copy(tokens, tokens + n, step_h_.tokens);
    std::copy(pos, pos + n, rows_h_.pos);
    std::copy(slots, slots + n, rows_h_.slots);
    FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(step_d_.tokens, step_h_.tokens, n * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    const size_t pos_and_slots = reinterpret_cast<uint8_t*>(rows_h_.slots + n) - reinterpret_cast<uint8_t*>(rows_h_.pos);
    FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(rows_d_.pos, rows_h_.pos, pos_and_slots, cudaMemcpyHostToDevice, st));
    // Every row's RoPE, cache store and attention in one launch each, over its own slot.
    const cuda::RowSlots row_slots{rows_d_.slots, (int64_t)n_ctx_ * kv_width_};

    cuda::embed_rows(token_embd_, step_d_.tokens, n, x_, s);
    for (int il = 0; il < hp.n_layer; il++) {
        const CudaLayer& L = layers_[il];

        // ---- attention: h = x + Wo attn(norm(x)), each row over its own slot ----
        cuda::rmsnorm(xb_, x_, L.attn_norm, n, D, hp.rms_eps, nullptr, s);
        mul_rows(L.wq, xb_, q_, n);
        mul_rows(L.wk, xb_, k_, n);
        mul_rows(L.wv, xb_, v_, n);
        cuda::rope_store_kv(k_, v_, k_cache(il, 0), v_cache(il, 0), n, hp.n_head_kv, rope_, rows_d_.pos, nullptr, s, q_,
                            hp.n_head, nullptr, L.bias, row_slots);
        cuda::attention(q_, k_cache(il, 0), v_cache(il, 0), att_, n, hp.n_head, hp.n_head_kv, hp.head_dim, rows_d_.pos,
                        nullptr, s, nullptr, row_slots);
        mul_rows(L.wo, att_, xb2_, n);
        cuda::add_inplace(x_, xb2_, n * D, nullptr, s);

        // ---- the skip gate: which rows run this layer's FFN (each row's own schedule,
        // or with the vote the rows' majority for all of them) ----
        decide_ffn_rows(il, skips, n, step && step->vote, row_runs_);
        int32_t* rows_h = rows_h_.ffn_rows + (size_t)il * n_batch_;
        int32_t* rows_d = rows_d_.ffn_rows + (size_t)il * n_batch_;
        int nr = 0;
        bool want_cosines = false;
        for (int t = 0; t < n; t++) {
            if (!row_runs_[t]) continue;
            rows_h[nr++] = t;
            want_cosines |= skips && skips[t] && skips[t]->wants_cosine(il);
        }
        // After them, the left-out rows whose sidecar has a surrogate here, one group per
        // sidecar: [group_start[g], group_start[g + 1]) of rows_h.
        int n_all = nr;
        sur_groups_.clear();
        for (int t = 0; t < n; t++) {
            const cuda::DeviceSurrogates* set = row_surrogates_[t];
            if (row_runs_[t] || !set || !skips[t]->surrogate(il)) continue;
            if (std::find(sur_groups_.begin(), sur_groups_.end(), set) != sur_groups_.end()) continue;
            sur_groups_.push_back(set);
            group_start_.resize(sur_groups_.size());
            group_start_.back() = n_all;
            for (int u = t; u < n; u++) {
                if (row_runs_[u] || row_surrogates_[u] != set || !skips[u]->surrogate(il)) continue;
                rows_h[n_all++] = u;
                want_cosines |= skips[u]->wants_cosine(il);
            }
        }
        group_start_.resize(sur_groups_.size() + 1);
        group_start_.back() = n_all;
        if (n_all == 0) continue;   // no row needs this FFN or a surrogate: no weights are read
        FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(rows_d, rows_h, n_all * sizeof(int32_t), cudaMemcpyHostToDevice, st));
        double* cos_d = rows_d_.cosines + (size_t)il * n_batch_;

        // ---- feed-forward of the rows that run it: x' = h + Wdown (silu(Wgate norm(h)) * Wup norm(h)) ----
        if (nr > 0) {
            if (step) step->ffn_bytes_read += L.ffn_gate.row_bytes * L.ffn_gate.n_out + L.ffn_up.row_bytes * L.ffn_up.n_out +
                                              L.ffn_down.row_bytes * L.ffn_down.n_out;
            gather_rows_kernel<<<nr, ROW_THREADS, 0, st>>>(xb2_, x_, rows_d, D);
            FFNSKIP_CUDA_CHECK(cudaGetLastError());
            cuda::rmsnorm(xb_, xb2_, L.ffn_norm, nr, D, hp.rms_eps, nullptr, s);
            mul_rows(L.ffn_gate, xb_, hb_, nr);
            mul_rows(L.ffn_up, xb_, hb2_, nr);
            cuda::swiglu(hb_, hb_, hb2_, (int64_t)nr * hp.n_ff, nullptr, s);
            mul_rows(L.ffn_down, hb_, xb2_, nr);
            scatter_add_cosine_kernel<<<nr, ROW_THREADS, 0, st>>>(x_, xb2_, rows_d, D, cos_d);
            FFNSKIP_CUDA_CHECK(cudaGetLastError());
        }
        // ---- surrogates of the left-out rows: x' = h + b + U (V^T ffn_norm(h)), per sidecar ----
        for (size_t g = 0; g < sur_groups_.size(); g++) {
            const int first = group_start_[g], count = group_start_[g + 1] - first;
            const cuda::DeviceSurrogate* sur = sur_groups_[g]->at(il);
            if (!sur) throw Error("CUDA backend: internal error: a surrogate missing from its uploaded set");
            if (step) {
                const FfnSurrogate* host = sur_groups_[g]->host()->at(il);
                step->surrogate_bytes_read += host->up.n_bytes() + host->down.n_bytes() + host->bias.size() * sizeof(float);
            }
            gather_rows_kernel<<<count, ROW_THREADS, 0, st>>>(xb2_, x_, rows_d + first, D);
            FFNSKIP_CUDA_CHECK(cudaGetLastError());
            cuda::surrogate_forward(*sur, xb2_, L.ffn_norm, hp.rms_eps, count, D, hb_, xb_, nullptr, nullptr, s, false);
            scatter_add_cosine_kernel<<<count, ROW_THREADS, 0, st>>>(x_, xb_, rows_d + first, D, cos_d + first);
            FFNSKIP_CUDA_CHECK(cudaGetLastError());
        }
        if (want_cosines) {
            // The gate's next decisions depend on these: wait for them.
            double* cos_h = rows_h_.cosines + (size_t)il * n_batch_;
            FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(cos_h, cos_d, n_all * sizeof(double), cudaMemcpyDeviceToHost, st));
            FFNSKIP_CUDA_CHECK(cudaStreamSynchronize(st));
            for (int k = 0; k < n_all; k++) {
                SkipSchedule* sk = skips[rows_h[k]];
                if (sk && sk->wants_cosine(il)) sk->after_ffn(il, cos_h[k]);
            }
        }
    }

    // ---- logits of every row ----
    cuda::rmsnorm(xb_, x_, output_norm_, n, D, hp.rms_eps, nullptr, s);
    mul_rows(output_, xb_, logits_, n);
    FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(logits_host_, logits_, (size_t)n * hp.n_vocab * sizeof(float),
                                       cudaMemcpyDeviceToHost, st));
    FFNSKIP_CUDA_CHECK(cudaStreamSynchronize(st));
    return logits_host_;
}

}  // namespace ffnskip
