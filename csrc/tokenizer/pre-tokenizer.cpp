#include "tokenizer/pre-tokenizer.h"

#include <ffnskip/ffnskip.h>

#include "tokenizer/unicode.h"

namespace ffnskip {

namespace {
// The patterns, as llama.cpp writes them. Characters that Unicode normalization
// would change are written as \u escapes so the source cannot silently alter them
// (llama.cpp's adaptation of the HF regexes; the
// case-insensitive groups spelled out as classes).
const char* const k_gpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const char* const k_llama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const k_qwen2 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const k_tekken =
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const k_gpt4o =
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const k_poro = " ?[^(\\s|.,!?…。，、।۔،)]+";
const char* const k_seed_coder =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const k_bailingmoe =
    "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+";
const char* const k_deepseek_llm_letters =
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1F7Dᾀ-ᾴᾶ-ᾼ\u1FBEῂ-ῄῆ-ῌῐ-\u1FD3ῖ-\u1FDBῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212A-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";

enum class Family { DEFAULT, GPT2, LLAMA3, QWEN2, STARCODER, FALCON, DEEPSEEK_LLM, DEEPSEEK_CODER,
                    TEKKEN, GPT4O, PORO, VIKING, CHAMELEON, SEED_CODER, BAILINGMOE };

std::vector<std::string> patterns(Family f) {
    switch (f) {
        case Family::DEFAULT:
            return {"[\\p{P}\\$\\+<=>\\^~\\|]+", k_gpt2, "\\p{N}+", "[0-9][0-9][0-9]"};
        case Family::GPT2: return {k_gpt2};
        case Family::LLAMA3: return {k_llama3};
        case Family::QWEN2: return {k_qwen2};
        case Family::STARCODER: return {"\\p{N}", k_gpt2};
        case Family::FALCON: return {"[\\p{P}\\$\\+<=>\\^~\\|`]+", k_gpt2, "[0-9][0-9][0-9]"};
        case Family::DEEPSEEK_LLM:
            return {"[\r\n]", k_deepseek_llm_letters, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$",
                    "[一-龥ࠀ-一가-퟿]+", "\\p{N}+"};
        case Family::DEEPSEEK_CODER:
            return {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"};
        case Family::TEKKEN: return {k_tekken};
        case Family::GPT4O: return {k_gpt4o};
        case Family::PORO: return {k_poro};
        case Family::VIKING: return {k_poro, "\\p{N}"};
        case Family::CHAMELEON:
            return {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
                    "[\\p{P}!-/:-@\\[-`{-~]", k_gpt2};
        case Family::SEED_CODER: return {k_seed_coder};
        case Family::BAILINGMOE: return {k_bailingmoe};
    }
    return {};
}

struct Entry {
    const char* name;
    Family family;
    bool clean_spaces, ignore_merges, add_bos;
};

// tokenizer.ggml.pre names and their settings, as llama.cpp assigns them.
const Entry k_entries[] = {
    {"default", Family::DEFAULT, true, false, false},
    {"llama3", Family::LLAMA3, true, true, true},
    {"llama-v3", Family::LLAMA3, true, true, true},
    {"llama-bpe", Family::LLAMA3, true, true, true},
    {"falcon3", Family::LLAMA3, true, true, true},
    {"falcon-h1", Family::LLAMA3, true, true, true},
    {"pixtral", Family::LLAMA3, true, true, true},
    {"midm-2.0", Family::LLAMA3, true, true, true},
    {"lfm2", Family::LLAMA3, true, true, true},
    {"deepseek-llm", Family::DEEPSEEK_LLM, false, false, false},
    {"deepseek-coder", Family::DEEPSEEK_CODER, false, false, false},
    {"falcon", Family::FALCON, true, false, false},
    {"mpt", Family::GPT2, true, false, false},
    {"starcoder", Family::STARCODER, true, false, false},
    {"gpt-2", Family::GPT2, true, false, false},
    {"phi-2", Family::GPT2, true, false, false},
    {"jina-es", Family::GPT2, true, false, false},
    {"jina-de", Family::GPT2, true, false, false},
    {"gigachat", Family::GPT2, true, false, false},
    {"jina-v2-es", Family::GPT2, true, false, false},
    {"jina-v2-de", Family::GPT2, true, false, false},
    {"a.x-4.0", Family::GPT2, true, false, false},
    {"mellum", Family::GPT2, true, false, false},
    {"exaone4", Family::GPT2, true, false, false},
    {"refact", Family::STARCODER, true, false, false},
    {"command-r", Family::STARCODER, false, false, false},
    {"qwen2", Family::QWEN2, false, false, false},
    {"deepseek-r1-qwen", Family::QWEN2, false, false, false},
    {"megrez", Family::QWEN2, true, false, false},
    {"stablelm2", Family::QWEN2, true, false, false},
    {"olmo", Family::GPT2, true, false, false},
    {"dbrx", Family::LLAMA3, true, false, false},
    {"smaug-bpe", Family::LLAMA3, true, false, false},
    {"poro-chat", Family::PORO, false, false, false},
    {"bloom", Family::PORO, true, false, false},
    {"gpt3-finnish", Family::PORO, true, false, false},
    {"glm4", Family::LLAMA3, true, false, false},
    {"chatglm-bpe", Family::LLAMA3, true, false, false},
    {"viking", Family::VIKING, false, false, false},
    {"jais", Family::GPT2, true, false, false},
    {"tekken", Family::TEKKEN, false, true, true},
    {"smollm", Family::STARCODER, false, false, false},
    {"codeshell", Family::STARCODER, true, false, false},
    {"exaone", Family::STARCODER, true, false, false},
    {"chameleon", Family::CHAMELEON, false, false, true},
    {"minerva-7b", Family::STARCODER, true, false, false},
    {"mellum2", Family::STARCODER, true, false, false},
    {"gpt-4o", Family::GPT4O, false, false, false},
    {"llama4", Family::GPT4O, false, false, false},
    {"minimax-m2", Family::GPT4O, false, false, false},
    {"trillion", Family::GPT2, false, false, false},
    {"granite-docling", Family::GPT2, false, false, false},
    {"bailingmoe", Family::BAILINGMOE, false, false, false},
    {"bailingmoe2", Family::BAILINGMOE, false, false, false},
    {"llada-moe", Family::BAILINGMOE, false, false, false},
    {"seed-coder", Family::SEED_CODER, false, false, false},
    {"hunyuan", Family::QWEN2, false, false, false},
    {"grok-2", Family::QWEN2, false, false, false},
    {"solar-open", Family::QWEN2, false, false, false},
};
}  // namespace

PreTokenizer PreTokenizer::for_name(const std::string& name) {
    const std::string& key = name.empty() ? std::string("default") : name;   // llama.cpp's fallback
    for (const Entry& e : k_entries) {
        if (key != e.name) continue;
        PreTokenizer pre;
        for (const std::string& p : patterns(e.family)) pre.regexes.emplace_back(p);
        pre.clean_spaces = e.clean_spaces;
        pre.ignore_merges = e.ignore_merges;
        pre.add_bos = e.add_bos;
        pre.no_bos = key == "glm4" || key == "chatglm-bpe";
        return pre;
    }
    throw FormatError("unknown or unsupported pre-tokenizer (tokenizer.ggml.pre) '" + name + "'");
}

std::vector<std::string> PreTokenizer::split(const std::string& text) const {
    const std::vector<uint32_t> cpts = utf8_to_cpts(text);
    std::vector<uint32_t> collapsed;
    for (const CptRegex& re : regexes) {
        if (re.collapsed() && collapsed.empty()) {
            collapsed.resize(cpts.size());
            for (size_t i = 0; i < cpts.size(); i++) collapsed[i] = collapse_cpt(cpts[i]);
            break;
        }
    }

    // Piece lengths in code points; every regex splits each piece further: its
    // matches and the text between them all become pieces.
    std::vector<size_t> pieces = {cpts.size()};
    std::vector<size_t> next;
    for (const CptRegex& re : regexes) {
        const uint32_t* units = re.collapsed() ? collapsed.data() : cpts.data();
        next.clear();
        size_t start = 0;
        for (size_t len : pieces) {
            const uint32_t* s = units + start;
            size_t done = 0, from = 0, b = 0, e = 0;
            while (from <= len && re.search(s, len, from, b, e)) {
                if (b > done) next.push_back(b - done);
                if (e > b) next.push_back(e - b);
                done = e;
                from = e > b ? e : e + 1;
            }
            if (done < len) next.push_back(len - done);
            start += len;
        }
        pieces.swap(next);
    }

    std::vector<std::string> words;
    words.reserve(pieces.size());
    size_t start = 0;
    std::string utf8;
    for (size_t len : pieces) {
        std::string word;
        for (size_t i = start; i < start + len; i++) {
            utf8.clear();
            utf8_append(utf8, cpts[i]);
            for (unsigned char ch : utf8) word += byte_to_gpt2(ch);
        }
        if (!word.empty()) words.push_back(std::move(word));
        start += len;
    }
    return words;
}

}  // namespace ffnskip
