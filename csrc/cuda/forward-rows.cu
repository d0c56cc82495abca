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
        drop_rows_graphs();   // they may hold a freed set's addresses
    }
    batch_surrogates_.push_back(std::make_unique<cuda::DeviceSurrogates>(set, m_.hp.n_embd));
    return batch_surrogates_.back().get();
}

// Which rows run layer il's FFN, and which left-out rows run a surrogate (grouped by
// sidecar), into plan and the layer's row list rows_h_.ffn_rows[il]; adds the weight
// bytes this reads to step.
void CudaForward::plan_rows_layer(int il, SkipSchedule* const* skips, int32_t n, RowsStep* step, RowsLayerPlan& plan) {
    const CudaLayer& L = layers_[il];
    decide_ffn_rows(il, skips, n, step && step->vote, row_runs_);
    int32_t* rows_h = rows_h_.ffn_rows + (size_t)il * n_batch_;
    plan = RowsLayerPlan{};
    for (int t = 0; t < n; t++) {
        if (!row_runs_[t]) continue;
        rows_h[plan.nr++] = t;
        plan.want_cosines |= skips && skips[t] && skips[t]->wants_cosine(il);
    }
    plan.n_all = plan.nr;
    for (int t = 0; t < n; t++) {
        const cuda::DeviceSurrogates* set = row_surrogates_[t];
        if (row_runs_[t] || !set || !skips[t]->surrogate(il)) continue;
        if (std::find(plan.sets.begin(), plan.sets.end(), set) != plan.sets.end()) continue;
        plan.sets.push_back(set);
        plan.start.push_back(plan.n_all);
        for (int u = t; u < n; u++) {
            if (row_runs_[u] || row_surrogates_[u] != set || !skips[u]->surrogate(il)) continue;
            rows_h[plan.n_all++] = u;
            plan.want_cosines |= skips[u]->wants_cosine(il);
        }
        if (step) {
            const FfnSurrogate* host = set->host()->at(il);
            step->surrogate_bytes_read += host->up.n_bytes() + host->down.n_bytes() + host->bias.size() * sizeof(float);
        }
    }
    plan.start.push_back(plan.n_all);
    if (step && plan.nr > 0)
        step->ffn_bytes_read += L.ffn_gate.row_bytes * L.ffn_gate.n_out + L.ffn_up.row_bytes * L.ffn_up.n_out +
                                L.ffn_down.row_bytes * L.ffn_down.n_out;
}

// Layer il's attention for all n rows: h = x + Wo attn(norm(x)), each row over its own slot.
void CudaForward::encode_rows_attention(int il, int32_t n) {
    const HParams& hp = m_.hp;
    const CudaLayer& L = layers_[il];
    const cuda::Launch& s = launch_;
    const cuda::RowSlots row_slots{rows_d_.slots, (int64_t)n_ctx_ * kv_width_};
    cuda::rmsnorm(xb_, x_, L.attn_norm, n, hp.n_embd, hp.rms_eps, nullptr, s);
    mul_rows(L.wq, xb_, q_, n);
    mul_rows(L.wk, xb_, k_, n);
    mul_rows(L.wv, xb_, v_, n);
    cuda::rope_store_kv(k_, v_, k_cache(il, 0), v_cache(il, 0), n, hp.n_head_kv, rope_, rows_d_.pos, nullptr, s, q_,
                        hp.n_head, nullptr, L.bias, row_slots);
    cuda::attention(q_, k_cache(il, 0), v_cache(il, 0), att_, n, hp.n_head, hp.n_head_kv, hp.head_dim, rows_d_.pos,
                    nullptr, s, nullptr, row_slots);
    mul_rows(L.wo, att_, xb2_, n);
    cuda::add_inplace(x_, xb2_, n * hp.n_embd, nullptr, s);
}

