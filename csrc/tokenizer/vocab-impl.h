// The vocabulary behind Vocab: token data and attributes as llama.cpp keeps them,
// plus the state of the two tokenizer kinds. Internal to csrc/tokenizer.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/pre-tokenizer.h"
#include "tokenizer/vocab.h"

namespace ffnskip {

// llama.cpp's token attributes (a bit set; types from the file are mapped onto it).
enum TokenAttr : uint32_t {
    ATTR_UNDEFINED = 0, ATTR_UNKNOWN = 1 << 0, ATTR_UNUSED = 1 << 1, ATTR_NORMAL = 1 << 2,
    ATTR_CONTROL = 1 << 3, ATTR_USER_DEFINED = 1 << 4, ATTR_BYTE = 1 << 5,
    ATTR_LSTRIP = 1 << 7, ATTR_RSTRIP = 1 << 8,
};

// Everything from_gguf reads, so vocabularies can also be built without a file.
struct VocabData {
    std::string model, pre, name;           // tokenizer.ggml.model / .pre, general.name
    std::vector<std::string> tokens;
    std::vector<float> scores;              // empty: all 0
    std::vector<int32_t> types;             // empty: all normal
    std::vector<std::string> merges;        // gpt2
    // special token ids from the file; -2 when absent
    int64_t bos = -2, eos = -2, eot = -2, eom = -2, unk = -2, sep = -2, pad = -2;
    int64_t fim_pre = -2, fim_suf = -2, fim_mid = -2, fim_pad = -2, fim_rep = -2, fim_sep = -2;
    int add_bos = -1, add_eos = -1, add_space_prefix = -1;   // -1: absent
};

class VocabImpl : public Vocab {
  public:
    explicit VocabImpl(VocabData data);

    std::vector<int32_t> tokenize(const std::string& text, bool add_special, bool parse_special) const override;
    std::string token_to_piece(int32_t id, bool render_special) const override;
    std::string detokenize(const std::vector<int32_t>& ids, bool render_special) const override;

  private:
    struct Fragment {
        int32_t token;        // -1: raw text
        size_t offset, length;
    };
    void partition_special(const std::string& text, std::vector<Fragment>& frags, bool parse_special) const;
    void spm_tokenize(const std::string& text, std::vector<int32_t>& out) const;
    void bpe_tokenize(const std::string& text, std::vector<int32_t>& out) const;
    int32_t text_to_token(const std::string& text) const {
        auto it = token_to_id_.find(text);
        return it == token_to_id_.end() ? -1 : it->second;
    }
    int32_t spm_byte_token(uint8_t byte) const;
    int bpe_rank(const std::string& left, const std::string& right) const;
    std::string piece_for_cache(int32_t id) const;
    void check_id(int32_t id) const;

    bool spm_ = true;
    bool add_space_prefix_ = false, clean_spaces_ = false;
    PreTokenizer pre_tok_;
    std::unordered_map<std::string, int32_t> token_to_id_;
    std::vector<uint32_t> attrs_;
    std::unordered_map<std::string, int> bpe_ranks_;   // "left\xFFright" -> rank
    std::vector<int32_t> special_tokens_;              // control/user-defined/unknown, longest first
    std::vector<std::string> pieces_;                  // token_to_piece with render_special
};

}  // namespace ffnskip
