// Session: prompt processing, the decode loop, stop conditions and stats.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>


#include "backend.h"
#include "cpu/thread-pool.h"
#include "model/model.h"
#include "run-params.h"
#include "sampling/sampler.h"
#include "skip/skip-policy.h"
#include "skip/surrogate.h"
#include "tokenizer/vocab.h"

namespace ffnskip {

namespace {
double now_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}
}  // namespace

struct Session::Impl {
    std::shared_ptr<const Model> model;
    const Model::Impl& m;
    SessionParams params;
    std::unique_ptr<Backend> forward;
    std::vector<int32_t> cache_tokens;   // tokens whose keys/values are in the cache, in order
    std::vector<float> last_logits;      // (n_vocab)

    // The generation in progress.
    GenerateParams gen;
    GenerateResult result;
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<SkipSchedule> skip;
    Utf8Stream utf8;
    std::vector<int32_t> history;        // prompt + generated tokens, for the penalties
    size_t n_clean = 0;                  // leading cache entries computed by the full model:
                                         // only those may be reused by a later prompt
    std::string held;                    // text held back: it may begin a stop string
    bool running = false;
    bool need_eval = false;              // the last sampled token is not in the cache yet
    double decode_start = 0;

    Impl(std::shared_ptr<const Model> mdl, const SessionParams& p) : model(std::move(mdl)), m(model->impl()), params(p) {}

    std::shared_ptr<const SurrogateSet> surrogates;   // the last set loaded, by path

    const float* eval(const int32_t* tokens, size_t n, std::vector<float>* all_logits, SkipSchedule* sched = nullptr);
    // A schedule for `skip`, with its surrogates loaded (cached while the path stays).
    std::unique_ptr<SkipSchedule> make_schedule(const SkipConfig& skip);
    // One decode step g: the skip policy decides which blocks run.
    const float* decode_step(int32_t token, int32_t g, SkipSchedule& sched);
    void finish(FinishReason reason, std::string& piece);
    std::string release_text(bool at_end, bool* hit_stop);
};

Session::Session(std::shared_ptr<const Model> model, const SessionParams& params) {
    if (!model) throw std::invalid_argument("Session needs a model");
    const HParams& hp = model->hparams();
    SessionParams p = params;
    resolve_run_fields(hp, p);
    impl_ = std::make_unique<Impl>(std::move(model), p);
    BackendParams bp;
    bp.n_ctx = p.n_ctx;
    bp.n_batch = p.n_batch;
    bp.n_threads = p.n_threads;
    bp.n_threads_batch = p.n_threads_batch;
    impl_->forward = make_backend(p.backend, impl_->m, bp);
    impl_->last_logits.assign(hp.n_vocab, 0.0f);
}

Session::~Session() = default;

const Model& Session::model() const { return *impl_->model; }
int32_t Session::n_ctx() const { return impl_->params.n_ctx; }
const char* Session::backend() const { return impl_->forward->name(); }
int32_t Session::n_past() const { return (int32_t)impl_->cache_tokens.size(); }
const std::vector<float>& Session::last_logits() const { return impl_->last_logits; }
const GenerateResult& Session::result() const { return impl_->result; }
bool Session::finished() const { return !impl_->running; }

void Session::reset() {
    impl_->cache_tokens.clear();
    impl_->n_clean = 0;
    impl_->running = false;
}

const SkipConfig& Session::skip_config() const { return impl_->params.skip; }

void Session::set_skip_config(const SkipConfig& skip) {
    impl_->make_schedule(skip);   // validates, loads the surrogates
    impl_->params.skip = skip;
}

std::unique_ptr<SkipSchedule> Session::Impl::make_schedule(const SkipConfig& skip) {
    auto sched = std::make_unique<SkipSchedule>(skip, m.hp.n_layer, params.n_ctx);
    if (skip.surrogates.empty()) return sched;
    if (!forward->runs_surrogates())
        throw Error(std::string("FFN surrogates run on the CPU backend only so far (this session uses ") + forward->name() + ")");
    if (!surrogates || surrogates->path != skip.surrogates) surrogates = load_surrogates(skip.surrogates, m.hp);
    sched->set_surrogates(surrogates);
    return sched;
}

