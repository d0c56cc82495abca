// Internals that BatchSession shares with BatchGenerator.
#pragma once

#include <string>

#include <ffnskip/ffnskip.h>

namespace ffnskip {

// Throws std::invalid_argument for a skip policy batches cannot run (the whole-layer
// policies shortgpt and skipdecode: a row cannot leave a layer out while others run it).
void check_batch_skip(const SkipConfig& skip);
// Throws std::invalid_argument unless `alignment` is "none" or "vote" (BatchParams).
void check_skip_alignment(const std::string& alignment);

}  // namespace ffnskip