// Layer il's FFN for the plan's rows, then each sidecar's surrogate for its rows; every
// such row's cosine(x after, x before) into rows_d_.cosines[il].
void CudaForward::encode_rows_ffn(int il, const RowsLayerPlan& plan) {
    const HParams& hp = m_.hp;
    const int64_t D = hp.n_embd;
    const CudaLayer& L = layers_[il];
    const cuda::Launch& s = launch_;
    cudaStream_t st = stream_;
    const int32_t* rows_d = rows_d_.ffn_rows + (size_t)il * n_batch_;
    double* cos_d = rows_d_.cosines + (size_t)il * n_batch_;
    const int nr = plan.nr;
    // ---- feed-forward: x' = h + Wdown (silu(Wgate norm(h)) * Wup norm(h)) ----
    if (nr > 0) {
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
    for (size_t g = 0; g < plan.sets.size(); g++) {
        const int first = plan.start[g], count = plan.start[g + 1] - first;
        const cuda::DeviceSurrogate* sur = plan.sets[g]->at(il);
        if (!sur) throw Error("CUDA backend: internal error: a surrogate missing from its uploaded set");
        gather_rows_kernel<<<count, ROW_THREADS, 0, st>>>(xb2_, x_, rows_d + first, D);
        FFNSKIP_CUDA_CHECK(cudaGetLastError());
        cuda::surrogate_forward(*sur, xb2_, L.ffn_norm, hp.rms_eps, count, D, hb_, xb_, nullptr, nullptr, s, false);
        scatter_add_cosine_kernel<<<count, ROW_THREADS, 0, st>>>(x_, xb_, rows_d + first, D, cos_d + first);
        FFNSKIP_CUDA_CHECK(cudaGetLastError());
    }
}

// A step whose every decision is known before it starts (no row's gate looks at a
// cosine): embeddings, all layers as planned, logits.
void CudaForward::encode_rows_planned(int32_t n) {
    const HParams& hp = m_.hp;
    cuda::embed_rows(token_embd_, step_d_.tokens, n, x_, launch_);
    for (int il = 0; il < hp.n_layer; il++) {
        encode_rows_attention(il, n);
        if (row_plans_[il].n_all > 0) encode_rows_ffn(il, row_plans_[il]);
    }
    encode_rows_output(n);
}

// Every row's logits from the final residual.
void CudaForward::encode_rows_output(int32_t n) {
    cuda::rmsnorm(xb_, x_, output_norm_, n, m_.hp.n_embd, m_.hp.rms_eps, nullptr, launch_);
    mul_rows(output_, xb_, logits_, n);
}

// The graph of a planned step: the step's shape (rows, and per layer the FFN's rows and
// each sidecar's) is its key. A shape is captured the second step in a row that has it
// (the first ran eagerly, so every kernel and cuBLAS are loaded), and kept among the
// last few shapes; changing masks (a random policy) keep running eagerly.
void CudaForward::launch_rows_planned(int32_t n) {
    if (!use_rows_graphs_) return encode_rows_planned(n);
    const int n_layer = m_.hp.n_layer;
    std::vector<uintptr_t>& key = rows_key_;
    key.assign(1, (uintptr_t)n);
    for (int il = 0; il < n_layer; il++) {
        const RowsLayerPlan& p = row_plans_[il];
        key.push_back((uintptr_t)p.n_all);
        key.push_back((uintptr_t)p.nr);
        const int32_t* rows = rows_h_.ffn_rows + (size_t)il * n_batch_;
        key.insert(key.end(), rows, rows + p.n_all);
        for (size_t g = 0; g < p.sets.size(); g++) {
            key.push_back(reinterpret_cast<uintptr_t>(p.sets[g]));
            key.push_back((uintptr_t)p.start[g + 1]);
        }
    }
    cudaGraphExec_t exec = nullptr;
    for (size_t i = 0; i < rows_graphs_.size(); i++) {
        if (rows_graphs_[i].key != key) continue;
        exec = rows_graphs_[i].exec;
        std::rotate(rows_graphs_.begin(), rows_graphs_.begin() + i, rows_graphs_.begin() + i + 1);   // most recent first
        break;
    }
    const bool capture = !exec && key == rows_last_key_;
    rows_last_key_ = key;
    if (exec) {
        FFNSKIP_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
        return;
    }
    if (!capture) return encode_rows_planned(n);
    // Nothing captured runs, so a capture that fails (a library call that cannot be
    // captured here) loses nothing: the step runs eagerly, and so do later ones.
    cudaGraph_t graph = nullptr;
    FFNSKIP_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    bool encoded = true;
    try {
        encode_rows_planned(n);
    } catch (const std::exception&) {
        encoded = false;
    }
    cudaError_t err = cudaStreamEndCapture(stream_, &graph);
    if (encoded && err == cudaSuccess && graph) err = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (!encoded || err != cudaSuccess || !exec) {
        cudaGetLastError();
        if (exec) cudaGraphExecDestroy(exec);
        use_rows_graphs_ = false;
        return encode_rows_planned(n);
    }
    constexpr size_t MAX_GRAPHS = 8;
    if (rows_graphs_.size() == MAX_GRAPHS) {
        cudaGraphExecDestroy(rows_graphs_.back().exec);
        rows_graphs_.pop_back();
    }
    rows_graphs_.insert(rows_graphs_.begin(), RowsGraph{key, exec});
    FFNSKIP_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
}

void CudaForward::drop_rows_graphs() {
    for (RowsGraph& g : rows_graphs_) cudaGraphExecDestroy(g.exec);
    rows_graphs_.clear();
    rows_last_key_.clear();
}

const float* CudaForward::forward_rows(const int32_t* tokens, const int32_t* slots, const int32_t* pos, int32_t n,
                                       SkipSchedule* const* skips, RowsStep* step) {
    const HParams& hp = m_.hp;
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
        row_plans_.resize(hp.n_layer);
        use_rows_graphs_ = use_graph_;
    }
    // Each row's surrogate sidecar on the device (uploads happen here, before the step).
    row_surrogates_.assign(n, nullptr);
    for (int t = 0; t < n; t++)
        if (skips && skips[t] && skips[t]->surrogate_set())
            row_surrogates_[t] = batch_surrogates(skips[t]->surrogate_set(), skips, n);
    cudaStream_t st = stream_;

    // The step's tokens, positions and slots (pinned, so the copies run asynchronously;
    // slots follow positions in the block: one copy).
    std::copy(tokens, tokens + n, step_h_.tokens);
    std::copy(pos, pos + n, rows_h_.pos);
    std::copy(slots, slots + n, rows_h_.slots);
    FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(step_d_.tokens, step_h_.tokens, n * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    const size_t pos_and_slots = reinterpret_cast<uint8_t*>(rows_h_.slots + n) - reinterpret_cast<uint8_t*>(rows_h_.pos);
    FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(rows_d_.pos, rows_h_.pos, pos_and_slots, cudaMemcpyHostToDevice, st));

    // Does any row's gate look at a cosine in this step? If not, every decision is known
    // now (the schedules' answers change only through the cosines they are given), so
    // the whole step is planned first and launched at once, as a graph where it repeats.
    bool gate_looks = false;
    for (int t = 0; t < n && !gate_looks; t++)
        for (int il = 0; il < hp.n_layer && !gate_looks; il++) gate_looks = skips && skips[t] && skips[t]->wants_cosine(il);
    if (!gate_looks) {
        for (int il = 0; il < hp.n_layer; il++) plan_rows_layer(il, skips, n, step, row_plans_[il]);
        FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(rows_d_.ffn_rows, rows_h_.ffn_rows, (size_t)hp.n_layer * n_batch_ * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, st));
        launch_rows_planned(n);
    } else {
        cuda::embed_rows(token_embd_, step_d_.tokens, n, x_, launch_);
        for (int il = 0; il < hp.n_layer; il++) {
            encode_rows_attention(il, n);
            RowsLayerPlan& plan = row_plans_[il];
            plan_rows_layer(il, skips, n, step, plan);
            if (plan.n_all == 0) continue;   // no row needs this FFN or a surrogate: no weights are read
            const size_t at = (size_t)il * n_batch_;
            FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(rows_d_.ffn_rows + at, rows_h_.ffn_rows + at, plan.n_all * sizeof(int32_t),
                                               cudaMemcpyHostToDevice, st));
            encode_rows_ffn(il, plan);
            if (plan.want_cosines) {
                // The gate's next decisions depend on these: wait for them.
                FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(rows_h_.cosines + at, rows_d_.cosines + at, plan.n_all * sizeof(double),
                                                   cudaMemcpyDeviceToHost, st));
                FFNSKIP_CUDA_CHECK(cudaStreamSynchronize(st));
                for (int k = 0; k < plan.n_all; k++) {
                    SkipSchedule* sk = skips[rows_h_.ffn_rows[at + k]];
                    if (sk && sk->wants_cosine(il)) sk->after_ffn(il, rows_h_.cosines[at + k]);
                }
            }
        }
        encode_rows_output(n);
    }

    // ---- logits of every row ----
    FFNSKIP_CUDA_CHECK(cudaMemcpyAsync(logits_host_, logits_, (size_t)n * hp.n_vocab * sizeof(float),
                                       cudaMemcpyDeviceToHost, st));
    FFNSKIP_CUDA_CHECK(cudaStreamSynchronize(st));
    return logits_host_;
}

}  // namespace ffnskip
