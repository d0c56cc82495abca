// Tokenizers built from GGUF metadata (tokenizer.ggml.*):
//   "llama": SentencePiece-style, merges by score, byte fallback <0xNN>, add_space_prefix;
//   "gpt2":  byte-level BPE with ranked merges, pre-split by the regexes that
//            tokenizer.ggml.pre names (an unknown name is an error).
// Ids equal llama.cpp's for the same vocabulary and text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ffnskip {

class GgufFile;

// Token attributes from tokenizer.ggml.token_type (llama.cpp's numbering).
enum class TokenType : int32_t {
    undefined = 0, normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6,
};

class Vocab {
  public:
    // Throws FormatError (unknown tokenizer model or pre-tokenizer, inconsistent arrays).
    static std::unique_ptr<Vocab> from_gguf(const GgufFile& file);
    virtual ~Vocab();

    // add_special: BOS/EOS as add_bos_token / add_eos_token say.
    // parse_special: control tokens written in the text ("<|im_start|>") become their ids;
    // user-defined tokens are always matched, as llama.cpp does.
    virtual std::vector<int32_t> tokenize(const std::string& text, bool add_special,
                                          bool parse_special) const = 0;
    // The bytes a token stands for (may be part of a UTF-8 sequence). Control tokens
    // render as their text only when render_special.
    virtual std::string token_to_piece(int32_t id, bool render_special) const = 0;
    // Concatenated pieces; the leading space that add_space_prefix added is removed
    // from the first token, and vocabularies whose pre-tokenizer llama.cpp cleans
    // (gpt-2, llama3, starcoder, ...) lose the space before , . ! ? 's 'm 're 've.
    virtual std::string detokenize(const std::vector<int32_t>& ids, bool render_special) const;

    int32_t n_tokens() const { return (int32_t)texts_.size(); }
    const std::string& token_text(int32_t id) const;   // as stored in the vocabulary
    TokenType token_type(int32_t id) const;
    int32_t bos() const { return bos_; }     // -1 when none
    int32_t eos() const { return eos_; }
    int32_t eot() const { return eot_; }
    bool add_bos() const { return add_bos_; }
    bool add_eos() const { return add_eos_; }
    bool is_eog(int32_t id) const;            // EOS, EOT, EOM and the like
    const std::string& model_name() const { return model_; }   // "llama" / "gpt2"
    const std::string& pre_name() const { return pre_; }

  protected:
    std::string model_, pre_;
    std::vector<std::string> texts_;
    std::vector<float> scores_;
    std::vector<TokenType> types_;
    int32_t bos_ = -1, eos_ = -1, eot_ = -1, unk_ = -1, pad_ = -1;
    bool add_bos_ = false, add_eos_ = false;
    std::vector<int32_t> eog_ids_;
};

// Holds back bytes that do not yet form complete UTF-8 characters, so streamed text
// never contains a broken sequence. Invalid bytes are passed through as U+FFFD.
class Utf8Stream {
  public:
    std::string push(const std::string& bytes);   // the complete part so far
    std::string flush();                          // whatever remains, at the end
  private:
    std::string pending_;
};

}  // namespace ffnskip
