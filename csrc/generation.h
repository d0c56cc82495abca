// One generation's bookkeeping, shared by Session and BatchGenerator: the sampler,
// the text released so far (whole UTF-8 characters only; a tail that may grow into a
// stop string is held back), the stop conditions and the result.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ffnskip/ffnskip.h>

#include "sampling/sampler.h"
#include "tokenizer/vocab.h"

namespace ffnskip {

class Generation {
  public:
    // Throws std::invalid_argument naming what is wrong with the prompt or the params.
    static void validate(const std::vector<int32_t>& prompt, const GenerateParams& params, int32_t n_ctx);

    // A new generation of `prompt` (already validated); the caller evaluates it.
    void start(const std::vector<int32_t>& prompt, const GenerateParams& params, int32_t n_vocab);
    // The prompt is evaluated: decode time counts from here. max_tokens == 0 finishes now.
    void prompt_done(double prompt_seconds, int32_t n_cached, const SkipStats* skip);

    // Samples the next token from `logits` and appends it; `piece` receives the text
    // this token releases. Returns true while the generation goes on, false once it has
    // finished (eos, a stop string, max_tokens); the final call may still deliver text.
    bool advance(const Model& model, const float* logits, std::string& piece, const SkipStats* skip);
    // Ends the generation for a reason found outside (context_full); `piece` receives
    // the held-back text.
    void finish(FinishReason reason, std::string& piece, const SkipStats* skip);
    // Ends it as cancelled: text held back was never delivered and is dropped. A
    // generation whose prompt was never done ends as cancelled with no tokens.
    void cancel(const SkipStats* skip);

    bool running() const { return running_; }
    int32_t last_token() const { return result_.tokens.back(); }
    const GenerateParams& params() const { return params_; }
    const GenerateResult& result() const { return result_; }
    GenerateResult& result() { return result_; }

  private:
    std::string release_text(bool at_end, bool* hit_stop);

    GenerateParams params_;
    GenerateResult result_;
    std::unique_ptr<Sampler> sampler_;
    Utf8Stream utf8_;
    std::vector<int32_t> history_;   // prompt + generated tokens, for the penalties
    std::string held_;               // text held back: it may begin a stop string
    bool running_ = false;
    bool started_ = false;           // start() called, not finished yet
    double decode_start_ = 0;
};

double now_seconds();   // a steady clock, in seconds

}  // namespace ffnskip
