// Internals that BatchSession shares with BatchGenerator.
#pragma once

#include <ffnskip/ffnskip.h>

namespace ffnskip {

// Throws std::invalid_argument for a skip policy batches cannot run (whole-layer
// policies, FFN surrogates).
void check_batch_skip(const SkipConfig& skip);

}  // namespace ffnskip
