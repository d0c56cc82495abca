// The public API (ffnskip/ffnskip.h only): error types, sessions and generation.
// Tests that need a model read its path from FFNSKIP_TEST_MODEL (a small LLaMA GGUF,
// e.g. one written by tests/synthetic.py) and are skipped without it; with
// FFNSKIP_TEST_GREEDY="id,id,..." the greedy continuation of the prompt 1,2,3 must
// equal those ids (computed by an independent reference).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <ffnskip/ffnskip.h>

#include "check.h"

namespace {

std::string temp_file(const std::string& name, const std::string& contents) {
    const char* dir = std::getenv("TMPDIR");
    std::string path = std::string(dir && *dir ? dir : "/tmp") + "/ffnskip-test-" + name;
    std::ofstream(path, std::ios::binary) << contents;
    return path;
}

const char* test_model() {
    const char* p = std::getenv("FFNSKIP_TEST_MODEL");
    if (!p || !*p) std::printf("     (FFNSKIP_TEST_MODEL not set: model checks skipped)\n");
    return p && *p ? p : nullptr;
}

std::vector<int32_t> parse_ids(const char* s) {
    std::vector<int32_t> ids;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) ids.push_back(std::stoi(item));
    return ids;
}

}  // namespace

TEST(api_build_facts) {
    CHECK(std::string(ffnskip::version()).size() > 0, "version is empty");
    bool cpu = false;
    for (const std::string& b : ffnskip::available_backends()) cpu = cpu || b == "cpu";
    CHECK(cpu, "the cpu backend is always there");
    CHECK(std::string(ffnskip::finish_reason_name(ffnskip::FinishReason::eos)) == "eos", "finish reason name");
}

TEST(api_load_errors) {
    CHECK_THROWS(ffnskip::Model::load("/nonexistent/dir/model.gguf"), ffnskip::FileNotFoundError, "no such file");
    std::string empty = temp_file("empty.gguf", "");
    CHECK_THROWS(ffnskip::Model::load(empty), ffnskip::FormatError, "empty");
    std::string junk = temp_file("junk.gguf", "not a model at all");
    CHECK_THROWS(ffnskip::Model::load(junk), ffnskip::FormatError, "wrong magic");
    std::string truncated = temp_file("trunc.gguf", std::string("GGUF\3\0\0\0\1\0", 10));
    CHECK_THROWS(ffnskip::Model::load(truncated), ffnskip::FormatError, "truncated");
    // every engine error is an ffnskip::Error and a std::runtime_error
    CHECK_THROWS(ffnskip::Model::load(junk), ffnskip::Error, "invalid GGUF");
    std::remove(empty.c_str());
    std::remove(junk.c_str());
    std::remove(truncated.c_str());
}

TEST(api_session_arguments) {
    const char* path = test_model();
    if (!path) return;
    auto model = ffnskip::Model::load(path);
    CHECK_THROWS(ffnskip::Session(nullptr), std::invalid_argument, "needs a model");
    ffnskip::SessionParams sp;
    sp.n_ctx = -1;
    CHECK_THROWS(ffnskip::Session(model, sp), std::invalid_argument, "n_ctx");
    sp = {};
    sp.n_batch = 0;
    CHECK_THROWS(ffnskip::Session(model, sp), std::invalid_argument, "n_batch");
    sp = {};
    sp.n_threads = -2;
    CHECK_THROWS(ffnskip::Session(model, sp), std::invalid_argument, "n_threads");

    sp = {};
    sp.n_ctx = 8;
    sp.n_threads = 1;
    ffnskip::Session s(model, sp);
    ffnskip::GenerateParams gp;
    CHECK_THROWS(s.begin_tokens({}, gp), std::invalid_argument, "empty");
    CHECK_THROWS(s.begin_tokens({1, 2, 3, 4, 5, 6, 7, 8, 9}, gp), std::invalid_argument, "more than the context of 8");
    CHECK_THROWS(s.begin_tokens({1, model->n_vocab()}, gp), std::invalid_argument, "out of range");
    CHECK_THROWS(s.eval({-1}), std::invalid_argument, "token id -1 is out of range");
    gp.sampling.temperature = -1;
    CHECK_THROWS(s.begin_tokens({1}, gp), std::invalid_argument, "temperature");
    gp = {};
    gp.sampling.top_p = 0;
    CHECK_THROWS(s.begin_tokens({1}, gp), std::invalid_argument, "top_p");
    gp = {};
    gp.sampling.repeat_penalty = 0;
    CHECK_THROWS(s.begin_tokens({1}, gp), std::invalid_argument, "repeat_penalty");
    CHECK(s.n_past() == 0, "failed calls leave the cache empty");
}

TEST(api_generation) {
    const char* path = test_model();
    if (!path) return;
    auto model = ffnskip::Model::load(path);
    ffnskip::SessionParams sp;
    sp.n_ctx = 32;
    sp.n_threads = 2;
    ffnskip::Session s(model, sp);

    const float* logits = s.eval({1, 2, 3});
    bool finite = true;
    for (int32_t i = 0; i < model->n_vocab(); i++) finite = finite && std::isfinite(logits[i]);
    CHECK(finite, "logits are finite");
    CHECK(s.n_past() == 3, "three tokens in the cache");
    s.reset();

    ffnskip::GenerateParams gp;
    gp.max_tokens = 6;
    gp.ignore_eos = true;
    gp.sampling.temperature = 0;
    s.begin_tokens({1, 2, 3}, gp);
    std::string piece;
    int steps = 0;
    while (s.step(piece)) steps++;
    const ffnskip::GenerateResult& r = s.result();
    CHECK(r.tokens.size() == 6, "six tokens generated");
    CHECK(r.finish_reason == ffnskip::FinishReason::length, "finished by length");
    CHECK(r.stats.n_prompt_tokens == 3 && r.stats.n_generated == 6, "stats");
    if (const char* want = std::getenv("FFNSKIP_TEST_GREEDY")) {
        std::vector<int32_t> expected = parse_ids(want);
        std::string got;
        for (int32_t t : r.tokens) got += std::to_string(t) + ",";
        CHECK(r.tokens == expected, "greedy tokens " + got + " differ from the reference " + want);
    }
    // the same prompt again reuses the cache and gives the same tokens
    std::vector<int32_t> first = r.tokens;
    s.begin_tokens({1, 2, 3}, gp);
    while (s.step(piece)) {
    }
    CHECK(s.result().tokens == first, "greedy decoding is repeatable");
    CHECK(s.result().stats.n_cached_tokens == 2, "the cached prefix is reused");
}
