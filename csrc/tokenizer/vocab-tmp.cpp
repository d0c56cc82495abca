// Placeholder until the tokenizer lands.
#include <ffnskip/ffnskip.h>
#include "gguf/gguf.h"
#include "tokenizer/vocab.h"
namespace ffnskip {
namespace {
class TmpVocab : public Vocab {
  public:
    explicit TmpVocab(const GgufFile& f) {
        texts_ = f.get_string_array("tokenizer.ggml.tokens");
        eos_ = (int32_t)f.get_int("tokenizer.ggml.eos_token_id", -1);
    }
    std::vector<int32_t> tokenize(const std::string&, bool, bool) const override { throw Error("no tokenizer yet"); }
    std::string token_to_piece(int32_t id, bool) const override { return texts_[id]; }
};
}  // namespace
std::unique_ptr<Vocab> Vocab::from_gguf(const GgufFile& f) { return std::make_unique<TmpVocab>(f); }
Vocab::~Vocab() = default;
std::string Vocab::detokenize(const std::vector<int32_t>& ids, bool r) const { std::string s; for (auto i : ids) s += token_to_piece(i, r); return s; }
bool Vocab::is_eog(int32_t id) const { return id == eos_; }
std::string Utf8Stream::push(const std::string& b) { return b; }
std::string Utf8Stream::flush() { return ""; }
}  // namespace ffnskip
