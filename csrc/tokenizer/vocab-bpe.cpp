// Byte-level BPE (tokenizer.ggml.model = "gpt2"), as llama.cpp does it: the
// pre-tokenizer splits the text into words; in each word, adjacent symbols are
// merged by merge rank (lowest first, leftmost on ties) until no ranked pair is left.
#include <queue>
#include <unordered_map>

#include "tokenizer/unicode.h"
#include "tokenizer/vocab-impl.h"

namespace ffnskip {

namespace {
struct Symbol {
    int prev, next;
    size_t offset, n;   // bytes of the word; n = 0 once merged into the left neighbour
};
struct Bigram {
    int left, right;
    int rank;
    std::string text;
};
struct BigramOrder {   // priority_queue keeps the largest: lowest rank, then leftmost
    bool operator()(const Bigram& l, const Bigram& r) const {
        return l.rank > r.rank || (l.rank == r.rank && l.left > r.left);
    }
};
}  // namespace

int VocabImpl::bpe_rank(const std::string& left, const std::string& right) const {
    std::string key;
    key.reserve(left.size() + right.size() + 1);
    key += left;
    key += '\xff';
    key += right;
    auto it = bpe_ranks_.find(key);
    return it == bpe_ranks_.end() ? -1 : it->second;
}

void VocabImpl::bpe_tokenize(const std::string& text, std::vector<int32_t>& out) const {
    std::unordered_map<std::string, std::vector<int32_t>> cache;   // a word always gives the same ids
    std::vector<Symbol> symbols;
    for (const std::string& word : pre_tok_.split(text)) {
        auto hit = cache.find(word);
        if (hit != cache.end()) {
            out.insert(out.end(), hit->second.begin(), hit->second.end());
            continue;
        }
        std::vector<int32_t> ids;
        symbols.clear();
        if (pre_tok_.ignore_merges && text_to_token(word) >= 0) {
            symbols.push_back({-1, -1, 0, word.size()});
        } else {
            for (size_t offs = 0; offs < word.size();) {
                size_t len = std::min(utf8_len((uint8_t)word[offs]), word.size() - offs);
                int index = (int)symbols.size();
                symbols.push_back({index - 1, offs + len == word.size() ? -1 : index + 1, offs, len});
                offs += len;
            }
        }

        std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
        auto add = [&](int left, int right) {
            if (left == -1 || right == -1) return;
            std::string l = word.substr(symbols[left].offset, symbols[left].n);
            std::string r = word.substr(symbols[right].offset, symbols[right].n);
            int rank = bpe_rank(l, r);
            if (rank < 0) return;
            queue.push({left, right, rank, l + r});
        };
        for (int i = 1; i < (int)symbols.size(); i++) add(i - 1, i);
        while (!queue.empty()) {
            Bigram b = queue.top();
            queue.pop();
            Symbol& l = symbols[b.left];
            Symbol& r = symbols[b.right];
            if (l.n == 0 || r.n == 0) continue;
            if (l.n + r.n != b.text.size() || word.compare(l.offset, l.n, b.text, 0, l.n) != 0 ||
                word.compare(r.offset, r.n, b.text, l.n, r.n) != 0)
                continue;   // stale: one side has changed since the pair was queued
            l.n += r.n;
            r.n = 0;
            l.next = r.next;
            if (r.next >= 0) symbols[r.next].prev = b.left;
            add(l.prev, b.left);
            add(b.left, l.next);
        }

        for (const Symbol& sym : symbols) {
            if (sym.n == 0) continue;
            std::string piece = word.substr(sym.offset, sym.n);
            int32_t id = text_to_token(piece);
            if (id >= 0) {
                ids.push_back(id);
                continue;
            }
            for (char c : piece) {   // byte fallback: single-byte tokens, where they exist
                int32_t b = text_to_token(std::string(1, c));
                if (b >= 0) ids.push_back(b);
            }
        }
        out.insert(out.end(), ids.begin(), ids.end());
        cache.emplace(word, std::move(ids));
    }
}

}  // namespace ffnskip
