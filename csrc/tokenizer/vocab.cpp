// Vocabulary loading (llama.cpp's defaults and fix-ups), special-token
// partitioning, pieces and detokenization. The two tokenizers live in
// vocab-spm.cpp and vocab-bpe.cpp.
#include "tokenizer/vocab.h"

#include <ffnskip/ffnskip.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <string_view>

#include "gguf/gguf.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab-impl.h"

namespace ffnskip {

Vocab::~Vocab() = default;

const std::string& Vocab::token_text(int32_t id) const {
    if (id < 0 || id >= n_tokens()) throw std::invalid_argument("token id " + std::to_string(id) + " out of range");
    return texts_[id];
}

TokenType Vocab::token_type(int32_t id) const {
    if (id < 0 || id >= n_tokens()) throw std::invalid_argument("token id " + std::to_string(id) + " out of range");
    return types_[id];
}

bool Vocab::is_eog(int32_t id) const {
    return id >= 0 && std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

std::string Vocab::detokenize(const std::vector<int32_t>& ids, bool render_special) const {
    std::string out;
    for (int32_t id : ids) out += token_to_piece(id, render_special);
    return out;
}

// ---- loading ----------------------------------------------------------------------

std::unique_ptr<Vocab> Vocab::from_gguf(const GgufFile& file) {
    VocabData d;
    d.model = file.get_string("tokenizer.ggml.model");
    d.pre = file.get_string("tokenizer.ggml.pre", "");
    d.name = file.get_string("general.name", "");
    d.tokens = file.get_string_array("tokenizer.ggml.tokens");
    if (const GgufValue* v = file.find("tokenizer.ggml.scores")) {
        if (v->type == GgufValueType::ARRAY && v->array_type == GgufValueType::INT32) {
            for (int32_t s : file.get_int_array("tokenizer.ggml.scores")) d.scores.push_back((float)s);
        } else {
            d.scores = file.get_float_array("tokenizer.ggml.scores");
        }
    }
    d.types = file.get_int_array("tokenizer.ggml.token_type");
    d.merges = file.get_string_array("tokenizer.ggml.merges");
    if (d.model == "gpt2" && !file.has("tokenizer.ggml.merges"))
        throw FormatError(file.path() + ": tokenizer.ggml.merges is missing (required by the gpt2 tokenizer)");
    struct Key { const char* name; int64_t* id; };
    const Key keys[] = {
        {"tokenizer.ggml.bos_token_id", &d.bos}, {"tokenizer.ggml.eos_token_id", &d.eos},
        {"tokenizer.ggml.eot_token_id", &d.eot}, {"tokenizer.ggml.eom_token_id", &d.eom},
        {"tokenizer.ggml.unknown_token_id", &d.unk}, {"tokenizer.ggml.seperator_token_id", &d.sep},
        {"tokenizer.ggml.padding_token_id", &d.pad},
        {"tokenizer.ggml.fim_pre_token_id", &d.fim_pre}, {"tokenizer.ggml.fim_suf_token_id", &d.fim_suf},
        {"tokenizer.ggml.fim_mid_token_id", &d.fim_mid}, {"tokenizer.ggml.fim_pad_token_id", &d.fim_pad},
        {"tokenizer.ggml.fim_rep_token_id", &d.fim_rep}, {"tokenizer.ggml.fim_sep_token_id", &d.fim_sep},
        {"tokenizer.ggml.prefix_token_id", &d.fim_pre}, {"tokenizer.ggml.suffix_token_id", &d.fim_suf},
        {"tokenizer.ggml.middle_token_id", &d.fim_mid},
    };
    for (const Key& k : keys) {
        if (!file.has(k.name)) continue;
        int64_t id = file.get_int(k.name);
        if (id < 0 || id >= (int64_t)d.tokens.size())
            throw FormatError(file.path() + ": " + k.name + " = " + std::to_string(id) + " is not a token id (vocabulary has " +
                              std::to_string(d.tokens.size()) + " tokens)");
        *k.id = id;
    }
    auto flag = [&](const char* key) { return file.has(key) ? (int)file.get_bool(key, false) : -1; };
    d.add_bos = flag("tokenizer.ggml.add_bos_token");
    d.add_eos = flag("tokenizer.ggml.add_eos_token");
    d.add_space_prefix = flag("tokenizer.ggml.add_space_prefix");
    try {
        return std::unique_ptr<Vocab>(new VocabImpl(std::move(d)));
    } catch (const FormatError& e) {
        throw FormatError(file.path() + ": " + e.what());
    }
}

namespace {
bool one_of(const std::string& s, std::initializer_list<const char*> list) {
    for (const char* x : list)
        if (s == x) return true;
    return false;
}
bool c_isspace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
}  // namespace

VocabImpl::VocabImpl(VocabData d) {
    model_ = d.model;
    pre_ = d.pre;
    const int64_t n = (int64_t)d.tokens.size();
    int64_t unk = -1;
    if (d.model == "llama") {
        spm_ = true;
        bos_ = 1; eos_ = 2; unk = 0;
        add_space_prefix_ = true;
        clean_spaces_ = false;
        add_bos_ = true;
        add_eos_ = false;
    } else if (d.model == "gpt2") {
        spm_ = false;
        bos_ = 11; eos_ = 11;
        pre_tok_ = PreTokenizer::for_name(d.pre);
        if (d.pre.empty()) pre_ = "default";
        add_space_prefix_ = false;
        clean_spaces_ = pre_tok_.clean_spaces;
        add_bos_ = pre_tok_.add_bos;
        if (pre_tok_.no_bos) bos_ = -1;
        for (size_t i = 0; i < d.merges.size(); i++) {
            const std::string& m = d.merges[i];
            size_t pos = m.find(' ', 1);
            std::string key = pos == std::string::npos ? std::string("\xff") : m.substr(0, pos) + '\xff' + m.substr(pos + 1);
            bpe_ranks_.emplace(key, (int)i);   // the first rank of a pair wins
        }
    } else {
        throw FormatError("unsupported tokenizer model (tokenizer.ggml.model) '" + d.model + "'; supported: llama, gpt2");
    }
    if (d.add_space_prefix >= 0) add_space_prefix_ = d.add_space_prefix != 0;

    if (n == 0) throw FormatError("tokenizer.ggml.tokens is missing or empty");
    if (!d.scores.empty() && (int64_t)d.scores.size() != n)
        throw FormatError("tokenizer.ggml.scores has " + std::to_string(d.scores.size()) + " entries for " +
                          std::to_string(n) + " tokens");
    if (!d.types.empty() && (int64_t)d.types.size() != n)
        throw FormatError("tokenizer.ggml.token_type has " + std::to_string(d.types.size()) + " entries for " +
                          std::to_string(n) + " tokens");

    texts_.resize(n);
    scores_.assign(n, 0.0f);
    types_.assign(n, TokenType::normal);
    attrs_.assign(n, ATTR_NORMAL);
    token_to_id_.reserve(n);
    for (int64_t i = 0; i < n; i++) {
        std::string text = d.tokens[i];
        if (text.empty()) text = "[EMPTY_" + std::to_string(i) + "]";
        token_to_id_.emplace(text, (int32_t)i);
        texts_[i] = std::move(text);
        if (!d.scores.empty()) scores_[i] = d.scores[i];
        if (!d.types.empty()) {
            int32_t t = d.types[i];
            types_[i] = (t >= 0 && t <= 6) ? (TokenType)t : TokenType::undefined;
            switch (t) {
                case 1: attrs_[i] = ATTR_NORMAL; break;
                case 2: attrs_[i] = ATTR_UNKNOWN; break;
                case 3: attrs_[i] = ATTR_CONTROL; break;
                case 4: attrs_[i] = ATTR_USER_DEFINED; break;
                case 5: attrs_[i] = ATTR_UNUSED; break;
                case 6: attrs_[i] = ATTR_BYTE; break;
                default: attrs_[i] = ATTR_UNDEFINED; break;
            }
        }
    }

    // Special ids: a default outside the vocabulary is dropped; the file's values win.
    int32_t eom = -1, sep = -1, fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
    auto pick = [&](int32_t& id, int64_t from_file) {
        if (id >= n) id = -1;
        if (from_file >= 0) id = (int32_t)from_file;
    };
    int32_t unk32 = (int32_t)unk;
    pick(bos_, d.bos); pick(eos_, d.eos); pick(eot_, d.eot); pick(eom, d.eom); pick(unk32, d.unk);
    pick(sep, d.sep); pick(pad_, d.pad);
    pick(fim_pre, d.fim_pre); pick(fim_suf, d.fim_suf); pick(fim_mid, d.fim_mid);
    pick(fim_pad, d.fim_pad); pick(fim_rep, d.fim_rep); pick(fim_sep, d.fim_sep);
    unk_ = unk32;
    if (d.add_bos >= 0) add_bos_ = d.add_bos != 0;
    if (d.add_eos >= 0) add_eos_ = d.add_eos != 0;
    if (add_bos_ && bos_ < 0) throw FormatError("tokenizer.ggml.add_bos_token is true, but there is no BOS token");
    if (add_eos_ && eos_ < 0) throw FormatError("tokenizer.ggml.add_eos_token is true, but there is no EOS token");

    // Special tokens recognised by their text, as llama.cpp does (it also makes them control tokens).
    auto mark_control = [&](int32_t id) { attrs_[id] |= ATTR_CONTROL; };
    auto detect = [&](int32_t& slot, const std::string& text, int32_t id, std::initializer_list<const char*> names) {
        if (slot == -1 && one_of(text, names)) {
            slot = id;
            mark_control(id);
        }
    };
    for (int32_t id = 0; id < (int32_t)n; id++) {
        const std::string& t = texts_[id];
        if (t.size() < 3 || t.size() > 32) continue;
        detect(eot_, t, id, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
                             "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"});
        detect(eom, t, id, {"<|eom_id|>"});
        detect(fim_pre, t, id, {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                                "<|code_prefix|>", "<|prefix|>"});
        detect(fim_suf, t, id, {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                                "<|code_suffix|>", "<|suffix|>"});
        detect(fim_mid, t, id, {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                                "<|code_middle|>", "<|middle|>"});
        detect(fim_pad, t, id, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"});
        detect(fim_rep, t, id, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"});
        detect(fim_sep, t, id, {"<|file_sep|>"});
    }
    for (int32_t id = 0; id < (int32_t)n; id++) {
        if ((attrs_[id] & ATTR_CONTROL) && texts_[id].find("unused") != std::string::npos) attrs_[id] |= ATTR_UNUSED;
    }

    // End-of-generation tokens.
    std::vector<int32_t> eog;
    for (int32_t id : {fim_pad, fim_rep, fim_sep})
        if (id >= 0) eog.push_back(id);
    for (int32_t id = 0; id < (int32_t)n; id++) {
        const std::string& t = texts_[id];
        if (one_of(t, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                       "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                       "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                       "<｜end▁of▁sentence｜>", "[e~["})) {
            eog.push_back(id);
            mark_control(id);
        }
        if (one_of(t, {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})) attrs_[id] = ATTR_USER_DEFINED;
    }
    for (int32_t id : {eos_, eot_, eom})
        if (id >= 0) eog.push_back(id);
    std::sort(eog.begin(), eog.end());
    eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
    auto has_eog_text = [&](const char* text) {
        for (int32_t id : eog)
            if (texts_[id] == text) return id;
        return -1;
    };
    int32_t end_id = has_eog_text("<|end|>");
    if (end_id >= 0 && ((has_eog_text("<|return|>") >= 0 && has_eog_text("<|call|>") >= 0) ||
                        ((has_eog_text("<|call|>") >= 0 || has_eog_text("<|calls|>") >= 0) && has_eog_text("<|flush|>") >= 0))) {
        eog.erase(std::find(eog.begin(), eog.end(), end_id));
        attrs_[end_id] = ATTR_USER_DEFINED;
    }
    int32_t s_id = has_eog_text("</s>");
    if (s_id >= 0 && has_eog_text("<|tool_response>") >= 0) {
        eog.erase(std::find(eog.begin(), eog.end(), s_id));
        attrs_[s_id] = ATTR_NORMAL;
    }
    eog_ids_ = eog;

    // Tokens matched in the text before tokenizing, longest first.
    for (int32_t id = 0; id < (int32_t)n; id++)
        if (attrs_[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) special_tokens_.push_back(id);
    std::stable_sort(special_tokens_.begin(), special_tokens_.end(),
                     [&](int32_t a, int32_t b) { return texts_[a].size() > texts_[b].size(); });

    pieces_.resize(n);
    for (int32_t id = 0; id < (int32_t)n; id++) pieces_[id] = piece_for_cache(id);

    // Per-model attributes llama.cpp sets by name (Phi-3 strips spaces after its special tokens).
    std::string name = d.name;
    for (char& c : name) c = (char)std::tolower((unsigned char)c);
    if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
        for (int32_t id : special_tokens_) attrs_[id] |= ATTR_RSTRIP;
        auto set = [&](const char* text, bool on) {
            int32_t id = text_to_token(text);
            if (id < 0) throw FormatError(std::string("Phi-3 vocabulary lacks the token ") + text);
            attrs_[id] = on ? (attrs_[id] | ATTR_RSTRIP) : (attrs_[id] & ~(uint32_t)ATTR_RSTRIP);
        };
        set("</s>", true);
        set("<unk>", false);
        set("<s>", false);
        set("<|endoftext|>", false);
    }
}

// ---- special tokens in the text ------------------------------------------------------

void VocabImpl::partition_special(const std::string& text, std::vector<Fragment>& frags, bool parse_special) const {
    frags.clear();
    if (text.empty()) return;
    frags.push_back({-1, 0, text.size()});
    std::vector<Fragment> next;
    for (int32_t id : special_tokens_) {
        if (!parse_special && (attrs_[id] & (ATTR_CONTROL | ATTR_UNKNOWN))) continue;   // user-defined always
        const std::string& special = texts_[id];
        next.clear();
        bool changed = false;
        for (const Fragment& f : frags) {
            if (f.token >= 0) { next.push_back(f); continue; }
            size_t off = f.offset, len = f.length;
            while (len > 0) {
                size_t match = std::string_view(text.data(), off + len).find(special, off);
                if (match == std::string_view::npos) break;
                changed = true;
                size_t left = match - off;
                if (attrs_[id] & ATTR_LSTRIP)
                    while (left > 0 && c_isspace(text[off + left - 1])) left--;
                if (left > 0) next.push_back({-1, off, left});
                next.push_back({id, 0, 0});
                size_t right_off = match + special.size();
                size_t right_len = off + len - right_off;
                if (attrs_[id] & ATTR_RSTRIP)
                    while (right_len > 0 && c_isspace(text[right_off])) { right_off++; right_len--; }
                off = right_off;
                len = right_len;
            }
            if (len > 0) next.push_back({-1, off, len});
        }
        if (changed) frags.swap(next);
    }
}

std::vector<int32_t> VocabImpl::tokenize(const std::string& text, bool add_special, bool parse_special) const {
    std::vector<Fragment> frags;
    partition_special(text, frags, parse_special);
    std::vector<int32_t> out;
    if (add_special && add_bos_) out.push_back(bos_);
    bool prev_special = true;   // SentencePiece: a space before the first text, and after special tokens
    for (const Fragment& f : frags) {
        if (f.token >= 0) {
            out.push_back(f.token);
            prev_special = true;
            continue;
        }
        if (spm_) {
            std::string piece;
            if (add_space_prefix_ && prev_special) piece = " ";
            piece.append(text, f.offset, f.length);
            std::string escaped;
            escaped.reserve(piece.size() + 16);
            for (char c : piece) {
                if (c == ' ') escaped += "\xe2\x96\x81";
                else escaped += c;
            }
            spm_tokenize(escaped, out);
        } else {
            bpe_tokenize(text.substr(f.offset, f.length), out);
        }
        prev_special = false;
    }
    if (add_special && add_eos_) out.push_back(eos_);
    return out;
}

// ---- pieces -------------------------------------------------------------------------------

void VocabImpl::check_id(int32_t id) const {
    if (id < 0 || id >= n_tokens())
        throw std::invalid_argument("token id " + std::to_string(id) + " out of range [0, " + std::to_string(n_tokens()) + ")");
}

std::string VocabImpl::piece_for_cache(int32_t id) const {
    const uint32_t attr = attrs_[id];
    const std::string& text = texts_[id];
    if (attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) return text;
    if (attr & ATTR_NORMAL) {
        if (spm_) {
            std::string out;
            for (size_t i = 0; i < text.size(); i++) {
                if (text.compare(i, 3, "\xe2\x96\x81") == 0) { out += ' '; i += 2; }
                else out += text[i];
            }
            return out;
        }
        std::string out;
        for (uint32_t cp : utf8_to_cpts(text)) {
            int b = gpt2_to_byte(cp);
            if (b >= 0) {
                out += (char)b;
            } else {   // not a byte-level character: llama.cpp writes a marker
                std::string utf8;
                utf8_append(utf8, cp);
                out += "[UNK_BYTE_0x";
                static const char* hex = "0123456789abcdef";
                for (unsigned char c : utf8) { out += hex[c >> 4]; out += hex[c & 15]; }
                out += text + "]";
            }
        }
        return out;
    }
    if (attr & ATTR_BYTE) {
        if (text.size() >= 5) return std::string(1, (char)std::strtol(text.substr(3, 2).c_str(), nullptr, 16));
        return std::string();
    }
    return std::string();   // unused / undefined tokens have no text
}

std::string VocabImpl::token_to_piece(int32_t id, bool render_special) const {
    check_id(id);
    if (!render_special && (attrs_[id] & (ATTR_UNKNOWN | ATTR_CONTROL))) return std::string();
    return pieces_[id];
}

std::string VocabImpl::detokenize(const std::vector<int32_t>& ids, bool render_special) const {
    std::string text;
    bool remove_space = add_space_prefix_;
    for (int32_t id : ids) {
        const std::string piece = token_to_piece(id, render_special);
        if (remove_space && !piece.empty() && piece[0] == ' ') text.append(piece, 1, std::string::npos);
        else text += piece;
        remove_space = false;
    }
    if (!clean_spaces_ || text.empty()) return text;

    // llama.cpp's clean_up_tokenization_spaces, three passes.
    std::string a;   // " ?", " !", " .", " ,"
    a += text[0];
    for (size_t i = 1; i < text.size(); i++) {
        char x = text[i];
        if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) a.pop_back();
        a += x;
    }
    std::string b;   // " ' " -> "'"
    b += a[0];
    for (size_t i = 1; i < a.size(); i++) {
        char x = a[i];
        if (x == '\'' && i + 1 < a.size() && a[i - 1] == ' ' && a[i + 1] == ' ') {
            b.pop_back();
            b += x;
            a[++i] = '\0';   // the next space goes too (and no longer counts as a space)
            continue;
        }
        b += x;
    }
    std::string c;   // " 's", " 'm", " 're", " 've"
    c += b[0];
    for (size_t i = 1; i < b.size(); i++) {
        char x = b[i];
        if (b[i - 1] == ' ' && x == '\'' && i + 1 < b.size()) {
            char x1 = b[i + 1];
            if (x1 == 's' || x1 == 'm') c.pop_back();
            else if (i + 2 < b.size() && ((x1 == 'r' && b[i + 2] == 'e') || (x1 == 'v' && b[i + 2] == 'e'))) c.pop_back();
        }
        c += x;
    }
    return c;
}

// ---- streaming ----------------------------------------------------------------------------

namespace {
// Length of a valid UTF-8 sequence starting with `lead` (0: never valid), and the
// range its second byte must lie in (stricter than 80..BF for E0, ED, F0, F4).
int seq_len(uint8_t lead, uint8_t& lo, uint8_t& hi) {
    lo = 0x80; hi = 0xBF;
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) {
        if (lead == 0xE0) lo = 0xA0;
        if (lead == 0xED) hi = 0x9F;
        return 3;
    }
    if (lead >= 0xF0 && lead <= 0xF4) {
        if (lead == 0xF0) lo = 0x90;
        if (lead == 0xF4) hi = 0x8F;
        return 4;
    }
    return 0;
}
const char* const k_replacement = "\xef\xbf\xbd";
}  // namespace

std::string Utf8Stream::push(const std::string& bytes) {
    pending_ += bytes;
    std::string out;
    size_t i = 0, n = pending_.size();
    while (i < n) {
        uint8_t lo, hi;
        uint8_t lead = (uint8_t)pending_[i];
        int len = seq_len(lead, lo, hi);
        if (len == 1) { out += (char)lead; i++; continue; }
        if (len == 0) { out += k_replacement; i++; continue; }
        // how many bytes of the sequence are present and valid
        int ok = 1;
        while (ok < len && i + ok < n) {
            uint8_t c = (uint8_t)pending_[i + ok];
            uint8_t l = ok == 1 ? lo : 0x80, h = ok == 1 ? hi : 0xBF;
            if (c < l || c > h) break;
            ok++;
        }
        if (ok == len) {
            out.append(pending_, i, len);
            i += len;
        } else if (i + ok == n) {
            break;   // incomplete so far: wait for more bytes
        } else {
            out += k_replacement;   // one replacement for the broken prefix
            i += ok;
        }
    }
    pending_.erase(0, i);
    return out;
}

std::string Utf8Stream::flush() {
    std::string out = pending_.empty() ? std::string() : std::string(k_replacement);
    pending_.clear();
    return out;
}

}  // namespace ffnskip