Session::FfnTrace Session::trace_ffn(const std::vector<int32_t>& tokens, const SkipConfig& skip) {
    Impl& s = *impl_;
    if (tokens.empty()) throw std::invalid_argument("trace_ffn: no tokens");
    if (tokens.size() > (size_t)s.params.n_ctx)
        throw std::invalid_argument("trace_ffn: " + std::to_string(tokens.size()) + " tokens do not fit in the context of " +
                                    std::to_string(s.params.n_ctx));
    std::unique_ptr<SkipSchedule> sched = s.make_schedule(skip);
    FfnTrace trace;
    trace.n_layer = s.m.hp.n_layer;
    trace.n_tokens = (int32_t)tokens.size();
    trace.n_embd = s.m.hp.n_embd;
    const size_t n_values = (size_t)trace.n_layer * trace.n_tokens * trace.n_embd;
    trace.h.assign(n_values, 0.0f);
    trace.u.assign(n_values, 0.0f);
    trace.f.assign(n_values, 0.0f);
    s.running = false;
    s.cache_tokens.clear();
    s.n_clean = 0;
    s.forward->set_ffn_trace(&trace);
    try {
        s.eval(tokens.data(), tokens.size(), nullptr, sched.get());
    } catch (...) {
        s.forward->set_ffn_trace(nullptr);
        throw;
    }
    s.forward->set_ffn_trace(nullptr);
    return trace;
}

double Session::score_continuation(const std::vector<int32_t>& prompt, const std::vector<int32_t>& continuation,
                                   const SkipConfig& skip, SkipStats* stats) {
    Impl& s = *impl_;
    if (prompt.empty()) throw std::invalid_argument("score_continuation: the prompt is empty");
    if (prompt.size() + continuation.size() > (size_t)s.params.n_ctx + 1)
        throw std::invalid_argument("score_continuation: " + std::to_string(prompt.size() + continuation.size()) +
                                    " tokens do not fit in the context of " + std::to_string(s.params.n_ctx));
    std::unique_ptr<SkipSchedule> owned = s.make_schedule(skip);
    SkipSchedule& sched = *owned;
    s.running = false;
    s.cache_tokens.clear();
    s.n_clean = 0;
    const int32_t n_vocab = s.m.hp.n_vocab;
    for (int32_t t : continuation)
        if (t < 0 || t >= n_vocab) throw std::invalid_argument("token id " + std::to_string(t) + " is out of range");
    auto token_nll = [n_vocab](const float* logits, int32_t target) {
        float mx = logits[0];
        for (int32_t v = 1; v < n_vocab; v++) mx = std::max(mx, logits[v]);
        double sum = 0.0;
        for (int32_t v = 0; v < n_vocab; v++) sum += std::exp((double)logits[v] - mx);
        return std::log(sum) - ((double)logits[target] - mx);
    };
    double nll = 0.0;
    const SkipPolicy policy = sched.config().policy;
    if ((policy == SkipPolicy::full || sched.prunes_prompt()) && !sched.config().record_cosines) {
        // Position-independent policies: one batched pass computes what the decode
        // steps would (prefill and single-token decoding are bit-identical).
        std::vector<int32_t> all = prompt;
        all.insert(all.end(), continuation.begin(), continuation.end() - (continuation.empty() ? 0 : 1));
        std::vector<float> logits;
        s.eval(all.data(), all.size(), &logits, &sched);
        for (size_t i = 0; i < continuation.size(); i++)
            nll += token_nll(logits.data() + (prompt.size() - 1 + i) * (size_t)n_vocab, continuation[i]);
        for (size_t i = 0; i + 1 < continuation.size(); i++) {   // the same masks the steps would record
            sched.begin_step((int32_t)i);
            sched.end_step();
        }
        if (stats) *stats = sched.stats();
        return nll;
    }
    const float* logits = s.eval(prompt.data(), prompt.size(), nullptr, &sched);
    for (size_t i = 0; i < continuation.size(); i++) {
        nll += token_nll(logits, continuation[i]);
        if (i + 1 < continuation.size()) logits = s.decode_step(continuation[i], (int32_t)i, sched);
    }
    if (stats) *stats = sched.stats();
    return nll;
}

