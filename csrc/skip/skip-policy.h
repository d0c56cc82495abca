// The skip policies: which FFN blocks (or whole layers) each decode step leaves out.
// One SkipSchedule lives for one generation; every backend asks it the same
// questions in the same order, so skip masks are equal across backends.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include <ffnskip/ffnskip.h>

namespace ffnskip {

struct FfnSurrogate;
struct SurrogateSet;

class SkipSchedule {
  public:
    // Validates `config` against the model (throws std::invalid_argument).
    SkipSchedule(const SkipConfig& config, int32_t n_layer, int32_t n_ctx);

    const SkipConfig& config() const { return cfg_; }
    bool is_full() const { return cfg_.policy == SkipPolicy::full; }
    int32_t warmup() const { return warmup_; }
    int32_t max_skip() const { return max_skip_; }

    // ---- prompt processing (batched): only position-independent removals apply ----
    bool prompt_layer_runs(int il) const { return !removed_layer_[il]; }
    bool prompt_ffn_runs(int il) const { return !removed_ffn_[il] && !removed_layer_[il]; }
    bool prunes_prompt() const { return cfg_.policy == SkipPolicy::layers || cfg_.policy == SkipPolicy::shortgpt; }

    // ---- one decode step: begin_step, then per layer the questions below, then end_step ----
    // g: the index of the generated token this step feeds (0 = the first one).
    void begin_step(int32_t g);
    // Whole layer runs? (false: shortgpt removal, or above the skipdecode exit)
    bool layer_runs(int il) const { return !layer_skip_[il]; }
    // Layers >= exit_layer() are skipped as a block whose keys and values must be
    // filled from the exit state (skipdecode); n_layer when nothing exits early.
    int32_t exit_layer() const { return exit_layer_; }
    // The FFN of layer il runs? Asked right before it (the gate may have closed it).
    bool ffn_runs(int il) const { return !ffn_skip_[il]; }
    // An outside decision for layer il's FFN in this step (a batch's vote), asked before
    // it runs: replaces the schedule's own for what runs, the stats and the surrogate.
    // It does not spend or close the gate (the gate only looks after FFNs that ran, or
    // their surrogates).
    void set_ffn_skipped(int il, bool skipped) { ffn_skip_[il] = skipped; }
    // The cosine after layer il's FFN is needed (the gate looks, or it is recorded).
    bool wants_cosine(int il) const;
    // The gate: called after layer il's FFN with cos(residual after, residual before).
    void after_ffn(int il, double cosine);
    bool step_skipped_anything() const;   // before end_step
    void end_step();

    // ---- the same step decided on a device (a GPU backend runs the gate itself) ----
    // After begin_step: everything the step's rules need, so a device can apply them
    // without asking per layer. The gate (ffn_skip only) looks after the FFN of layers
    // gate_first..gate_last; when cos >= threshold after layer il it leaves out the FFNs
    // of il+1 .. min(il + max_skip, gate_stop) and closes for the rest of the step.
    // With gate_allowed (a layer list for ffn_skip) it leaves out the next max_skip
    // allowed FFNs after il up to gate_stop instead.
    struct StepPlan {
        bool gate_live = false;           // ffn_skip policy and this step may skip
        int32_t gate_first = 0, gate_last = -1, gate_stop = -1;
        float threshold = 1.0f;
        int32_t max_skip = 0;
        int32_t exit_layer = 0;           // as exit_layer()
        const uint8_t* ffn_skip = nullptr;    // (n_layer) FFNs left out before the gate looks
        const uint8_t* layer_skip = nullptr;  // (n_layer) whole layers left out
        const uint8_t* gate_allowed = nullptr;  // (n_layer) FFNs the gate may leave out; null = all
    };
    StepPlan step_plan() const;
    // The step's outcome from the device, before end_step: the FFNs left out (1 = skipped,
    // whole-layer skips may be included) and the cosines measured (NaN = not measured).
    void set_step_outcome(const uint8_t* ffn_skipped, const float* cosines);

    // ---- surrogates: a left-out FFN that has one runs it instead of nothing ----
    void set_surrogates(std::shared_ptr<const SurrogateSet> set);
    // The stand-in for layer il's left-out FFN, or null (plain skip: x' = h).
    const FfnSurrogate* surrogate(int il) const;
    // The set itself (null = none), for a backend that uploads it.
    const std::shared_ptr<const SurrogateSet>& surrogate_set() const { return surrogates_; }

    const SkipStats& stats() const { return stats_; }

  private:
    bool step_may_skip(int32_t g) const;

    SkipConfig cfg_;
    int32_t n_layer_;
    int32_t warmup_;
    int32_t max_skip_;
    int32_t gate_first_, gate_last_;      // layers after which the gate looks
    std::vector<uint8_t> gate_allowed_;   // (n_layer) FFNs the gate may leave out (ffn_skip)
    bool gate_restricted_ = false;        // a layer list narrowed gate_allowed_
    double drop_probability_ = 0;         // random policy
    std::vector<uint8_t> removed_layer_;  // (n_layer) shortgpt: for every token
    std::vector<uint8_t> removed_ffn_;    // (n_layer) layers policy: for every token
    std::mt19937_64 rng_;
    std::shared_ptr<const SurrogateSet> surrogates_;

    // The current step.
    int32_t step_ = -1;
    bool may_skip_ = false;
    bool budget_spent_ = false;
    int32_t exit_layer_;
    std::vector<uint8_t> ffn_skip_;       // (n_layer) FFN left out this step
    std::vector<uint8_t> layer_skip_;     // (n_layer) whole layer left out this step
    std::vector<float> cosines_;          // (n_layer) this step's cosines, NaN = not measured

    SkipStats stats_;
};

}  // namespace ffnskip
