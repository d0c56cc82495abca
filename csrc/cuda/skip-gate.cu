#include "cuda/skip-gate.cuh"

#include "cuda/cuda-common.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

namespace {

constexpr int GATE_THREADS = 1024;

// The kernel's work for one block (see skip-gate.cuh); thread 0 decides.
__device__ void add_and_decide(float* x, const float* f, int64_t n, int layer, bool ffn_ran, int32_t* ffn_skip,
                               const int32_t* gate_allowed, float* cosines, GateRules* rules, const float* next_norm,
                               float* out, float eps) {
    __shared__ double scratch[32];
    double ab = 0.0, aa = 0.0, bb = 0.0;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float before = x[i];
        const float after = ffn_ran ? before + f[i] : before;
        if (ffn_ran) x[i] = after;
        ab += (double)after * before;
        aa += (double)after * after;
        bb += (double)before * before;
    }
    aa = block_sum(aa, scratch);
    if (next_norm) {
        // As rmsnorm_kernel (norm.cu): each thread reads back the elements it wrote.
        const float scale = 1.0f / sqrtf((float)(aa / (double)n) + eps);
#pragma unroll 4
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = (x[i] * scale) * next_norm[i];
    }
    if (!ffn_ran) return;
    ab = block_sum(ab, scratch);
    bb = block_sum(bb, scratch);
    if (threadIdx.x != 0) return;
    const double c = (aa == 0.0 || bb == 0.0) ? 0.0 : ab / sqrt(aa * bb);
    cosines[layer] = (float)c;
    if (!rules->live || rules->spent || layer < rules->first || layer > rules->last) return;
    if (c >= (double)rules->threshold) {
        // the next max_skip FFNs the gate may leave out, cut at `stop`
        for (int l = layer + 1, left = rules->max_skip; l <= rules->stop && left > 0; l++) {
            if (!gate_allowed[l]) continue;
            ffn_skip[l] = 1;
            left--;
        }
        rules->spent = 1;
    }
}

// One block: the residual is one token wide (n_embd elements).
__global__ void residual_add_gate_kernel(float* x, const float* f, int64_t n, int layer, int32_t* ffn_skip,
                                         const int32_t* gate_allowed, float* cosines, GateRules* rules,
                                         const float* next_norm, float* out, float eps,
                                         cudaGraphConditionalHandle next_ffn_runs, const int32_t* sur_on) {
    wait_for_inputs();
    // f holds the FFN's output, or its surrogate's when the FFN was left out.
    const bool ffn_ran = ffn_skip[layer] == 0 || (sur_on != nullptr && sur_on[layer] != 0);
    if (ffn_ran || next_norm) add_and_decide(x, f, n, layer, ffn_ran, ffn_skip, gate_allowed, cosines, rules,
                                             next_norm, out, eps);
    // After the decision: whether the next layer's FFN (an IF node's body) runs.
    if (next_ffn_runs && threadIdx.x == 0) cudaGraphSetConditional(next_ffn_runs, ffn_skip[layer + 1] == 0);
}

}  // namespace

void residual_add_gate(float* x, const float* f, int64_t n, int layer, int32_t* ffn_skip,
                       const int32_t* gate_allowed, float* cosines, GateRules* rules, const Launch& l,
                       const float* next_norm, float* out, float eps, cudaGraphConditionalHandle next_ffn_runs,
                       const int32_t* sur_on) {
    launch(l, residual_add_gate_kernel, 1, GATE_THREADS, 0, x, f, n, layer, ffn_skip, gate_allowed, cosines, rules,
           next_norm, out, eps, next_ffn_runs, sur_on);
}

}  // namespace cuda
}  // namespace ffnskip
