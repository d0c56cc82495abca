// BatchSession through the public C++ API: batched logits equal a lone Session's bit
// for bit, sequences join and leave, bad arguments throw std::invalid_argument.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <ffnskip/ffnskip.h>

#include "check.h"

namespace {

const char* batch_test_model() {
    const char* p = std::getenv("FFNSKIP_TEST_MODEL");
    return p && *p ? p : nullptr;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

}  // namespace

TEST(api_batch_session) {
    const char* path = batch_test_model();
    if (!path) return;
    auto model = ffnskip::Model::load(path);
    const size_t n_vocab = (size_t)model->n_vocab();
    const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {7}, {4, 5, 6, 8, 9}};
    const std::vector<std::vector<int32_t>> steps = {{10, 11, 12}, {13, 14, 15}, {16, 17, 18}};

    // Each sequence alone: logits after its prompt and after each step.
    std::vector<std::vector<std::vector<float>>> want(prompts.size());
    for (size_t i = 0; i < prompts.size(); i++) {
        ffnskip::SessionParams sp;
        sp.n_ctx = 16;
        sp.n_threads = 2;
        ffnskip::Session s(model, sp);
        const float* l = s.eval(prompts[i]);
        want[i].emplace_back(l, l + n_vocab);
        for (int32_t t : steps[i]) {
            l = s.eval({t});
            want[i].emplace_back(l, l + n_vocab);
        }
    }

    ffnskip::BatchParams bp;
    bp.n_seq = 2;
    bp.n_ctx = 16;
    bp.n_threads = 2;
    ffnskip::BatchSession b(model, bp);
    const int32_t a = b.add_sequence(prompts[0]);
    const int32_t c = b.add_sequence(prompts[1]);
    CHECK(same_bits(b.last_logits(a).data(), want[0][0].data(), n_vocab), "prompt logits of sequence a");
    CHECK_THROWS(b.add_sequence(prompts[2]), std::invalid_argument, "sequence slots are taken");
    const std::vector<float>& l1 = b.step({{a, steps[0][0]}, {c, steps[1][0]}});
    CHECK(l1.size() == 2 * n_vocab, "two rows of logits");
    CHECK(same_bits(l1.data(), want[0][1].data(), n_vocab), "a, step 0");
    CHECK(same_bits(l1.data() + n_vocab, want[1][1].data(), n_vocab), "c, step 0");
    b.remove_sequence(a);
    CHECK_THROWS(b.step({{a, 1}}), std::invalid_argument, "no sequence");
    const int32_t d = b.add_sequence(prompts[2]);   // takes a's slot
    CHECK(d != a && b.n_active() == 2, "a new id in the freed slot");
    for (int k = 1; k < 3; k++) {
        const std::vector<float>& l = b.step({{d, steps[2][k - 1]}, {c, steps[1][k]}});
        CHECK(same_bits(l.data(), want[2][k].data(), n_vocab), "d after joining");
        CHECK(same_bits(l.data() + n_vocab, want[1][k + 1].data(), n_vocab), "c alongside d");
    }
    CHECK(b.n_past(c) == 4 && b.n_past(d) == 7, "positions");
    ffnskip::SkipConfig layer_skip;
    layer_skip.policy = ffnskip::SkipPolicy::shortgpt;
    b.remove_sequence(d);
    CHECK_THROWS(b.add_sequence({1}, layer_skip), std::invalid_argument, "whole layers");
    CHECK_THROWS(b.add_sequence(std::vector<int32_t>(17, 1)), std::invalid_argument, "more than the context of 16");
    bp.backend = "tpu";
    CHECK_THROWS(ffnskip::BatchSession(model, bp), std::invalid_argument, "unknown backend 'tpu'");
}

TEST(api_batch_generator) {
    const char* path = batch_test_model();
    if (!path) return;
    auto model = ffnskip::Model::load(path);
    ffnskip::GenerateParams greedy, sampled;
    greedy.max_tokens = 6;
    greedy.sampling.temperature = 0;
    greedy.ignore_eos = true;
    sampled = greedy;
    sampled.sampling.temperature = 0.9f;
    sampled.sampling.seed = 7;
    const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {4, 5, 6, 8, 9, 10, 11}};
    const std::vector<ffnskip::GenerateParams> params = {greedy, sampled};

    std::vector<std::vector<int32_t>> want;
    for (size_t i = 0; i < prompts.size(); i++) {
        ffnskip::SessionParams sp;
        sp.n_ctx = 32;
        sp.n_threads = 2;
        ffnskip::Session s(model, sp);
        s.begin_tokens(prompts[i], params[i]);
        std::string piece;
        while (s.step(piece)) {}
        want.push_back(s.result().tokens);
    }

    ffnskip::BatchParams bp;
    bp.n_seq = 2;
    bp.n_ctx = 32;
    bp.n_threads = 2;
    bp.n_prefill_chunk = 2;
    ffnskip::BatchGenerator g(model, bp);
    const int32_t a = g.submit(prompts[0], params[0]);
    g.step();   // a's prompt and first token
    const int32_t b = g.submit(prompts[1], params[1]);
    CHECK_THROWS(g.submit({1}, greedy), std::invalid_argument, "sequence slots are taken");
    int rounds = 0;
    while (g.n_active() > 0 && rounds++ < 100) {
        for (const auto& u : g.step()) CHECK(u.id == a || u.id == b, "updates name the requests");
    }
    CHECK(g.take_result(a).tokens == want[0], "request a equals a lone Session");
    CHECK(g.take_result(b).tokens == want[1], "request b equals a lone Session");
    CHECK_THROWS(g.take_result(a), std::invalid_argument, "no finished request");
    const int32_t c = g.submit({1, 2}, greedy);
    g.cancel(c);
    CHECK(g.take_result(c).finish_reason == ffnskip::FinishReason::cancelled, "cancelled before its prompt");
    CHECK(g.step().empty() && g.n_active() == 0, "nothing left");
}
