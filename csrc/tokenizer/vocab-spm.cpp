// SentencePiece-style tokenization (tokenizer.ggml.model = "llama"), as llama.cpp
// does it: start from UTF-8 characters, repeatedly merge the adjacent pair whose
// joined text is the highest-scoring token (leftmost on ties), then emit tokens;
// characters that are no token become byte tokens <0xNN>.
#include <ffnskip/ffnskip.h>

#include <cstdio>
#include <queue>

#include "tokenizer/unicode.h"
#include "tokenizer/vocab-impl.h"

namespace ffnskip {

namespace {
struct Symbol {
    int prev, next;
    size_t offset, n;   // bytes of the text; n = 0 once merged into the left neighbour
};
struct Bigram {
    int left, right;
    float score;
    size_t size;
};
struct BigramOrder {   // priority_queue keeps the largest: highest score, then leftmost
    bool operator()(const Bigram& l, const Bigram& r) const {
        return l.score < r.score || (l.score == r.score && l.left > r.left);
    }
};
}  // namespace

int32_t VocabImpl::spm_byte_token(uint8_t byte) const {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", byte);
    int32_t id = text_to_token(buf);
    if (id >= 0) return id;
    id = text_to_token(std::string(1, (char)byte));
    if (id >= 0) return id;
    throw Error("vocabulary has no token for byte " + std::string(buf));
}

void VocabImpl::spm_tokenize(const std::string& text, std::vector<int32_t>& out) const {
    std::vector<Symbol> symbols;
    for (size_t offs = 0; offs < text.size();) {
        size_t len = std::min(utf8_len((uint8_t)text[offs]), text.size() - offs);
        int index = (int)symbols.size();
        symbols.push_back({index - 1, offs + len == text.size() ? -1 : index + 1, offs, len});
        offs += len;
    }
    if (symbols.empty()) return;

    std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
    auto try_add = [&](int left, int right) {
        if (left == -1 || right == -1) return;
        std::string joined = text.substr(symbols[left].offset, symbols[left].n + symbols[right].n);
        int32_t id = text_to_token(joined);
        if (id < 0) return;
        queue.push({left, right, scores_[id], joined.size()});
    };
    for (int i = 1; i < (int)symbols.size(); i++) try_add(i - 1, i);

    while (!queue.empty()) {
        Bigram b = queue.top();
        queue.pop();
        Symbol& l = symbols[b.left];
        Symbol& r = symbols[b.right];
        if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;   // stale
        l.n += r.n;
        r.n = 0;
        l.next = r.next;
        if (r.next >= 0) symbols[r.next].prev = b.left;
        try_add(l.prev, b.left);
        try_add(b.left, l.next);
    }

    // Emit. Every merged piece is a token (merges only form tokens), so a piece that
    // is not one is a single character missing from the vocabulary: its bytes.
    for (int i = 0; i != -1; i = symbols[i].next) {
        const Symbol& sym = symbols[i];
        int32_t id = text_to_token(text.substr(sym.offset, sym.n));
        if (id >= 0) {
            out.push_back(id);
        } else {
            for (size_t j = 0; j < sym.n; j++) out.push_back(spm_byte_token((uint8_t)text[sym.offset + j]));
        }
    }
}

}  // namespace ffnskip
