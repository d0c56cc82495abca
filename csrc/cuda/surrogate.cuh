// FFN surrogates on the device: the low-rank stand-in that a left-out FFN runs instead
// of nothing (skip/surrogate.h), x' = h + bias + down (up ffn_norm(h)).
//
// Two launches per layer that has a surrogate: up (with the FFN's RMSNorm folded in:
// every block normalizes the row itself, so the FFN's own norm, which a left-out FFN
// does not run, is not needed) into a rank-wide scratch row, then down plus the bias
// into the FFN's output row, which the gate kernel (skip-gate.cuh) adds to the residual
// and measures its cosine on, as after an FFN that ran. In a decode step both kernels
// read the layer's FFN skip word and the step's surrogate word and return at once
// unless the FFN was left out and its surrogate is on, so one captured graph serves
// every step.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/launch.cuh"
#include "quant/quant.h"

namespace ffnskip {

struct SurrogateSet;

namespace cuda {

// One layer's surrogate in device memory (weights as in the sidecar, F16 or F32).
struct DeviceSurrogate {
    int32_t rank = 0;                  // 0: the bias alone
    GgmlType up_type = GgmlType::F32;
    GgmlType down_type = GgmlType::F32;
    const void* up = nullptr;          // (rank, n_embd) rows: t = up u
    const void* down = nullptr;        // (n_embd, rank) rows: f = down t + bias
    const float* bias = nullptr;       // (n_embd)
};

// A surrogate set uploaded once (one allocation), per layer; freed with the object.
class DeviceSurrogates {
  public:
    // Uploads every layer's surrogate of `set` (synchronously). Throws ffnskip::Error
    // when the device memory does not suffice.
    DeviceSurrogates(std::shared_ptr<const SurrogateSet> set, int64_t n_embd);
    ~DeviceSurrogates();
    DeviceSurrogates(const DeviceSurrogates&) = delete;
    DeviceSurrogates& operator=(const DeviceSurrogates&) = delete;

    const SurrogateSet* host() const { return set_.get(); }
    // Layer il's surrogate, or null when the set has none for it.
    const DeviceSurrogate* at(int il) const;
    size_t bytes() const { return bytes_; }

  private:
    std::shared_ptr<const SurrogateSet> set_;   // kept: its identity says what is uploaded
    std::vector<DeviceSurrogate> layers_;       // (n_layer)
    std::vector<uint8_t> present_;              // (n_layer)
    void* mem_ = nullptr;
    size_t bytes_ = 0;
};

// For n rows of x (n_embd wide): out = bias + down (up (rmsnorm(x) * norm_w)), with
// t (n, rank) as scratch. ffn_skip / sur_on (decode steps, device words; null = run):
// both kernels return at once unless *ffn_skip != 0 and *sur_on != 0. first_pdl: the
// first kernel may use programmatic launch (false after a conditional node).
void surrogate_forward(const DeviceSurrogate& s, const float* x, const float* norm_w, float eps, int n,
                       int64_t n_embd, float* t, float* out, const int32_t* ffn_skip, const int32_t* sur_on,
                       const Launch& l, bool first_pdl);

}  // namespace cuda
}  // namespace ffnskip
