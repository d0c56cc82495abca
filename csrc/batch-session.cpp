// BatchSession: sequence slots, joining and leaving, and the batched decode step.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "batch-session.h"
#include "backend.h"
#include "model/model.h"
#include "run-params.h"
#include "skip/skip-policy.h"
#include "skip/surrogate.h"

namespace ffnskip {

namespace {
struct Sequence {
    int32_t id = -1;                 // -1: the slot is free
    int32_t n_past = 0;              // tokens in the slot's cache
    std::vector<int32_t> prompt;     // while its prompt is being evaluated (prefill); then empty
    std::vector<float> last_logits;  // (n_vocab)
    std::unique_ptr<SkipSchedule> skip;
    int32_t n_steps = 0;             // decode steps taken: the generated-token index g
};
}  // namespace

struct BatchSession::Impl {
    std::shared_ptr<const Model> model;
    const Model::Impl& m;
    BatchParams params;
    std::unique_ptr<Backend> forward;   // with n_seq cache slots
    std::vector<Sequence> slots;     // (n_seq)
    int32_t next_id = 0;
    std::vector<float> step_logits;  // (rows of the last step, n_vocab)
    std::vector<int32_t> tokens, slot_of_row, pos_of_row;
    std::vector<SkipSchedule*> skip_of_row;
    BatchStats stats;
    uint64_t ffn_bytes_per_step = 0;   // every layer's FFN weights
    // Surrogate sidecars by path, shared by the sequences that name them (so rows with
    // the same surrogate run it in one product); dropped when no sequence uses them.
    std::vector<std::shared_ptr<const SurrogateSet>> surrogate_sets;

    // A schedule for `skip`, with its surrogates loaded (validates).
    std::unique_ptr<SkipSchedule> make_schedule(const SkipConfig& skip);

    Impl(std::shared_ptr<const Model> mdl, const BatchParams& p) : model(std::move(mdl)), m(model->impl()), params(p) {}

