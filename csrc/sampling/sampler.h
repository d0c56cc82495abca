// Token sampling: penalties, then top-k, top-p, min-p, temperature and a seeded
// draw (llama.cpp's default chain order). Temperature 0 is greedy.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include <ffnskip/ffnskip.h>

namespace ffnskip {

// Throws std::invalid_argument naming the bad field.
void validate_sampling_params(const SamplingParams& p);

class Sampler {
  public:
    Sampler(const SamplingParams& params, int32_t n_vocab);
    // `history`: tokens seen so far (prompt and generated), for the penalties.
    int32_t sample(const float* logits, const std::vector<int32_t>& history);

  private:
    struct Candidate {
        int32_t id;
        float logit;
        float p;
    };
    SamplingParams p_;
    int32_t n_vocab_;
    std::mt19937_64 rng_;
    std::vector<Candidate> cand_;
    std::vector<float> penalised_;
};

}  // namespace ffnskip
