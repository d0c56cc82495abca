// A small backtracking regex engine over code points, for the pre-tokenizer patterns.
// Leftmost-first (PCRE / ECMAScript) semantics: alternatives are tried in order,
// quantifiers are greedy unless followed by '?'. Supports: literals, '.', classes
// with ranges, negation and the escapes below, groups ( ), (?: ), lookahead (?= ),
// (?! ), quantifiers * + ? {m} {m,} {m,n}, anchors ^ $, and the escapes
// \s \S \d \D \w \W \r \n \t \f \v \xHH \uHHHH \p{N} \p{L} \p{P} \p{M} \p{S}.
//
// Patterns that use \p{..} run on the "collapsed" text llama.cpp builds for them:
// ASCII stays, every other code point becomes one stand-in for its class (see
// collapse_cpt). Other patterns run on the code points themselves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ffnskip {

// The stand-in a code point becomes in collapsed text.
uint32_t collapse_cpt(uint32_t cp);

class CptRegex {
  public:
    // Throws std::invalid_argument on a pattern it cannot parse.
    explicit CptRegex(const std::string& pattern);

    bool collapsed() const { return collapsed_; }
    const std::string& pattern() const { return pattern_; }

    // The first match in s[from, n) (leftmost start, then first alternative that
    // succeeds). '$' matches at n. Returns false when there is none.
    bool search(const uint32_t* s, size_t n, size_t from, size_t& begin, size_t& end) const;

  private:
    enum Op : uint8_t { CHAR, CLASS, ANY, SPLIT, JMP, BOL, EOL, LOOK, MATCH };
    struct Inst {
        Op op;
        bool neg = false;     // LOOK: negative lookahead
        uint32_t c = 0;       // CHAR: code point; CLASS: class index
        int x = 0, y = 0;     // SPLIT: preferred, other; JMP: x; LOOK: body x, continue y
    };
    struct Class {
        bool neg = false;
        uint32_t props = 0;   // bit set of Prop
        std::vector<std::pair<uint32_t, uint32_t>> ranges;
    };
    struct Node;

    long run(int pc, const uint32_t* s, size_t n, size_t pos) const;
    bool class_has(const Class& cls, uint32_t u) const;

    // parsing
    Node* parse_alt();
    Node* parse_seq();
    Node* parse_atom();
    uint32_t parse_escape(Class* cls);   // adds to cls when it is a class escape
    int emit(const Node* node);
    std::vector<Node*> nodes_;           // owned during construction

    std::string pattern_;
    std::vector<uint32_t> src_;
    size_t at_ = 0;
    bool collapsed_ = false;
    std::vector<Inst> prog_;
    std::vector<Class> classes_;
};

}  // namespace ffnskip
