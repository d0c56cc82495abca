// generate: load a GGUF model and continue a prompt, using only <ffnskip/ffnskip.h>.
//
//   generate MODEL.gguf -p "The capital of France is" -n 32
//   generate MODEL.gguf --tokens 1,2,3 -n 8 --temp 0
//
// The text goes to stdout as it is produced; the generated token ids and the speed
// go to stderr (ids on one line: "tokens: 5,17,...").
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include <ffnskip/ffnskip.h>

namespace {

void usage(const char* argv0) {
    std::fprintf(stderr,
                 "usage: %s MODEL.gguf (-p PROMPT | --tokens ID,ID,...) [-n MAX_TOKENS] [--temp T]\n"
                 "       [--top-k K] [--top-p P] [--seed S] [--ctx N] [--threads N] [--ignore-eos]\n",
                 argv0);
}

std::vector<int32_t> parse_ids(const std::string& s) {
    std::vector<int32_t> ids;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t used = 0;
        long v = std::stol(item, &used);
        if (used != item.size()) throw std::invalid_argument("not a token id: '" + item + "'");
        ids.push_back((int32_t)v);
    }
    return ids;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0) {
        usage(argv[0]);
        return argc < 2 ? 2 : 0;
    }
    const std::string model_path = argv[1];
    std::string prompt;
    std::vector<int32_t> prompt_ids;
    bool have_prompt = false;
    bool use_ids = false;
    ffnskip::SessionParams sp;
    ffnskip::GenerateParams gp;
    gp.max_tokens = 32;

    try {
        for (int i = 2; i < argc; i++) {
            const std::string a = argv[i];
            auto value = [&]() -> std::string {
                if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
                return argv[++i];
            };
            if (a == "-p" || a == "--prompt") {
                prompt = value();
                have_prompt = true;
                use_ids = false;
            } else if (a == "--tokens") {
                prompt_ids = parse_ids(value());
                have_prompt = true;
                use_ids = true;
            } else if (a == "-n" || a == "--max-tokens") {
                gp.max_tokens = std::stoi(value());
            } else if (a == "--temp") {
                gp.sampling.temperature = std::stof(value());
            } else if (a == "--top-k") {
                gp.sampling.top_k = std::stoi(value());
            } else if (a == "--top-p") {
                gp.sampling.top_p = std::stof(value());
            } else if (a == "--seed") {
                gp.sampling.seed = std::stoll(value());
            } else if (a == "--ctx") {
                sp.n_ctx = std::stoi(value());
            } else if (a == "--threads") {
                sp.n_threads = std::stoi(value());
            } else if (a == "--ignore-eos") {
                gp.ignore_eos = true;
            } else {
                throw std::invalid_argument("unknown option " + a);
            }
        }
        if (!have_prompt) throw std::invalid_argument("give a prompt with -p or --tokens");

        std::shared_ptr<ffnskip::Model> model = ffnskip::Model::load(model_path);
        ffnskip::Session session(model, sp);
        if (use_ids) {
            session.begin_tokens(prompt_ids, gp);
        } else {
            session.begin(prompt, gp);
        }
        std::string piece;
        bool more = !session.finished();
        while (more) {
            more = session.step(piece);
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        }
        std::printf("\n");

        const ffnskip::GenerateResult& r = session.result();
        std::string ids;
        for (size_t i = 0; i < r.tokens.size(); i++) ids += (i ? "," : "") + std::to_string(r.tokens[i]);
        std::fprintf(stderr, "tokens: %s\n", ids.c_str());
        std::fprintf(stderr, "finish: %s\n", ffnskip::finish_reason_name(r.finish_reason));
        std::fprintf(stderr, "prompt: %d tokens (%d cached), %.1f tokens/s\n", r.stats.n_prompt_tokens,
                     r.stats.n_cached_tokens, r.stats.prompt_tokens_per_second());
        std::fprintf(stderr, "decode: %d tokens, %.1f tokens/s\n", r.stats.n_generated,
                     r.stats.decode_tokens_per_second());
        return 0;
    } catch (const ffnskip::FileNotFoundError& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 3;
    } catch (const ffnskip::FormatError& e) {
        std::fprintf(stderr, "error: not a usable model: %s\n", e.what());
        return 4;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
