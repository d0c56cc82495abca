// Code points for the tokenizers: UTF-8 decoding as llama.cpp does it, character
// classes (from generated tables), and GPT-2's byte <-> printable-character mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ffnskip {

// General category, reduced to what the pre-tokenizer regexes distinguish.
enum class UnicodeClass : uint8_t {
    undefined = 0, number = 1, letter = 2, separator = 3, mark = 4, punctuation = 5, symbol = 6, control = 7,
};

extern const uint32_t k_unicode_class_runs[];   // unicode-data.cpp (generated)
extern const size_t k_unicode_class_run_count;

UnicodeClass unicode_class(uint32_t cp);
bool unicode_is_whitespace(uint32_t cp);       // the White_Space property

// Bytes of a UTF-8 sequence by its first byte (1 for stray continuation bytes).
inline size_t utf8_len(uint8_t first) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[first >> 4];
}
// Decodes text; every byte that does not start a well-formed sequence becomes U+FFFD.
std::vector<uint32_t> utf8_to_cpts(const std::string& text);
void utf8_append(std::string& out, uint32_t cp);

// GPT-2 byte-level alphabet: each byte is shown as one printable character.
const std::string& byte_to_gpt2(uint8_t byte);
// The byte a GPT-2 character stands for; -1 when it is not one.
int gpt2_to_byte(uint32_t cp);

}  // namespace ffnskip
