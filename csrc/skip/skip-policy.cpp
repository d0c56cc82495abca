#include "skip/skip-policy.h"

#include "skip/surrogate.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace ffnskip {

const char* skip_policy_name(SkipPolicy policy) {
    switch (policy) {
        case SkipPolicy::full: return "full";
        case SkipPolicy::ffn_skip: return "ffn_skip";
        case SkipPolicy::random: return "random";
        case SkipPolicy::static_window: return "static";
        case SkipPolicy::layers: return "layers";
        case SkipPolicy::shortgpt: return "shortgpt";
        case SkipPolicy::skipdecode: return "skipdecode";
    }
    return "unknown";
}

SkipPolicy skip_policy_from_name(const std::string& name) {
    for (SkipPolicy p : {SkipPolicy::full, SkipPolicy::ffn_skip, SkipPolicy::random, SkipPolicy::static_window,
                         SkipPolicy::layers, SkipPolicy::shortgpt, SkipPolicy::skipdecode})
        if (name == skip_policy_name(p)) return p;
    if (name == "none" || name == "off") return SkipPolicy::full;
    throw std::invalid_argument("unknown skip policy '" + name +
                                "' (full, ffn_skip, random, static, layers, shortgpt, skipdecode)");
}

namespace {
[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("invalid skip config: " + what); }
}  // namespace

SkipSchedule::SkipSchedule(const SkipConfig& config, int32_t n_layer, int32_t n_ctx)
    : cfg_(config), n_layer_(n_layer), rng_(config.seed) {
    const SkipConfig& c = cfg_;
    if (!(c.threshold >= -1.0f && c.threshold <= 1.0f)) bad("threshold must be in [-1, 1], got " + std::to_string(c.threshold));
    if (c.cold_start < 0 || c.cold_end < 0) bad("cold_start and cold_end must be >= 0");
    const bool uses_cold = c.policy == SkipPolicy::ffn_skip || c.policy == SkipPolicy::static_window ||
                           c.policy == SkipPolicy::skipdecode;
    if (uses_cold && c.cold_start + c.cold_end > n_layer)
        bad("cold_start + cold_end = " + std::to_string(c.cold_start + c.cold_end) + " exceeds the " +
            std::to_string(n_layer) + " layers");
    if (c.warmup < -1) bad("warmup must be >= 0 (or -1 = n_ctx / 64)");
    if (c.refresh_every < 0 || c.refresh_every == 1) bad("refresh_every must be 0 (never) or >= 2, got " + std::to_string(c.refresh_every));
    if (c.max_skip < -1) bad("max_skip must be >= 0 (or -1 = from target_ratio)");
    if (!(c.target_ratio >= 0.0f && c.target_ratio <= 1.0f)) bad("target_ratio must be in [0, 1], got " + std::to_string(c.target_ratio));
    if (c.skipdecode_span < 1) bad("skipdecode_span must be >= 1");
    for (int32_t l : c.layers)
        if (l < 0 || l >= n_layer) bad("layer " + std::to_string(l) + " is out of range [0, " + std::to_string(n_layer) + ")");
    if ((c.policy == SkipPolicy::layers || c.policy == SkipPolicy::shortgpt) && c.layers.empty())
        bad(std::string("policy ") + skip_policy_name(c.policy) + " needs a list of layers");

    warmup_ = c.warmup >= 0 ? c.warmup : n_ctx / 64;
    // Share of post-warm-up steps that may skip: refresh steps run in full.
    const double skipping_share = c.refresh_every > 0 ? (double)(c.refresh_every - 1) / c.refresh_every : 1.0;
    const int32_t non_cold = std::max(0, n_layer - c.cold_start - c.cold_end);
    max_skip_ = c.max_skip >= 0 ? c.max_skip : (int32_t)std::lround(c.target_ratio * n_layer / skipping_share);
    max_skip_ = std::min(max_skip_, non_cold);
    drop_probability_ = std::min(1.0, c.target_ratio / skipping_share);
    gate_first_ = std::max(0, c.cold_start - 1);
    gate_last_ = n_layer - c.cold_end - 2;

    removed_layer_.assign(n_layer, 0);
    removed_ffn_.assign(n_layer, 0);
    if (c.policy == SkipPolicy::shortgpt)
        for (int32_t l : c.layers) removed_layer_[l] = 1;
    if (c.policy == SkipPolicy::layers)
        for (int32_t l : c.layers) removed_ffn_[l] = 1;
    gate_restricted_ = c.policy == SkipPolicy::ffn_skip && !c.layers.empty();
    gate_allowed_.assign(n_layer, gate_restricted_ ? 0 : 1);
    if (gate_restricted_)
        for (int32_t l : c.layers) gate_allowed_[l] = 1;

    ffn_skip_.assign(n_layer, 0);
    layer_skip_.assign(n_layer, 0);
    cosines_.assign(n_layer, NAN);
    exit_layer_ = n_layer;
    stats_.n_layer = n_layer;
    stats_.skipped_per_layer.assign(n_layer, 0);
}

bool SkipSchedule::step_may_skip(int32_t g) const {
    if (g < warmup_) return false;
    // Refresh: every refresh_every-th step after the warm-up runs the full model.
    if (cfg_.refresh_every > 0 && (g - warmup_ + 1) % cfg_.refresh_every == 0) return false;
    return true;
}

