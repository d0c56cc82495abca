// The loaded model: hyper-parameters, tokenizer and views of the weights inside the
// GGUF mapping (no copies, except the small norm vectors which are kept as float).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ffnskip/ffnskip.h>

#include "gguf/gguf.h"
#include "model/arch.h"
#include "quant/quant.h"
#include "tokenizer/vocab.h"

namespace ffnskip {

// A weight matrix as stored in GGUF: n_out rows of n_in elements each; y = W x.
struct WeightMatrix {
    GgmlType type = GgmlType::F32;
    int64_t n_in = 0;           // ne[0]: row length (input width)
    int64_t n_out = 0;          // ne[1]: rows (output width)
    size_t row_bytes = 0;
    const uint8_t* data = nullptr;
    const uint8_t* row(int64_t r) const { return data + (size_t)r * row_bytes; }
    uint64_t n_bytes() const { return (uint64_t)row_bytes * (uint64_t)n_out; }
};

struct LayerWeights {
    std::vector<float> attn_norm;   // (n_embd)
    WeightMatrix wq;                // (n_embd -> n_head * head_dim)
    WeightMatrix wk;                // (n_embd -> n_head_kv * head_dim)
    WeightMatrix wv;                // (n_embd -> n_head_kv * head_dim)
    std::vector<float> bq, bk, bv;  // biases of wq, wk, wv (qwen2), empty when the architecture has none
    WeightMatrix wo;                // (n_head * head_dim -> n_embd)
    std::vector<float> ffn_norm;    // (n_embd)
    WeightMatrix ffn_gate;          // (n_embd -> n_ff)
    WeightMatrix ffn_up;            // (n_embd -> n_ff)
    WeightMatrix ffn_down;          // (n_ff -> n_embd)
    uint64_t ffn_bytes() const { return ffn_gate.n_bytes() + ffn_up.n_bytes() + ffn_down.n_bytes(); }
};

struct ModelWeights {
    WeightMatrix token_embd;        // (n_vocab rows of n_embd)
    std::vector<LayerWeights> layers;
    std::vector<float> output_norm; // (n_embd)
    WeightMatrix output;            // (n_embd -> n_vocab); token_embd when tied
    std::vector<float> rope_freq_factors;   // (n_rot / 2) or empty
};

struct Model::Impl {
    std::string path;
    std::unique_ptr<GgufFile> file;
    HParams hp;
    const ArchDesc* arch = nullptr;
    std::unique_ptr<Vocab> vocab;
    ModelWeights w;
    uint64_t weight_bytes = 0;
};

// A 2-D tensor of the mapping as a weight matrix (its shape checked by the caller).
WeightMatrix weight_view(const GgufTensor& t);

// Reads hyper-parameters and weight views; throws FormatError naming what is missing
// or mis-shaped.
void model_load_weights(Model::Impl& m);

}  // namespace ffnskip
