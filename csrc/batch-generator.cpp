// BatchGenerator: continuous batching of generations over a BatchSession. Each round
// evaluates a bounded chunk of the joining requests' prompts (a request whose prompt
// completes samples its first token), then one batched decode step for every other
// generating request, then samples each one's next token: one token per request and round.
#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>

#include "batch-session.h"
#include "generation.h"
#include "model/model.h"
#include "skip/skip-policy.h"
#include "skip/surrogate.h"

namespace ffnskip {

namespace {
struct Request {
    Generation gen;
    bool prefilled = false;     // its prompt is in the cache: it samples and steps
    bool need_eval = false;     // its last sampled token is not in the cache yet
    bool fresh = false;         // sampled its first token this round: steps from the next
    double prompt_seconds = 0;
};
}  // namespace

struct BatchGenerator::Impl {
    std::shared_ptr<const Model> model;
    BatchSession batch;
    int32_t prefill_chunk;                    // prompt tokens per round while others decode
    SkipConfig skip;                          // for requests that use the default
    std::map<int32_t, Request> active;        // by id: ids grow, so oldest first
    std::map<int32_t, GenerateResult> done;   // finished, not taken yet
    std::vector<Update> updates;
    std::vector<std::pair<int32_t, int32_t>> pairs;
    std::vector<int32_t> pair_ids;

    Impl(std::shared_ptr<const Model> m, const BatchParams& p) : model(m), batch(m, p), prefill_chunk(p.n_prefill_chunk) {}

    // Moves a finished request's result out of the batch and frees its slot.
    void retire(std::map<int32_t, Request>::iterator it) {
        done.emplace(it->first, std::move(it->second.gen.result()));
        batch.remove_sequence(it->first);
        active.erase(it);
    }
    const SkipStats* stats(int32_t id) const { return &batch.skip_stats(id); }
    // Samples request `id`'s next token from `logits` and records the update.
    void sample(int32_t id, Request& r, const float* logits) {
        Update u{id, std::string(), false};
        const bool more = r.gen.advance(*model, logits, u.piece, stats(id));
        r.need_eval = more;
        u.finished = !more;
        updates.push_back(std::move(u));
    }
    void prefill_round(int32_t budget);
    void decode_round();
};

BatchGenerator::BatchGenerator(std::shared_ptr<const Model> model, const BatchParams& params) {
    if (!model) throw std::invalid_argument("BatchGenerator needs a model");
    if (params.n_prefill_chunk < 1)
        throw std::invalid_argument("n_prefill_chunk must be >= 1, got " + std::to_string(params.n_prefill_chunk));
    impl_ = std::make_unique<Impl>(std::move(model), params);
}

BatchGenerator::~BatchGenerator() = default;

const Model& BatchGenerator::model() const { return *impl_->model; }
int32_t BatchGenerator::n_seq() const { return impl_->batch.n_seq(); }
int32_t BatchGenerator::n_ctx() const { return impl_->batch.n_ctx(); }
int32_t BatchGenerator::n_active() const { return (int32_t)impl_->active.size(); }
const SkipConfig& BatchGenerator::skip_config() const { return impl_->skip; }

void BatchGenerator::set_skip_config(const SkipConfig& skip) {
    check_batch_skip(skip);
    SkipSchedule check(skip, impl_->model->hparams().n_layer, n_ctx());   // validates
    if (!skip.surrogates.empty()) load_surrogates(skip.surrogates, impl_->model->hparams());   // a sidecar that fits
    impl_->skip = skip;
}

int32_t BatchGenerator::submit(const std::vector<int32_t>& prompt, const GenerateParams& params) {
    Impl& g = *impl_;
    Generation::validate(prompt, params, n_ctx());
    const int32_t id = g.batch.join_sequence(prompt, params.use_session_skip ? g.skip : params.skip);
    Request& r = g.active[id];
    r.gen.start(prompt, params, g.model->n_vocab());
    return id;
}

void BatchGenerator::Impl::prefill_round(int32_t budget) {
    for (auto it = active.begin(); it != active.end() && budget > 0;) {
        const int32_t id = it->first;
        Request& r = it->second;
        if (r.prefilled) {
            ++it;
            continue;
        }
        const int32_t before = batch.n_pending(id);
        const double t0 = now_seconds();
        const int32_t left = batch.prefill(id, std::min(budget, before));
        r.prompt_seconds += now_seconds() - t0;
        budget -= before - left;
        if (left > 0) break;   // the budget is spent
        r.prefilled = true;
        r.gen.prompt_done(r.prompt_seconds, 0, stats(id));
        if (!r.gen.running()) {   // max_tokens == 0
            updates.push_back({id, std::string(), true});
            retire(it++);
            continue;
        }
        sample(id, r, batch.last_logits(id).data());
        r.fresh = true;
        if (!r.need_eval) {
            retire(it++);
            continue;
        }
        ++it;
    }
}

void BatchGenerator::Impl::decode_round() {
    pairs.clear();
    pair_ids.clear();
    for (auto it = active.begin(); it != active.end();) {
        Request& r = it->second;
        if (!r.need_eval || r.fresh) {   // one token per request and round
            r.fresh = false;
            ++it;
            continue;
        }
        if (batch.n_past(it->first) >= batch.n_ctx()) {
            Update u{it->first, std::string(), true};
            r.gen.finish(FinishReason::context_full, u.piece, stats(it->first));
            updates.push_back(std::move(u));
            retire(it++);
            continue;
        }
        pairs.emplace_back(it->first, r.gen.last_token());
        pair_ids.push_back(it->first);
        ++it;
    }
    if (pairs.empty()) return;
    const std::vector<float>& logits = batch.step(pairs);
    const size_t n_vocab = (size_t)model->n_vocab();
    for (size_t i = 0; i < pair_ids.size(); i++) {
        auto it = active.find(pair_ids[i]);
        sample(it->first, it->second, logits.data() + i * n_vocab);
        if (!it->second.need_eval) retire(it);
    }
}

const std::vector<BatchGenerator::Update>& BatchGenerator::step() {
    Impl& g = *impl_;
    g.updates.clear();
    const bool decoding = std::any_of(g.active.begin(), g.active.end(), [](const auto& kv) { return kv.second.prefilled; });
    // With nothing decoding no one waits: prompts go through whole (in n_batch chunks).
    g.prefill_round(decoding ? g.prefill_chunk : INT32_MAX);
    g.decode_round();
    return g.updates;
}

void BatchGenerator::cancel(int32_t id) {
    Impl& g = *impl_;
    auto it = g.active.find(id);
    if (it == g.active.end()) return;
    Request& r = it->second;
    if (!r.prefilled) r.gen.result().stats.prompt_seconds = r.prompt_seconds;
    r.gen.cancel(g.stats(id));   // also before its prompt is done: an empty, cancelled result
    g.retire(it);
}

GenerateResult BatchGenerator::take_result(int32_t id) {
    Impl& g = *impl_;
    auto it = g.done.find(id);
    if (it == g.done.end()) {
        if (g.active.count(id)) throw std::invalid_argument("request " + std::to_string(id) + " has not finished");
        throw std::invalid_argument("no finished request " + std::to_string(id));
    }
    GenerateResult r = std::move(it->second);
    g.done.erase(it);
    return r;
}

}  // namespace ffnskip