void SkipSchedule::begin_step(int32_t g) {
    step_ = g;
    budget_spent_ = false;
    exit_layer_ = n_layer_;
    std::copy(removed_ffn_.begin(), removed_ffn_.end(), ffn_skip_.begin());
    std::copy(removed_layer_.begin(), removed_layer_.end(), layer_skip_.begin());
    std::fill(cosines_.begin(), cosines_.end(), NAN);
    may_skip_ = step_may_skip(g);
    if (!may_skip_) return;

    switch (cfg_.policy) {
        case SkipPolicy::random: {
            std::uniform_real_distribution<double> uni(0.0, 1.0);
            for (int l = 0; l < n_layer_; l++) ffn_skip_[l] = uni(rng_) < drop_probability_;
            break;
        }
        case SkipPolicy::static_window: {
            const int lo = cfg_.cold_start, hi = n_layer_ - cfg_.cold_end - max_skip_;   // window start range
            if (max_skip_ > 0 && hi >= lo) {
                std::uniform_int_distribution<int> pick(lo, hi);
                const int start = pick(rng_);
                for (int l = start; l < start + max_skip_; l++) ffn_skip_[l] = 1;
            }
            break;
        }
        case SkipPolicy::skipdecode: {
            // The number of top layers left out grows linearly from 0 to twice the
            // target over skipdecode_span steps (mean = target over the span), then stays.
            const double progress = std::min(1.0, (double)(g - warmup_ + 1) / cfg_.skipdecode_span);
            int32_t n_skip = (int32_t)std::lround(progress * 2.0 * cfg_.target_ratio * n_layer_);
            n_skip = std::min(n_skip, n_layer_ - std::max(1, cfg_.cold_start));
            exit_layer_ = n_layer_ - n_skip;
            for (int l = exit_layer_; l < n_layer_; l++) layer_skip_[l] = 1;
            break;
        }
        default: break;
    }
}

bool SkipSchedule::wants_cosine(int il) const {
    if (cfg_.record_cosines) return true;
    return cfg_.policy == SkipPolicy::ffn_skip && may_skip_ && !budget_spent_ && il >= gate_first_ && il <= gate_last_;
}

void SkipSchedule::after_ffn(int il, double cosine) {
    cosines_[il] = (float)cosine;
    if (cfg_.policy != SkipPolicy::ffn_skip || !may_skip_ || budget_spent_) return;
    if (il < gate_first_ || il > gate_last_) return;
    if (cosine >= cfg_.threshold) {
        // The next max_skip FFNs the gate may leave out (all, unless a layer list
        // narrows them), cut at the cold end.
        const int stop = n_layer_ - cfg_.cold_end - 1;
        for (int l = il + 1, left = max_skip_; l <= stop && left > 0; l++) {
            if (!gate_allowed_[l]) continue;
            ffn_skip_[l] = 1;
            left--;
        }
        budget_spent_ = true;
    }
}

SkipSchedule::StepPlan SkipSchedule::step_plan() const {
    StepPlan p;
    p.gate_live = cfg_.policy == SkipPolicy::ffn_skip && may_skip_ && !budget_spent_;
    p.gate_first = gate_first_;
    p.gate_last = gate_last_;
    p.gate_stop = n_layer_ - cfg_.cold_end - 1;
    p.threshold = cfg_.threshold;
    p.max_skip = max_skip_;
    p.exit_layer = exit_layer_;
    p.ffn_skip = ffn_skip_.data();
    p.layer_skip = layer_skip_.data();
    p.gate_allowed = gate_restricted_ ? gate_allowed_.data() : nullptr;
    return p;
}

void SkipSchedule::set_step_outcome(const uint8_t* ffn_skipped, const float* cosines) {
    bool any_gate_skip = false;
    for (int l = 0; l < n_layer_; l++) {
        if (ffn_skipped[l] && !ffn_skip_[l] && !layer_skip_[l]) any_gate_skip = true;
        ffn_skip_[l] = ffn_skipped[l] ? 1 : 0;
        cosines_[l] = cosines[l];
    }
    if (any_gate_skip) budget_spent_ = true;
}

bool SkipSchedule::step_skipped_anything() const {
    for (int l = 0; l < n_layer_; l++)
        if (ffn_skip_[l] || layer_skip_[l]) return true;
    return false;
}

void SkipSchedule::set_surrogates(std::shared_ptr<const SurrogateSet> set) {
    if (set && (int32_t)set->layers.size() != n_layer_)
        throw std::invalid_argument("surrogates for " + std::to_string(set->layers.size()) + " layers, the model has " +
                                    std::to_string(n_layer_));
    surrogates_ = std::move(set);
}

const FfnSurrogate* SkipSchedule::surrogate(int il) const {
    return surrogates_ ? surrogates_->at(il) : nullptr;
}

void SkipSchedule::end_step() {
    SkipStats& s = stats_;
    int32_t skipped = 0, layers = 0;
    for (int l = 0; l < n_layer_; l++) {
        const bool ffn_out = ffn_skip_[l] || layer_skip_[l];
        skipped += ffn_out;
        layers += layer_skip_[l];
        s.surrogates_run += ffn_skip_[l] && !layer_skip_[l] && surrogate(l);
        s.skipped_per_layer[l] += ffn_out;
        if (cfg_.record_masks) s.masks.push_back(ffn_out);
    }
    if (cfg_.record_cosines) s.cosines.insert(s.cosines.end(), cosines_.begin(), cosines_.end());
    s.n_steps++;
    s.ffn_total += n_layer_;
    s.ffn_skipped += skipped;
    s.layers_skipped += layers;
    if (step_ >= warmup_) {
        s.n_steps_after_warmup++;
        s.ffn_total_after_warmup += n_layer_;
        s.ffn_skipped_after_warmup += skipped;
    }
}

}  // namespace ffnskip
