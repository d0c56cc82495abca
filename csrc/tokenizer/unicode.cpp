#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace ffnskip {

namespace {
// One byte per code point, expanded once from the run table (1.1 MB, cheap lookups).
const std::vector<uint8_t>& class_table() {
    static const std::vector<uint8_t> table = [] {
        std::vector<uint8_t> t(0x110000, 0);
        for (size_t i = 0; i < k_unicode_class_run_count; i++) {
            uint32_t first = k_unicode_class_runs[i] >> 4;
            uint32_t end = i + 1 < k_unicode_class_run_count ? k_unicode_class_runs[i + 1] >> 4 : 0x110000;
            std::fill(t.begin() + first, t.begin() + end, (uint8_t)(k_unicode_class_runs[i] & 15));
        }
        return t;
    }();
    return table;
}
}  // namespace

UnicodeClass unicode_class(uint32_t cp) {
    if (cp >= 0x110000) return UnicodeClass::undefined;
    return (UnicodeClass)class_table()[cp];
}

bool unicode_is_whitespace(uint32_t cp) {
    if (cp >= 0x09 && cp <= 0x0D) return true;
    if (cp >= 0x2000 && cp <= 0x200A) return true;
    switch (cp) {
        case 0x20: case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029:
        case 0x202F: case 0x205F: case 0x3000: return true;
        default: return false;
    }
}

std::vector<uint32_t> utf8_to_cpts(const std::string& text) {
    std::vector<uint32_t> out;
    out.reserve(text.size());
    const uint8_t* s = (const uint8_t*)text.data();
    size_t n = text.size(), i = 0;
    auto cont = [&](size_t k) { return i + k < n && (s[i + k] & 0xC0) == 0x80; };
    while (i < n) {
        uint8_t c = s[i];
        if (!(c & 0x80)) { out.push_back(c); i += 1; continue; }
        if ((c & 0xE0) == 0xC0 && cont(1)) {
            out.push_back(((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu)); i += 2; continue;
        }
        if ((c & 0xF0) == 0xE0 && cont(1) && cont(2)) {
            out.push_back(((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu)); i += 3; continue;
        }
        if ((c & 0xF8) == 0xF0 && cont(1) && cont(2) && cont(3)) {
            out.push_back(((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) | (s[i + 3] & 0x3Fu));
            i += 4; continue;
        }
        out.push_back(0xFFFD);   // one byte at a time, as llama.cpp skips invalid input
        i += 1;
    }
    return out;
}

void utf8_append(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += (char)cp;
    } else if (cp < 0x800) {
        out += (char)(0xC0 | (cp >> 6));
        out += (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += (char)(0xE0 | (cp >> 12));
        out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    } else {
        out += (char)(0xF0 | (cp >> 18));
        out += (char)(0x80 | ((cp >> 12) & 0x3F));
        out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    }
}

namespace {
// GPT-2: printable Latin-1 bytes keep their code point; the other 68 bytes are
// numbered from U+0100 upwards in byte order.
struct Gpt2Alphabet {
    std::array<uint32_t, 256> cp;
    std::array<std::string, 256> utf8;
    Gpt2Alphabet() {
        uint32_t next = 256;
        for (int b = 0; b < 256; b++) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            cp[b] = printable ? (uint32_t)b : next++;
            utf8_append(utf8[b], cp[b]);
        }
    }
};
const Gpt2Alphabet& gpt2_alphabet() {
    static const Gpt2Alphabet a;
    return a;
}
}  // namespace

const std::string& byte_to_gpt2(uint8_t byte) { return gpt2_alphabet().utf8[byte]; }

int gpt2_to_byte(uint32_t cp) {
    if (cp < 256) {
        bool printable = (cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF);
        if (printable) return (int)cp;
        return -1;
    }
    if (cp < 256 + 68) {
        const auto& a = gpt2_alphabet();
        for (int b = 0; b < 256; b++)
            if (a.cp[b] == cp) return b;
    }
    return -1;
}

}  // namespace ffnskip
