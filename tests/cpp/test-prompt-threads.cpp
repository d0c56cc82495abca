// Prompt processing with several threads gives the same bits as with one thread, every
// time: each matrix product output has the bits of its plain dot product whatever
// tile, chunk or thread computed it, and attention is per (token, head). A pool that
// runs a chunk twice or returns before a chunk is done shows up here as a differing
// logit (or a crash). Needs FFNSKIP_TEST_MODEL; FFNSKIP_PROMPT_REPEATS sets how many
// times each multi-threaded prompt runs (default 3).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ffnskip/ffnskip.h>

#include "check.h"

namespace {

int prompt_repeats() {
    const char* s = std::getenv("FFNSKIP_PROMPT_REPEATS");
    return s && *s ? std::atoi(s) : 3;
}

// Every position's logits of `tokens` evaluated from an empty cache.
std::vector<float> prompt_logits(ffnskip::Session& s, const std::vector<int32_t>& tokens) {
    std::vector<float> all;
    s.reset();
    s.eval(tokens, &all);
    return all;
}

int64_t count_differences(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return -1;
    int64_t n = 0;
    for (size_t i = 0; i < a.size(); i++)
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) n++;
    return n;
}

}  // namespace

TEST(prompt_threads_same_bits) {
    const char* path = std::getenv("FFNSKIP_TEST_MODEL");
    if (!path || !*path) {
        std::printf("     (FFNSKIP_TEST_MODEL not set: skipped)\n");
        return;
    }
    auto model = ffnskip::Model::load(path);
    const int32_t n_vocab = model->n_vocab();
    // An odd prompt length and a batch that does not divide it: full batches, a short
    // last batch, an odd token count in the tiles.
    std::vector<int32_t> tokens;
    for (int i = 0; i < 45; i++) tokens.push_back((int32_t)((i * 7919 + 13) % n_vocab));

    ffnskip::SessionParams sp;
    sp.n_ctx = 128;
    sp.n_batch = 19;
    sp.n_threads = 1;
    ffnskip::Session one(model, sp);
    const std::vector<float> want = prompt_logits(one, tokens);
    CHECK(want.size() == tokens.size() * (size_t)n_vocab, "one logit row per prompt token");
    bool finite = true;
    for (float v : want) finite = finite && std::isfinite(v);
    CHECK(finite, "logits are finite");

    const int repeats = prompt_repeats();
    for (int n_threads : {2, 3}) {
        sp.n_threads = n_threads;
        ffnskip::Session many(model, sp);
        for (int r = 0; r < repeats; r++) {
            const int64_t diff = count_differences(prompt_logits(many, tokens), want);
            CHECK(diff == 0, std::to_string(diff) + " logits differ from one thread's with " + std::to_string(n_threads) +
                                 " threads (run " + std::to_string(r) + ")");
            if (diff != 0) break;
        }
    }
}
