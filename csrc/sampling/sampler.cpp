#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <unordered_map>

namespace ffnskip {

void validate_sampling_params(const SamplingParams& p) {
    auto bad = [](const std::string& what) { throw std::invalid_argument("invalid sampling parameter: " + what); };
    if (!std::isfinite(p.temperature) || p.temperature < 0) bad("temperature must be >= 0, got " + std::to_string(p.temperature));
    if (p.top_k < 0) bad("top_k must be >= 0, got " + std::to_string(p.top_k));
    if (!(p.top_p > 0 && p.top_p <= 1)) bad("top_p must be in (0, 1], got " + std::to_string(p.top_p));
    if (!(p.min_p >= 0 && p.min_p <= 1)) bad("min_p must be in [0, 1], got " + std::to_string(p.min_p));
    if (!std::isfinite(p.repeat_penalty) || p.repeat_penalty <= 0) bad("repeat_penalty must be > 0, got " + std::to_string(p.repeat_penalty));
    if (p.repeat_last_n < -1) bad("repeat_last_n must be >= -1 (-1 = whole context), got " + std::to_string(p.repeat_last_n));
    if (!std::isfinite(p.frequency_penalty)) bad("frequency_penalty must be finite");
    if (!std::isfinite(p.presence_penalty)) bad("presence_penalty must be finite");
    if (p.seed < -1) bad("seed must be >= 0 or -1 (random), got " + std::to_string(p.seed));
}

Sampler::Sampler(const SamplingParams& params, int32_t n_vocab) : p_(params), n_vocab_(n_vocab) {
    validate_sampling_params(params);
    uint64_t seed = params.seed >= 0 ? (uint64_t)params.seed : std::random_device{}();
    rng_.seed(seed);
    cand_.reserve(n_vocab);
}

int32_t Sampler::sample(const float* logits, const std::vector<int32_t>& history) {
    const float* l = logits;
    // Penalties on the recent window: divide positive logits (multiply negative ones)
    // by repeat_penalty, then subtract frequency * count + presence.
    const bool penalise = p_.repeat_penalty != 1.0f || p_.frequency_penalty != 0.0f || p_.presence_penalty != 0.0f;
    if (penalise && !history.empty() && p_.repeat_last_n != 0) {
        penalised_.assign(logits, logits + n_vocab_);
        size_t window = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), (size_t)p_.repeat_last_n);
        std::unordered_map<int32_t, int> counts;
        for (size_t i = history.size() - window; i < history.size(); i++) counts[history[i]]++;
        for (const auto& kv : counts) {
            if (kv.first < 0 || kv.first >= n_vocab_) continue;
            float& v = penalised_[kv.first];
            v = v > 0 ? v / p_.repeat_penalty : v * p_.repeat_penalty;
            v -= kv.second * p_.frequency_penalty + p_.presence_penalty;
        }
        l = penalised_.data();
    }

    if (p_.temperature <= 0.0f) {
        int32_t best = 0;
        for (int32_t i = 1; i < n_vocab_; i++)
            if (l[i] > l[best]) best = i;
        return best;
    }

    cand_.resize(n_vocab_);
    for (int32_t i = 0; i < n_vocab_; i++) cand_[i] = {i, l[i], 0.0f};
    auto by_logit = [](const Candidate& a, const Candidate& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
    size_t n = cand_.size();
    if (p_.top_k > 0 && (size_t)p_.top_k < n) {
        std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
        n = (size_t)p_.top_k;
    } else {
        std::sort(cand_.begin(), cand_.end(), by_logit);
    }
    auto softmax = [&](size_t count, float temperature) {
        const float mx = cand_[0].logit;
        double sum = 0;
        for (size_t i = 0; i < count; i++) {
            cand_[i].p = std::exp((cand_[i].logit - mx) / temperature);
            sum += cand_[i].p;
        }
        for (size_t i = 0; i < count; i++) cand_[i].p = (float)(cand_[i].p / sum);
    };
    if (p_.top_p < 1.0f) {
        softmax(n, 1.0f);
        double cum = 0;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            cum += cand_[i].p;
            if (cum >= p_.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p_.min_p > 0.0f) {
        // p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
        const float cut = cand_[0].logit + std::log(p_.min_p);
        size_t keep = 1;
        while (keep < n && cand_[keep].logit >= cut) keep++;
        n = keep;
    }
    softmax(n, p_.temperature);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    double r = uni(rng_), cum = 0;
    for (size_t i = 0; i < n; i++) {
        cum += cand_[i].p;
        if (r < cum) return cand_[i].id;
    }
    return cand_[n - 1].id;
}

}  // namespace ffnskip
