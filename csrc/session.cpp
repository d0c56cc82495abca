// Session: prompt processing, the decode loop, stop conditions and stats.
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "backend.h"
#include "cpu/thread-pool.h"
#include "generation.h"
#include "model/model.h"
#include "run-params.h"
#include "skip/skip-policy.h"
#include "skip/surrogate.h"

namespace ffnskip {

struct Session::Impl {
    std::shared_ptr<const Model> model;
    const Model::Impl& m;
    SessionParams params;
    std::unique_ptr<Backend> forward;
    std::vector<int32_t> cache_tokens;   // tokens whose keys/values are in the cache, in order
    std::vector<float> last_logits;      // (n_vocab)

    // The generation in progress.
    Generation gen;
    std::unique_ptr<SkipSchedule> skip;
    size_t n_clean = 0;                  // leading cache entries computed by the full model:
                                         // only those may be reused by a later prompt
    bool need_eval = false;              // the last sampled token is not in the cache yet

    Impl(std::shared_ptr<const Model> mdl, const SessionParams& p) : model(std::move(mdl)), m(model->impl()), params(p) {}

    std::shared_ptr<const SurrogateSet> surrogates;   // the last set loaded, by path

    const float* eval(const int32_t* tokens, size_t n, std::vector<float>* all_logits, SkipSchedule* sched = nullptr);
    // A schedule for `skip`, with its surrogates loaded (cached while the path stays).
    std::unique_ptr<SkipSchedule> make_schedule(const SkipConfig& skip);
    // One decode step g: the skip policy decides which blocks run.
    const float* decode_step(int32_t token, int32_t g, SkipSchedule& sched);
    const SkipStats* skip_stats() const { return skip ? &skip->stats() : nullptr; }
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
const GenerateResult& Session::result() const { return impl_->gen.result(); }
bool Session::finished() const { return !impl_->gen.running(); }

void Session::reset() {
    impl_->cache_tokens.clear();
    impl_->n_clean = 0;
    impl_->gen.cancel(impl_->skip_stats());
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
        throw Error(std::string("FFN surrogates do not run on the ") + forward->name() + " backend");
    if (!surrogates || surrogates->path != skip.surrogates) surrogates = load_surrogates(skip.surrogates, m.hp);
    forward->prepare_surrogates(surrogates);   // e.g. the GPU uploads them (once per set)
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
    s.gen.cancel(s.skip_stats());
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
    s.gen.cancel(s.skip_stats());
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
    impl_->gen.cancel(impl_->skip_stats());
    return impl_->eval(tokens.data(), tokens.size(), all_logits);
}

void Session::begin(const std::string& prompt, const GenerateParams& params) {
    std::vector<int32_t> tokens = impl_->model->tokenize(prompt, params.add_special, params.parse_special);
    begin_tokens(tokens, params);
}

void Session::begin_tokens(const std::vector<int32_t>& prompt_tokens, const GenerateParams& params) {
    Impl& s = *impl_;
    Generation::validate(prompt_tokens, params, s.params.n_ctx);
    s.gen.cancel(s.skip_stats());
    auto sched = s.make_schedule(params.use_session_skip ? s.params.skip : params.skip);
    s.gen.start(prompt_tokens, params, s.m.hp.n_vocab);
    s.skip = std::move(sched);

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
    s.need_eval = false;
    s.gen.prompt_done(now_seconds() - t0, (int32_t)common, s.skip_stats());
}

bool Session::step(std::string& piece) {
    Impl& s = *impl_;
    piece.clear();
    if (!s.gen.running()) return false;
    if (s.need_eval) {
        if (s.cache_tokens.size() >= (size_t)s.params.n_ctx) {
            s.gen.finish(FinishReason::context_full, piece, s.skip_stats());
            return false;
        }
        const GenerateResult& r = s.gen.result();
        s.decode_step(r.tokens.back(), (int32_t)r.tokens.size() - 1, *s.skip);
        s.need_eval = false;
    }
    const bool more = s.gen.advance(*s.model, s.last_logits.data(), piece, s.skip_stats());
    s.need_eval = more;
    return more;
}

void Session::cancel() {
    // Text held back (a possible stop string, an unfinished UTF-8 sequence) was never
    // delivered: the result keeps only what the caller received.
    impl_->gen.cancel(impl_->skip_stats());
}

GenerateResult Session::generate(const std::string& prompt, const GenerateParams& params, const TokenCallback& on_token) {
    begin(prompt, params);
    std::string piece;
    bool more = !finished();
    while (more) {
        more = step(piece);
        if (on_token && !on_token(piece, impl_->gen.last_token()) && more) {
            cancel();
            more = false;
        }
    }
    return impl_->gen.result();
}

}  // namespace ffnskip
