// Low-rank FFN surrogates: a cheap stand-in that runs in place of a skipped FFN,
// x' = h + bias + down (up ffn_norm(h)). Fitted by calibration (python/ffnskip/
// surrogate.py) and stored in a small GGUF sidecar:
//   blk.N.ffn_sur_bias  F32 (n_embd)
//   blk.N.ffn_sur_up    F16/F32 (n_embd -> rank)      absent for rank 0 (bias only)
//   blk.N.ffn_sur_down  F16/F32 (rank -> n_embd)
// with ffnskip.surrogate.{version, n_embd, n_layer, layers} in the metadata.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ffnskip/ffnskip.h>

#include "gguf/gguf.h"
#include "model/model.h"

namespace ffnskip {

struct FfnSurrogate {
    int32_t rank = 0;              // 0: the bias alone (the FFN's mean output)
    std::vector<float> bias;       // (n_embd)
    WeightMatrix up;               // (n_embd -> rank)
    WeightMatrix down;             // (rank -> n_embd)
};

struct SurrogateSet {
    std::string path;
    std::unique_ptr<GgufFile> file;            // owns the mapping the matrices point into
    std::vector<std::unique_ptr<FfnSurrogate>> layers;   // (n_layer) null = no surrogate
    int32_t max_rank = 0;
    const FfnSurrogate* at(int il) const { return layers[(size_t)il].get(); }
};

// Loads and checks a sidecar against the model: throws FileNotFoundError, or
// FormatError naming the tensor or key that does not fit.
std::shared_ptr<const SurrogateSet> load_surrogates(const std::string& path, const HParams& hp);

}  // namespace ffnskip