const float* Session::Impl::decode_step(int32_t token, int32_t g, SkipSchedule& sched) {
    if (token < 0 || token >= m.hp.n_vocab) throw std::invalid_argument("token id " + std::to_string(token) + " is out of range");
    if (cache_tokens.size() >= (size_t)params.n_ctx) throw std::invalid_argument("the context is full");
    sched.begin_step(g);
    const float* logits = forward->forward(&token, 1, (int32_t)cache_tokens.size(), false, &sched, true);
    const bool clean = n_clean == cache_tokens.size() && !sched.step_skipped_anything();
    sched.end_step();
    cache_tokens.push_back(token);
    if (clean) n_clean = cache_tokens.size();
    std::copy(logits, logits + m.hp.n_vocab, last_logits.begin());
    return last_logits.data();
}

const float* Session::Impl::eval(const int32_t* tokens, size_t n, std::vector<float>* all_logits, SkipSchedule* sched) {
    const int32_t n_vocab = m.hp.n_vocab;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " is out of range [0, " + std::to_string(n_vocab) + ")");
    if (cache_tokens.size() + n > (size_t)params.n_ctx)
        throw std::invalid_argument(std::to_string(cache_tokens.size() + n) + " tokens do not fit in the context of " +
                                    std::to_string(params.n_ctx) + " (n_ctx)");
    if (all_logits) all_logits->resize(n * (size_t)n_vocab);
    // One token, as a caller's own decode loop evaluates them, takes the decode step's
    // path (on the GPU the captured graph and the decode settings).
    const bool decode_step = n == 1 && !sched;
    const float* logits = nullptr;
    for (size_t done = 0; done < n;) {
        const int32_t chunk = (int32_t)std::min<size_t>(n - done, (size_t)forward->n_batch());
        logits = forward->forward(tokens + done, chunk, (int32_t)cache_tokens.size(), all_logits != nullptr, sched,
                                  decode_step);
        if (all_logits) std::copy(logits, logits + (size_t)chunk * n_vocab, all_logits->data() + done * n_vocab);
        const bool clean = n_clean == cache_tokens.size() && (!sched || !sched->prunes_prompt());
        cache_tokens.insert(cache_tokens.end(), tokens + done, tokens + done + chunk);
        if (clean) n_clean = cache_tokens.size();
        if (all_logits) logits += (size_t)(chunk - 1) * n_vocab;
        done += chunk;
    }
    std::copy(logits, logits + n_vocab, last_logits.begin());
    return last_logits.data();
}

const float* Session::eval(const std::vector<int32_t>& tokens, std::vector<float>* all_logits) {
    if (tokens.empty()) throw std::invalid_argument("eval: no tokens");
    impl_->running = false;
    return impl_->eval(tokens.data(), tokens.size(), all_logits);
}

void Session::begin(const std::string& prompt, const GenerateParams& params) {
    std::vector<int32_t> tokens = impl_->model->tokenize(prompt, params.add_special, params.parse_special);
    begin_tokens(tokens, params);
}

void Session::begin_tokens(const std::vector<int32_t>& prompt_tokens, const GenerateParams& params) {
    Impl& s = *impl_;
    validate_sampling_params(params.sampling);
    for (const std::string& stop : params.stop)
        if (stop.empty()) throw std::invalid_argument("stop strings must not be empty");
    if (prompt_tokens.empty()) throw std::invalid_argument("the prompt is empty (it gives no tokens)");
    if (prompt_tokens.size() > (size_t)s.params.n_ctx)
        throw std::invalid_argument("the prompt has " + std::to_string(prompt_tokens.size()) +
                                    " tokens, more than the context of " + std::to_string(s.params.n_ctx) + " (n_ctx)");
    s.running = false;
    s.gen = params;
    s.result = GenerateResult{};
    s.result.prompt_tokens = prompt_tokens;
    s.sampler = std::make_unique<Sampler>(params.sampling, s.m.hp.n_vocab);
    s.skip = s.make_schedule(params.use_session_skip ? s.params.skip : params.skip);
    s.utf8 = Utf8Stream();
    s.held.clear();
    s.history = prompt_tokens;

    // Reuse the longest cached prefix that the full model computed (a pruned prompt or
    // a skipping decode step gives other keys and values); at least one token is
    // evaluated for its logits.
    size_t reusable = s.skip->prunes_prompt() ? 0 : std::min(s.n_clean, s.cache_tokens.size());
    size_t common = 0;
    while (common < reusable && common < prompt_tokens.size() && s.cache_tokens[common] == prompt_tokens[common]) common++;
    if (common == prompt_tokens.size()) common--;
    s.cache_tokens.resize(common);
    s.n_clean = std::min(s.n_clean, common);

    const double t0 = now_seconds();
    s.eval(prompt_tokens.data() + common, prompt_tokens.size() - common, nullptr, s.skip.get());
    const double t1 = now_seconds();
    s.result.stats.n_cached_tokens = (int32_t)common;
    s.result.stats.n_prompt_tokens = (int32_t)(prompt_tokens.size() - common);
    s.result.stats.prompt_seconds = t1 - t0;
    s.decode_start = t1;
    s.need_eval = false;
    s.running = true;
    if (params.max_tokens == 0) {
        std::string ignored;
        s.finish(FinishReason::length, ignored);
    }
}

