#include "skip/surrogate.h"

#include <algorithm>
#include <cmath>

#include "quant/quant.h"

namespace ffnskip {

namespace {

constexpr int64_t SIDECAR_VERSION = 1;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
    throw FormatError(path + ": " + what);
}

WeightMatrix surrogate_matrix(const std::string& path, const GgufTensor& t, int64_t n_in, int64_t n_out) {
    if (t.type != GgmlType::F16 && t.type != GgmlType::F32)
        fail(path, "tensor '" + t.name + "' must be F16 or F32");
    if (t.ne.size() != 2 || t.ne[0] != n_in || t.ne[1] != n_out)
        fail(path, "tensor '" + t.name + "' has the wrong shape (expected [" + std::to_string(n_in) + ", " +
                       std::to_string(n_out) + "])");
    return weight_view(t);
}

}  // namespace

std::shared_ptr<const SurrogateSet> load_surrogates(const std::string& path, const HParams& hp) {
    auto set = std::make_shared<SurrogateSet>();
    set->path = path;
    set->file = std::make_unique<GgufFile>(path);
    const GgufFile& f = *set->file;
    const std::string key = "ffnskip.surrogate.";
    if (!f.has(key + "version"))
        fail(path, "not an ffnskip surrogate file (no " + key + "version)");
    if (f.get_int(key + "version") != SIDECAR_VERSION)
        fail(path, "surrogate file version " + std::to_string(f.get_int(key + "version")) + " is not " +
                       std::to_string(SIDECAR_VERSION));
    const int64_t n_embd = f.get_int(key + "n_embd"), n_layer = f.get_int(key + "n_layer");
    if (n_embd != hp.n_embd || n_layer != hp.n_layer)
        fail(path, "surrogates were fitted for n_embd " + std::to_string(n_embd) + ", n_layer " + std::to_string(n_layer) +
                       "; the model has n_embd " + std::to_string(hp.n_embd) + ", n_layer " + std::to_string(hp.n_layer));
    set->layers.resize((size_t)hp.n_layer);
    for (int32_t il : f.get_int_array(key + "layers")) {
        if (il < 0 || il >= hp.n_layer) fail(path, "surrogate for layer " + std::to_string(il) + " is out of range");
        if (set->layers[(size_t)il]) fail(path, "layer " + std::to_string(il) + " is listed twice");
        const std::string blk = "blk." + std::to_string(il) + ".";
        auto s = std::make_unique<FfnSurrogate>();
        const GgufTensor* bias = f.tensor(blk + "ffn_sur_bias");
        if (!bias) fail(path, "tensor '" + blk + "ffn_sur_bias' is missing");
        if (bias->type != GgmlType::F32 || bias->ne.size() != 1 || bias->ne[0] != hp.n_embd)
            fail(path, "tensor '" + blk + "ffn_sur_bias' must be F32 of " + std::to_string(hp.n_embd) + " values");
        s->bias.resize((size_t)hp.n_embd);
        dequantize_row(GgmlType::F32, bias->data, s->bias.data(), hp.n_embd);
        const GgufTensor* up = f.tensor(blk + "ffn_sur_up");
        const GgufTensor* down = f.tensor(blk + "ffn_sur_down");
        if ((up == nullptr) != (down == nullptr))
            fail(path, "layer " + std::to_string(il) + " has only one of ffn_sur_up and ffn_sur_down");
        if (up) {
            // The rank's activations share the FFN's hidden buffer: rank <= n_ff.
            if (up->ne.size() != 2 || up->ne[1] < 1 || up->ne[1] > std::min(hp.n_embd, hp.n_ff))
                fail(path, "tensor '" + up->name + "' must be [n_embd, rank] with 1 <= rank <= min(n_embd, n_ff)");
            s->rank = (int32_t)up->ne[1];
            s->up = surrogate_matrix(path, *up, hp.n_embd, s->rank);
            s->down = surrogate_matrix(path, *down, s->rank, hp.n_embd);
        }
        // Non-finite weights would turn a skipped FFN into NaN logits: refuse them here.
        std::vector<float> row((size_t)hp.n_embd);
        for (const WeightMatrix* w : {&s->up, &s->down})
            for (int64_t r = 0; r < w->n_out; r++) {
                dequantize_row(w->type, w->row(r), row.data(), w->n_in);
                for (int64_t i = 0; i < w->n_in; i++)
                    if (!std::isfinite(row[(size_t)i])) fail(path, "layer " + std::to_string(il) + " holds a non-finite weight");
            }
        for (float v : s->bias)
            if (!std::isfinite(v)) fail(path, "tensor '" + blk + "ffn_sur_bias' holds a non-finite value");
        set->max_rank = std::max(set->max_rank, s->rank);
        set->layers[(size_t)il] = std::move(s);
    }
    return set;
}

}  // namespace ffnskip
