// Byte-level BPE pre-tokenization: the regexes llama.cpp uses for each
// tokenizer.ggml.pre name, and the split of text into byte-encoded words.
#pragma once

#include <string>
#include <vector>

#include "tokenizer/regex.h"

namespace ffnskip {

struct PreTokenizer {
    std::vector<CptRegex> regexes;   // applied in turn, each to the pieces of the previous
    bool ignore_merges = false;      // a word that is a token is used whole (llama3)
    bool clean_spaces = true;        // detokenize removes " ," " ." and the like
    bool add_bos = false;            // default of add_bos_token
    bool no_bos = false;             // the pre-tokenizer has no BOS token

    // Throws FormatError for a name llama.cpp does not know or we do not support.
    static PreTokenizer for_name(const std::string& name);

    // Splits text into words, each in GPT-2's byte-level alphabet.
    std::vector<std::string> split(const std::string& text) const;
};

}  // namespace ffnskip
