#include "tokenizer/regex.h"

#include <stdexcept>

#include "tokenizer/unicode.h"

namespace ffnskip {

namespace {
// Stand-ins in collapsed text (llama.cpp's choice of bytes; \s matches 0x0B).
const uint32_t k_collapsed_other = 0xD0, k_collapsed_number = 0xD1, k_collapsed_letter = 0xD2,
               k_collapsed_punct = 0xD3, k_collapsed_mark = 0xD4, k_collapsed_symbol = 0xD5;

enum Prop : uint32_t { P_SPACE = 1, P_NOT_SPACE = 2, P_DIGIT = 4, P_NOT_DIGIT = 8, P_WORD = 16, P_NOT_WORD = 32 };

bool is_space(uint32_t u) { return u == ' ' || (u >= 0x09 && u <= 0x0D); }
bool is_digit(uint32_t u) { return u >= '0' && u <= '9'; }
bool is_word(uint32_t u) {
    return is_digit(u) || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || u == '_';
}
}  // namespace

uint32_t collapse_cpt(uint32_t cp) {
    if (cp < 128) return cp;
    if (unicode_is_whitespace(cp)) return 0x0B;
    switch (unicode_class(cp)) {
        case UnicodeClass::number: return k_collapsed_number;
        case UnicodeClass::letter: return k_collapsed_letter;
        case UnicodeClass::punctuation: return k_collapsed_punct;
        case UnicodeClass::mark: return k_collapsed_mark;
        case UnicodeClass::symbol: return k_collapsed_symbol;
        default: return k_collapsed_other;
    }
}

struct CptRegex::Node {
    enum Kind { EMPTY, CHAR, CLASS, ANY, BOL, EOL, CAT, ALT, REPEAT, LOOK } kind = EMPTY;
    uint32_t c = 0;              // CHAR: code point; CLASS: index
    std::vector<Node*> kids;     // CAT, ALT; REPEAT / LOOK: one
    int min = 0, max = -1;       // REPEAT (-1: unbounded)
    bool greedy = true, neg = false;
};

CptRegex::CptRegex(const std::string& pattern) : pattern_(pattern) {
    src_ = utf8_to_cpts(pattern);
    collapsed_ = false;
    for (const char* cat : {"\\p{N}", "\\p{L}", "\\p{P}", "\\p{M}", "\\p{S}"})
        if (pattern.find(cat) != std::string::npos) collapsed_ = true;
    try {
        Node* root = parse_alt();
        if (at_ != src_.size()) throw std::invalid_argument("unbalanced ')'");
        emit(root);
        Inst m;
        m.op = MATCH;
        prog_.push_back(m);
    } catch (const std::invalid_argument& e) {
        for (Node* n : nodes_) delete n;
        nodes_.clear();
        throw std::invalid_argument("regex '" + pattern + "': " + e.what());
    }
    for (Node* n : nodes_) delete n;
    nodes_.clear();
}

// ---- parsing ------------------------------------------------------------------

CptRegex::Node* CptRegex::parse_alt() {
    Node* first = parse_seq();
    if (at_ >= src_.size() || src_[at_] != '|') return first;
    Node* alt = new Node;
    nodes_.push_back(alt);
    alt->kind = Node::ALT;
    alt->kids.push_back(first);
    while (at_ < src_.size() && src_[at_] == '|') {
        at_++;
        alt->kids.push_back(parse_seq());
    }
    return alt;
}

CptRegex::Node* CptRegex::parse_seq() {
    Node* cat = new Node;
    nodes_.push_back(cat);
    cat->kind = Node::CAT;
    while (at_ < src_.size() && src_[at_] != '|' && src_[at_] != ')') {
        Node* atom = parse_atom();
        // quantifiers
        while (at_ < src_.size()) {
            uint32_t q = src_[at_];
            int mn, mx;
            if (q == '*') { mn = 0; mx = -1; at_++; }
            else if (q == '+') { mn = 1; mx = -1; at_++; }
            else if (q == '?') { mn = 0; mx = 1; at_++; }
            else if (q == '{') {
                size_t p = at_ + 1;
                auto number = [&](int& v) {
                    size_t start = p;
                    v = 0;
                    while (p < src_.size() && is_digit(src_[p])) v = v * 10 + (int)(src_[p++] - '0');
                    return p > start;
                };
                if (!number(mn)) break;   // a literal '{'
                mx = mn;
                if (p < src_.size() && src_[p] == ',') {
                    p++;
                    if (!number(mx)) mx = -1;
                }
                if (p >= src_.size() || src_[p] != '}') throw std::invalid_argument("bad {m,n}");
                if (mx != -1 && mx < mn) throw std::invalid_argument("{m,n} with n < m");
                at_ = p + 1;
            } else {
                break;
            }
            Node* rep = new Node;
            nodes_.push_back(rep);
            rep->kind = Node::REPEAT;
            rep->min = mn;
            rep->max = mx;
            rep->kids.push_back(atom);
            if (at_ < src_.size() && src_[at_] == '?') { rep->greedy = false; at_++; }
            atom = rep;
        }
        cat->kids.push_back(atom);
    }
    return cat;
}

uint32_t CptRegex::parse_escape(Class* cls) {
    if (at_ >= src_.size()) throw std::invalid_argument("trailing '\\'");
    uint32_t e = src_[at_++];
    auto hex = [&](int digits) {
        uint32_t v = 0;
        for (int i = 0; i < digits; i++) {
            if (at_ >= src_.size()) throw std::invalid_argument("short hex escape");
            uint32_t h = src_[at_++];
            if (is_digit(h)) v = v * 16 + (h - '0');
            else if (h >= 'a' && h <= 'f') v = v * 16 + (h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') v = v * 16 + (h - 'A' + 10);
            else throw std::invalid_argument("bad hex escape");
        }
        return v;
    };
    switch (e) {
        case 'r': return '\r';
        case 'n': return '\n';
        case 't': return '\t';
        case 'f': return '\f';
        case 'v': return '\v';
        case '0': return 0;
        case 'x': return hex(2);
        case 'u': return hex(4);
        case 's': case 'S': case 'd': case 'D': case 'w': case 'W': {
            uint32_t bit = e == 's' ? P_SPACE : e == 'S' ? P_NOT_SPACE : e == 'd' ? P_DIGIT
                         : e == 'D' ? P_NOT_DIGIT : e == 'w' ? P_WORD : P_NOT_WORD;
            cls->props |= bit;
            return UINT32_MAX;
        }
        case 'p': {
            if (at_ + 2 >= src_.size() || src_[at_] != '{' || src_[at_ + 2] != '}')
                throw std::invalid_argument("unsupported \\p escape");
            uint32_t cat = src_[at_ + 1];
            at_ += 3;
            // The class stand-in plus its ASCII members, as llama.cpp expands them.
            auto add = [&](uint32_t lo, uint32_t hi) { cls->ranges.push_back({lo, hi}); };
            switch (cat) {
                case 'N': add(k_collapsed_number, k_collapsed_number); add('0', '9'); break;
                case 'L': add(k_collapsed_letter, k_collapsed_letter); add('A', 'Z'); add('a', 'z'); break;
                case 'P':
                    add(k_collapsed_punct, k_collapsed_punct);
                    add(0x21, 0x23); add(0x25, 0x2A); add(0x2C, 0x2F); add(0x3A, 0x3B); add(0x3F, 0x40);
                    add(0x5B, 0x5D); add(0x5F, 0x5F); add(0x7B, 0x7B); add(0x7D, 0x7D);
                    break;
                case 'M': add(k_collapsed_mark, k_collapsed_mark); break;
                case 'S':   // '~' is not among them in llama.cpp
                    add(k_collapsed_symbol, k_collapsed_symbol);
                    add(0x24, 0x24); add(0x2B, 0x2B); add(0x3C, 0x3E); add(0x5E, 0x5E); add(0x60, 0x60); add(0x7C, 0x7C);
                    break;
                default: throw std::invalid_argument("unsupported \\p category");
            }
            return UINT32_MAX;
        }
        default: return e;   // an escaped literal
    }
}

CptRegex::Node* CptRegex::parse_atom() {
    uint32_t c = src_[at_++];
    Node* node = new Node;
    nodes_.push_back(node);
    switch (c) {
        case '(': {
            bool look = false, neg = false;
            if (at_ + 1 < src_.size() && src_[at_] == '?') {
                uint32_t k = src_[at_ + 1];
                if (k == ':') { at_ += 2; }
                else if (k == '=') { look = true; at_ += 2; }
                else if (k == '!') { look = true; neg = true; at_ += 2; }
                else throw std::invalid_argument("unsupported group (?" + std::string(1, (char)k));
            }
            Node* inner = parse_alt();
            if (at_ >= src_.size() || src_[at_] != ')') throw std::invalid_argument("missing ')'");
            at_++;
            if (!look) return inner;   // `node` stays unused in nodes_, freed with the rest
            node->kind = Node::LOOK;
            node->neg = neg;
            node->kids.push_back(inner);
            return node;
        }
        case '[': {
            Class cls;
            if (at_ < src_.size() && src_[at_] == '^') { cls.neg = true; at_++; }
            bool first = true;
            while (true) {
                if (at_ >= src_.size()) throw std::invalid_argument("missing ']'");
                uint32_t m = src_[at_];
                if (m == ']' && !first) { at_++; break; }
                first = false;
                at_++;
                uint32_t lo = m;
                if (m == '\\') {
                    lo = parse_escape(&cls);
                    if (lo == UINT32_MAX) continue;
                }
                // a range lo-hi (a '-' before ']' is literal)
                if (at_ + 1 < src_.size() && src_[at_] == '-' && src_[at_ + 1] != ']') {
                    at_++;
                    uint32_t hi = src_[at_++];
                    if (hi == '\\') {
                        hi = parse_escape(&cls);
                        if (hi == UINT32_MAX) throw std::invalid_argument("class escape as a range end");
                    }
                    if (hi < lo) throw std::invalid_argument("reversed range");
                    cls.ranges.push_back({lo, hi});
                } else {
                    cls.ranges.push_back({lo, lo});
                }
            }
            node->kind = Node::CLASS;
            node->c = (uint32_t)classes_.size();
            classes_.push_back(cls);
            return node;
        }
        case '\\': {
            Class cls;
            uint32_t lit = parse_escape(&cls);
            if (lit == UINT32_MAX) {
                node->kind = Node::CLASS;
                node->c = (uint32_t)classes_.size();
                classes_.push_back(cls);
            } else {
                node->kind = Node::CHAR;
                node->c = lit;
            }
            return node;
        }
        case '.': node->kind = Node::ANY; return node;
        case '^': node->kind = Node::BOL; return node;
        case '$': node->kind = Node::EOL; return node;
        case '*': case '+': case '?': throw std::invalid_argument("quantifier without operand");
        default: node->kind = Node::CHAR; node->c = c; return node;
    }
}

// ---- code generation ------------------------------------------------------------

int CptRegex::emit(const Node* node) {
    int start = (int)prog_.size();
    auto push = [&](Op op) {
        Inst i;
        i.op = op;
        prog_.push_back(i);
        return (int)prog_.size() - 1;
    };
    switch (node->kind) {
        case Node::EMPTY: break;
        case Node::CHAR: prog_[push(CHAR)].c = node->c; break;
        case Node::CLASS: prog_[push(CLASS)].c = node->c; break;
        case Node::ANY: push(ANY); break;
        case Node::BOL: push(BOL); break;
        case Node::EOL: push(EOL); break;
        case Node::CAT:
            for (const Node* k : node->kids) emit(k);
            break;
        case Node::ALT: {
            // SPLIT a, next; a: kid; JMP end; next: SPLIT ... ; last kid
            std::vector<int> jumps;
            for (size_t i = 0; i < node->kids.size(); i++) {
                if (i + 1 < node->kids.size()) {
                    int split = push(SPLIT);
                    prog_[split].x = split + 1;
                    emit(node->kids[i]);
                    jumps.push_back(push(JMP));
                    prog_[split].y = (int)prog_.size();
                } else {
                    emit(node->kids[i]);
                }
            }
            for (int j : jumps) prog_[j].x = (int)prog_.size();
            break;
        }
        case Node::REPEAT: {
            const Node* body = node->kids[0];
            for (int i = 0; i < node->min; i++) emit(body);
            if (node->max == -1) {
                int split = push(SPLIT);
                emit(body);
                int jmp = push(JMP);
                prog_[jmp].x = split;
                int after = (int)prog_.size();
                prog_[split].x = node->greedy ? split + 1 : after;
                prog_[split].y = node->greedy ? after : split + 1;
            } else {
                std::vector<int> splits;
                for (int i = node->min; i < node->max; i++) {
                    splits.push_back(push(SPLIT));
                    emit(body);
                }
                int after = (int)prog_.size();
                for (int s : splits) {
                    prog_[s].x = node->greedy ? s + 1 : after;
                    prog_[s].y = node->greedy ? after : s + 1;
                }
            }
            break;
        }
        case Node::LOOK: {
            int look = push(LOOK);
            prog_[look].neg = node->neg;
            prog_[look].x = look + 1;
            emit(node->kids[0]);
            push(MATCH);
            prog_[look].y = (int)prog_.size();
            break;
        }
    }
    return start;
}

// ---- matching -----------------------------------------------------------------------

bool CptRegex::class_has(const Class& cls, uint32_t u) const {
    bool in = false;
    for (const auto& r : cls.ranges)
        if (u >= r.first && u <= r.second) { in = true; break; }
    if (!in && cls.props) {
        uint32_t p = cls.props;
        in = ((p & P_SPACE) && is_space(u)) || ((p & P_NOT_SPACE) && !is_space(u)) ||
             ((p & P_DIGIT) && is_digit(u)) || ((p & P_NOT_DIGIT) && !is_digit(u)) ||
             ((p & P_WORD) && is_word(u)) || ((p & P_NOT_WORD) && !is_word(u));
    }
    return in != cls.neg;
}

// Depth-first over SPLITs, preferred branch first: the first MATCH reached is the
// leftmost-first match. Returns the end position or -1.
long CptRegex::run(int pc, const uint32_t* s, size_t n, size_t pos) const {
    struct Thread { int pc; size_t pos; };
    std::vector<Thread> stack;
    stack.push_back({pc, pos});
    while (!stack.empty()) {
        Thread t = stack.back();
        stack.pop_back();
        while (true) {
            const Inst& in = prog_[t.pc];
            bool ok = true;
            switch (in.op) {
                case CHAR: ok = t.pos < n && s[t.pos] == in.c; t.pc++; t.pos++; break;
                case CLASS: ok = t.pos < n && class_has(classes_[in.c], s[t.pos]); t.pc++; t.pos++; break;
                case ANY: ok = t.pos < n && s[t.pos] != '\n' && s[t.pos] != '\r'; t.pc++; t.pos++; break;
                case SPLIT: stack.push_back({in.y, t.pos}); t.pc = in.x; break;
                case JMP: t.pc = in.x; break;
                case BOL: ok = t.pos == 0; t.pc++; break;
                case EOL: ok = t.pos == n; t.pc++; break;
                case LOOK: ok = (run(in.x, s, n, t.pos) >= 0) != in.neg; t.pc = in.y; break;
                case MATCH: return (long)t.pos;
            }
            if (!ok) break;
        }
    }
    return -1;
}

bool CptRegex::search(const uint32_t* s, size_t n, size_t from, size_t& begin, size_t& end) const {
    for (size_t start = from; start <= n; start++) {
        long e = run(0, s, n, start);
        if (e >= 0) {
            begin = start;
            end = (size_t)e;
            return true;
        }
    }
    return false;
}

}  // namespace ffnskip