// Returns the text that can be released now: everything except a tail that could
// still grow into a stop string. Sets *hit_stop when a stop string is complete.
std::string Session::Impl::release_text(bool at_end, bool* hit_stop) {
    *hit_stop = false;
    size_t cut = std::string::npos;
    for (const std::string& stop : gen.stop) {
        size_t at = held.find(stop);
        if (at != std::string::npos && at < cut) cut = at;
    }
    if (cut != std::string::npos) {
        *hit_stop = true;
        std::string out = held.substr(0, cut);
        held.clear();
        return out;
    }
    size_t keep = 0;
    if (!at_end) {
        for (const std::string& stop : gen.stop)
            for (size_t len = std::min(stop.size() - 1, held.size()); len > keep; len--)
                if (held.compare(held.size() - len, len, stop, 0, len) == 0) {
                    keep = len;
                    break;
                }
    }
    std::string out = held.substr(0, held.size() - keep);
    held.erase(0, held.size() - keep);
    return out;
}

void Session::Impl::finish(FinishReason reason, std::string& piece) {
    if (reason != FinishReason::stop) {
        held += utf8.flush();
        bool hit = false;
        piece += release_text(true, &hit);
    }
    result.text += piece;
    result.finish_reason = reason;
    result.stats.decode_seconds = now_seconds() - decode_start;
    if (skip) result.stats.skip = skip->stats();
    running = false;
}

bool Session::step(std::string& piece) {
    Impl& s = *impl_;
    piece.clear();
    if (!s.running) return false;
    GenerateResult& r = s.result;
    if (s.need_eval) {
        if (s.cache_tokens.size() >= (size_t)s.params.n_ctx) {
            s.finish(FinishReason::context_full, piece);
            return false;
        }
        s.decode_step(r.tokens.back(), (int32_t)r.tokens.size() - 1, *s.skip);
        s.need_eval = false;
    }
    const int32_t token = s.sampler->sample(s.last_logits.data(), s.history);
    r.tokens.push_back(token);
    s.history.push_back(token);
    r.stats.n_generated++;
    if (!s.gen.ignore_eos && s.model->token_is_eog(token)) {
        s.finish(FinishReason::eos, piece);
        return false;
    }
    s.held += s.utf8.push(s.model->token_to_piece(token, false));
    bool hit_stop = false;
    piece = s.release_text(false, &hit_stop);
    if (hit_stop) {
        s.finish(FinishReason::stop, piece);
        return false;
    }
    if (s.gen.max_tokens >= 0 && r.stats.n_generated >= s.gen.max_tokens) {
        s.finish(FinishReason::length, piece);
        return false;
    }
    r.text += piece;
    s.need_eval = true;
    return true;
}

void Session::cancel() {
    if (!impl_->running) return;
    // Text held back (a possible stop string, an unfinished UTF-8 sequence) was never
    // delivered: the result keeps only what the caller received.
    impl_->held.clear();
    impl_->utf8 = Utf8Stream();
    std::string piece;
    impl_->finish(FinishReason::cancelled, piece);
}

GenerateResult Session::generate(const std::string& prompt, const GenerateParams& params, const TokenCallback& on_token) {
    begin(prompt, params);
    std::string piece;
    bool more = !finished();
    while (more) {
        more = step(piece);
        if (on_token && !on_token(piece, impl_->result.tokens.back()) && more) {
            cancel();
            more = false;
        }
    }
    return impl_->result;
}

}  // namespace ffnskip