    Sequence& find(int32_t seq) {
        for (Sequence& s : slots)
            if (s.id == seq && seq >= 0) return s;
        throw std::invalid_argument("no sequence " + std::to_string(seq) + " in the batch");
    }
    const Sequence& find(int32_t seq) const { return const_cast<Impl*>(this)->find(seq); }
    void check_token(int32_t t) const {
        if (t < 0 || t >= m.hp.n_vocab)
            throw std::invalid_argument("token id " + std::to_string(t) + " is out of range [0, " +
                                        std::to_string(m.hp.n_vocab) + ")");
    }
};

void check_batch_skip(const SkipConfig& skip) {
    if (skip.policy == SkipPolicy::shortgpt || skip.policy == SkipPolicy::skipdecode)
        throw std::invalid_argument(std::string("BatchSession does not support the '") + skip_policy_name(skip.policy) +
                                    "' skip policy (it leaves whole layers out); use an FFN policy");
}

void check_skip_alignment(const std::string& alignment) {
    if (alignment != "none" && alignment != "vote")
        throw std::invalid_argument("skip_alignment must be 'none' or 'vote', got '" + alignment + "'");
}

std::unique_ptr<SkipSchedule> BatchSession::Impl::make_schedule(const SkipConfig& skip) {
    check_batch_skip(skip);
    if (!skip.surrogates.empty() && !forward->runs_surrogates_in_batches())
        throw std::invalid_argument(std::string("the ") + forward->name() +
                                    " backend does not run FFN surrogates in batches");
    auto sched = std::make_unique<SkipSchedule>(skip, m.hp.n_layer, params.n_ctx);   // validates
    // Sets no sequence uses any more (the cache holds the only reference).
    surrogate_sets.erase(std::remove_if(surrogate_sets.begin(), surrogate_sets.end(),
                                        [](const auto& set) { return set.use_count() == 1; }),
                         surrogate_sets.end());
    if (skip.surrogates.empty()) return sched;
    auto it = std::find_if(surrogate_sets.begin(), surrogate_sets.end(),
                           [&](const auto& set) { return set->path == skip.surrogates; });
    if (it == surrogate_sets.end()) {
        surrogate_sets.push_back(load_surrogates(skip.surrogates, m.hp));   // throws for a bad sidecar
        it = surrogate_sets.end() - 1;
    }
    sched->set_surrogates(*it);
    return sched;
}

BatchSession::BatchSession(std::shared_ptr<const Model> model, const BatchParams& params) {
    if (!model) throw std::invalid_argument("BatchSession needs a model");
    const HParams& hp = model->hparams();
    BatchParams p = params;
    if (p.n_seq < 1 || p.n_seq > 256) throw std::invalid_argument("n_seq must be in [1, 256], got " + std::to_string(p.n_seq));
    check_skip_alignment(p.skip_alignment);
    resolve_run_fields(hp, p);
    impl_ = std::make_unique<Impl>(std::move(model), p);
    BackendParams bp;
    bp.n_ctx = p.n_ctx;
    bp.n_batch = std::max(p.n_batch, p.n_seq);   // the activation buffers hold a step's rows too
    bp.n_threads = p.n_threads;
    bp.n_threads_batch = p.n_threads_batch;
    bp.n_slots = p.n_seq;
    impl_->forward = make_backend(p.backend, impl_->m, bp);
    impl_->slots.resize(p.n_seq);
    for (const LayerWeights& L : impl_->m.w.layers) impl_->ffn_bytes_per_step += L.ffn_bytes();
}

BatchSession::~BatchSession() = default;

const Model& BatchSession::model() const { return *impl_->model; }
int32_t BatchSession::n_seq() const { return impl_->params.n_seq; }
int32_t BatchSession::n_ctx() const { return impl_->params.n_ctx; }

int32_t BatchSession::n_active() const {
    return (int32_t)std::count_if(impl_->slots.begin(), impl_->slots.end(), [](const Sequence& s) { return s.id >= 0; });
}

bool BatchSession::has_sequence(int32_t seq) const {
    return seq >= 0 && std::any_of(impl_->slots.begin(), impl_->slots.end(), [seq](const Sequence& s) { return s.id == seq; });
}

std::vector<int32_t> BatchSession::sequences() const {
    std::vector<int32_t> ids;
    for (const Sequence& s : impl_->slots)
        if (s.id >= 0) ids.push_back(s.id);
    std::sort(ids.begin(), ids.end());
    return ids;
}

int32_t BatchSession::n_past(int32_t seq) const { return impl_->find(seq).n_past; }

const std::vector<float>& BatchSession::last_logits(int32_t seq) const {
    const Sequence& s = impl_->find(seq);
    if (!s.prompt.empty())
        throw std::invalid_argument("sequence " + std::to_string(seq) + " has not finished its prompt (prefill)");
    return s.last_logits;
}

int32_t BatchSession::join_sequence(const std::vector<int32_t>& prompt, const SkipConfig& skip) {
    Impl& b = *impl_;
    std::unique_ptr<SkipSchedule> sched = b.make_schedule(skip);   // validates, loads the surrogates
    if (prompt.empty()) throw std::invalid_argument("the prompt is empty (it gives no tokens)");
    if (prompt.size() > (size_t)b.params.n_ctx)
        throw std::invalid_argument("the prompt has " + std::to_string(prompt.size()) + " tokens, more than the context of " +
                                    std::to_string(b.params.n_ctx) + " (n_ctx per sequence)");
    for (int32_t t : prompt) b.check_token(t);
    auto free_slot = std::find_if(b.slots.begin(), b.slots.end(), [](const Sequence& s) { return s.id < 0; });
    if (free_slot == b.slots.end())
        throw std::invalid_argument("all " + std::to_string(b.params.n_seq) + " sequence slots are taken (n_seq)");
    Sequence& s = *free_slot;
    s.id = b.next_id++;
    s.n_past = 0;
    s.prompt = prompt;
    s.last_logits.clear();
    s.skip = std::move(sched);
    s.n_steps = 0;
    return s.id;
}

int32_t BatchSession::prefill(int32_t seq, int32_t max_tokens) {
    Impl& b = *impl_;
    Sequence& s = b.find(seq);
    if (max_tokens < 1) throw std::invalid_argument("prefill: max_tokens must be >= 1, got " + std::to_string(max_tokens));
    const int32_t slot = (int32_t)(&s - b.slots.data());
    const int32_t end = std::min((int32_t)s.prompt.size(), s.n_past + max_tokens);
    const float* logits = nullptr;
    while (s.n_past < end) {
        const int32_t chunk = std::min(end - s.n_past, b.params.n_batch);
        logits = b.forward->forward_slot(slot, s.prompt.data() + s.n_past, chunk, s.n_past, false, s.skip.get());
        s.n_past += chunk;
    }
    if (logits && s.n_past == (int32_t)s.prompt.size()) {
        s.last_logits.assign(logits, logits + b.m.hp.n_vocab);
        std::vector<int32_t>().swap(s.prompt);
    }
    return n_pending(seq);
}

int32_t BatchSession::n_pending(int32_t seq) const {
    const Sequence& s = impl_->find(seq);
    return (int32_t)s.prompt.size() - (s.prompt.empty() ? 0 : s.n_past);
}

int32_t BatchSession::add_sequence(const std::vector<int32_t>& prompt, const SkipConfig& skip) {
    const int32_t seq = join_sequence(prompt, skip);
    try {
        prefill(seq, (int32_t)prompt.size());
    } catch (...) {
        remove_sequence(seq);
        throw;
    }
    return seq;
}

void BatchSession::remove_sequence(int32_t seq) {
    Sequence& s = impl_->find(seq);
    s.id = -1;
    s.n_past = 0;
    s.last_logits.clear();
    s.prompt.clear();
    s.skip.reset();
}

const SkipStats& BatchSession::skip_stats(int32_t seq) const { return impl_->find(seq).skip->stats(); }
const std::string& BatchSession::skip_alignment() const { return impl_->params.skip_alignment; }
const BatchStats& BatchSession::stats() const { return impl_->stats; }

const std::vector<float>& BatchSession::step(const std::vector<std::pair<int32_t, int32_t>>& pairs) {
    Impl& b = *impl_;
    const int32_t n_vocab = b.m.hp.n_vocab;
    b.step_logits.clear();
    if (pairs.empty()) return b.step_logits;
    b.tokens.clear();
    b.slot_of_row.clear();
    b.pos_of_row.clear();
    b.skip_of_row.clear();
    for (const auto& [seq, token] : pairs) {
        Sequence& s = b.find(seq);
        b.check_token(token);
        const int32_t slot = (int32_t)(&s - b.slots.data());
        if (!s.prompt.empty())
            throw std::invalid_argument("sequence " + std::to_string(seq) + " has " + std::to_string(n_pending(seq)) +
                                        " prompt tokens to evaluate (prefill) before it can step");
        if (std::find(b.slot_of_row.begin(), b.slot_of_row.end(), slot) != b.slot_of_row.end())
            throw std::invalid_argument("sequence " + std::to_string(seq) + " appears twice in one step");
        if (s.n_past >= b.params.n_ctx)
            throw std::invalid_argument("the context of sequence " + std::to_string(seq) + " is full (" +
                                        std::to_string(b.params.n_ctx) + " tokens)");
        b.tokens.push_back(token);
        b.slot_of_row.push_back(slot);
        b.pos_of_row.push_back(s.n_past);
        b.skip_of_row.push_back(s.skip.get());
    }
    const int32_t n = (int32_t)pairs.size();
    for (int32_t i = 0; i < n; i++) b.skip_of_row[i]->begin_step(b.slots[b.slot_of_row[i]].n_steps);
    RowsStep rs;
    rs.vote = b.params.skip_alignment == "vote";
    const float* logits = b.forward->forward_rows(b.tokens.data(), b.slot_of_row.data(), b.pos_of_row.data(), n,
                                                  b.skip_of_row.data(), &rs);
    for (int32_t i = 0; i < n; i++) b.skip_of_row[i]->end_step();
    b.stats.n_steps++;
    b.stats.ffn_bytes += b.ffn_bytes_per_step;
    b.stats.ffn_bytes_read += rs.ffn_bytes_read;
    b.stats.surrogate_bytes_read += rs.surrogate_bytes_read;
    b.step_logits.assign(logits, logits + (size_t)n * n_vocab);
    for (int32_t i = 0; i < n; i++) {
        Sequence& s = b.slots[b.slot_of_row[i]];
        s.n_past++;
        s.n_steps++;
        std::copy(logits + (size_t)i * n_vocab, logits + (size_t)(i + 1) * n_vocab, s.last_logits.begin());
    }
    return b.step_logits;
}

}  // namespace ffnskip
