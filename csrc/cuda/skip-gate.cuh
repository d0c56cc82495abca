// The FFN-Skip gate on the device, fused with the FFN's residual add.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {

// The gate's rules for one step (SkipSchedule::StepPlan), in device memory.
struct GateRules {
    int32_t live;          // 1: the gate may open this step
    int32_t first, last;   // it looks after the FFNs of layers first .. last
    int32_t stop;          // a window never reaches past this layer
    int32_t max_skip;      // FFNs left out once it opens
    float threshold;       // opens when cos(x after, x before) >= threshold
    int32_t spent;         // set by the gate when it opened (once per step)
};

// For layer `layer`, unless ffn_skip[layer] != 0 and no surrogate ran in the FFN's place
// (sur_on null or sur_on[layer] == 0: then nothing happens):
//   x += f, cosines[layer] = cos(x after, x before) (double sums, as the CPU), and,
//   when the rules allow and the cosine reaches the threshold, ffn_skip = 1 for the next
//   max_skip layers l after `layer` with gate_allowed[l] != 0, none past `stop`, and
//   rules->spent = 1.
// Later kernels of those FFNs read their ffn_skip words and return at once.
// With next_norm given, also (whether or not the FFN ran) out = rmsnorm(x) * next_norm,
// the input of the next layer's attention (or of the output matrix): one launch less.
// With next_ffn_runs given (a condition of the graph, see graph-if.cuh), it is set to
// ffn_skip[layer + 1] == 0 once the gate has decided.
void residual_add_gate(float* x, const float* f, int64_t n, int layer, int32_t* ffn_skip,
                       const int32_t* gate_allowed, float* cosines, GateRules* rules, const Launch& l,
                       const float* next_norm = nullptr, float* out = nullptr, float eps = 0.0f,
                       cudaGraphConditionalHandle next_ffn_runs = 0, const int32_t* sur_on = nullptr);

}  // namespace cuda
}  // namespace ffnskip
