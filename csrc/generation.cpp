// Generation: sampling, streamed text with stop strings, finish reasons.
#include "generation.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace ffnskip {

double now_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

void Generation::validate(const std::vector<int32_t>& prompt, const GenerateParams& params, int32_t n_ctx) {
    validate_sampling_params(params.sampling);
    for (const std::string& stop : params.stop)
        if (stop.empty()) throw std::invalid_argument("stop strings must not be empty");
    if (prompt.empty()) throw std::invalid_argument("the prompt is empty (it gives no tokens)");
    if (prompt.size() > (size_t)n_ctx)
        throw std::invalid_argument("the prompt has " + std::to_string(prompt.size()) +
                                    " tokens, more than the context of " + std::to_string(n_ctx) + " (n_ctx)");
}

void Generation::start(const std::vector<int32_t>& prompt, const GenerateParams& params, int32_t n_vocab) {
    params_ = params;
    result_ = GenerateResult{};
    result_.prompt_tokens = prompt;
    sampler_ = std::make_unique<Sampler>(params.sampling, n_vocab);
    utf8_ = Utf8Stream();
    held_.clear();
    history_ = prompt;
    running_ = false;
    started_ = true;
}

void Generation::prompt_done(double prompt_seconds, int32_t n_cached, const SkipStats* skip) {
    result_.stats.n_cached_tokens = n_cached;
    result_.stats.n_prompt_tokens = (int32_t)result_.prompt_tokens.size() - n_cached;
    result_.stats.prompt_seconds = prompt_seconds;
    decode_start_ = now_seconds();
    running_ = true;
    if (params_.max_tokens == 0) {
        std::string ignored;
        finish(FinishReason::length, ignored, skip);
    }
}

// The text that can be released now: everything but a tail that could still grow into
// a stop string. Sets *hit_stop when a stop string is complete.
std::string Generation::release_text(bool at_end, bool* hit_stop) {
    *hit_stop = false;
    size_t cut = std::string::npos;
    for (const std::string& stop : params_.stop) {
        size_t at = held_.find(stop);
        if (at != std::string::npos && at < cut) cut = at;
    }
    if (cut != std::string::npos) {
        *hit_stop = true;
        std::string out = held_.substr(0, cut);
        held_.clear();
        return out;
    }
    size_t keep = 0;
    if (!at_end) {
        for (const std::string& stop : params_.stop)
            for (size_t len = std::min(stop.size() - 1, held_.size()); len > keep; len--)
                if (held_.compare(held_.size() - len, len, stop, 0, len) == 0) {
                    keep = len;
                    break;
                }
    }
    std::string out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return out;
}

void Generation::finish(FinishReason reason, std::string& piece, const SkipStats* skip) {
    if (reason != FinishReason::stop) {
        held_ += utf8_.flush();
        bool hit = false;
        piece += release_text(true, &hit);
    }
    result_.text += piece;
    result_.finish_reason = reason;
    result_.stats.decode_seconds = now_seconds() - decode_start_;
    if (skip) result_.stats.skip = *skip;
    running_ = false;
    started_ = false;
}

void Generation::cancel(const SkipStats* skip) {
    if (!running_) {
        if (started_ && result_.finish_reason == FinishReason::none) {   // the prompt never finished
            result_.finish_reason = FinishReason::cancelled;
            if (skip) result_.stats.skip = *skip;
        }
        started_ = false;
        return;
    }
    held_.clear();
    utf8_ = Utf8Stream();
    std::string piece;
    finish(FinishReason::cancelled, piece, skip);
}

bool Generation::advance(const Model& model, const float* logits, std::string& piece, const SkipStats* skip) {
    piece.clear();
    if (!running_) return false;
    const int32_t token = sampler_->sample(logits, history_);
    result_.tokens.push_back(token);
    history_.push_back(token);
    result_.stats.n_generated++;
    if (!params_.ignore_eos && model.token_is_eog(token)) {
        finish(FinishReason::eos, piece, skip);
        return false;
    }
    held_ += utf8_.push(model.token_to_piece(token, false));
    bool hit_stop = false;
    piece = release_text(false, &hit_stop);
    if (hit_stop) {
        finish(FinishReason::stop, piece, skip);
        return false;
    }
    if (params_.max_tokens >= 0 && result_.stats.n_generated >= params_.max_tokens) {
        finish(FinishReason::length, piece, skip);
        return false;
    }
    result_.text += piece;
    return true;
}

}  // namespace ffnskip
