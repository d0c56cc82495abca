// A compute backend runs the forward pass for a Session: it owns the KV cache and
// activation buffers on its device. The CPU backend is always there; others are
// created by name when they were compiled in and a device is usable.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "skip/skip-policy.h"

namespace ffnskip {

struct BackendParams {
    int32_t n_ctx = 0;
    int32_t n_batch = 0;
    int32_t n_threads = 1;        // CPU threads for decode
    int32_t n_threads_batch = 1;  // CPU threads for prompt batches
    int32_t n_slots = 1;          // KV cache regions of n_ctx rows (sequences decoded together)
};

// One batched decode step's options and what it read (Backend::forward_rows).
struct RowsStep {
    bool vote = false;                  // in: per layer the majority of the rows' FFN decisions applies to
                                        //     all rows (a tie runs the FFN); each schedule is told the outcome
    uint64_t ffn_bytes_read = 0;        // out: FFN weight bytes (gate, up, down) the step read
    uint64_t surrogate_bytes_read = 0;  // out: surrogate weight bytes the step read (each group once)
};

class Backend {
  public:
    virtual ~Backend() = default;
    virtual const char* name() const = 0;
    virtual int32_t n_batch() const = 0;
    // Evaluates n tokens (1 <= n <= n_batch) at positions pos .. pos+n-1, writing their
    // keys and values into the cache; returns host logits of the last token, or of all
    // n tokens (row-major) when all_logits, valid until the next call.
    // `skip` may be null (full model). For a decode step (n == 1, decode_step) the
    // caller has called skip->begin_step and calls skip->end_step afterwards; the
    // backend asks the schedule (or runs the same rules on its device and reports the
    // outcome to it) which blocks to leave out. For prompt batches only the policy's
    // position-independent removals apply.
    virtual const float* forward(const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                                 SkipSchedule* skip, bool decode_step) = 0;
    // Calibration: while set, forward records each layer's FFN input and output into
    // `trace` at the rows of their positions (null stops). Backends that cannot say so.
    virtual void set_ffn_trace(Session::FfnTrace* trace) {
        if (trace) throw Error(std::string("the ") + name() + " backend cannot record FFN traces; use backend='cpu'");
    }
    // Whether left-out FFNs can run surrogates on this backend (forward), and in batches
    // (forward_rows).
    virtual bool runs_surrogates() const { return false; }
    virtual bool runs_surrogates_in_batches() const { return false; }

    // Batched decoding over the cache's BackendParams::n_slots sequence slots.
    // forward_slot evaluates n tokens of one slot at positions pos .. pos+n-1 (a prompt
    // chunk); forward_rows decodes n tokens of n different slots together, row t at
    // position pos[t] of slot slots[t], and returns the n rows' logits (n, n_vocab).
    // skips[t] (may be null = full model): the sequence's schedule; the caller has called
    // begin_step on each and calls end_step after. Only FFN skips apply per row; an FFN's
    // product runs for the rows that need it, and not at all when none does. `step` (may
    // be null): the vote option in, the bytes read out.
    virtual const float* forward_slot(int32_t slot, const int32_t* tokens, int32_t n, int32_t pos, bool all_logits,
                                      SkipSchedule* skip) {
        (void)slot, (void)tokens, (void)n, (void)pos, (void)all_logits, (void)skip;
        throw Error(std::string("the ") + name() + " backend cannot decode batches of sequences");
    }
    virtual const float* forward_rows(const int32_t* tokens, const int32_t* slots, const int32_t* pos, int32_t n,
                                      SkipSchedule* const* skips, RowsStep* step) {
        (void)tokens, (void)slots, (void)pos, (void)n, (void)skips, (void)step;
        throw Error(std::string("the ") + name() + " backend cannot decode batches of sequences");
    }
    // Called when a schedule with this set is made, before it runs: a device backend
    // uploads the weights here (once per set). The schedule's set is the one forward
    // then finds in `skip`.
    virtual void prepare_surrogates(const std::shared_ptr<const SurrogateSet>& set) { (void)set; }
};

// Which rows run layer il's FFN in a batched step (runs[t] = 1): each row's schedule,
// or with `vote` the rows' majority for all of them (a tie runs the FFN), every
// overruled schedule told the outcome.
void decide_ffn_rows(int il, SkipSchedule* const* skips, int32_t n, bool vote, std::vector<uint8_t>& runs);

// "cpu", "cuda" or "auto" (the GPU when one is usable, else the CPU). Throws
// ffnskip::Error naming why a requested backend cannot run.
std::unique_ptr<Backend> make_backend(const std::string& name, const Model::Impl& model, const BackendParams& params);

}  // namespace ffnskip
