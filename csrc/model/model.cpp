// LLaMA-family model loading: hyper-parameters from `<architecture>.*` metadata,
// weight views checked against the shapes the architecture (model/arch.h) needs.
#include "model/model.h"

#include <cmath>
#include <sstream>

namespace ffnskip {

namespace {

std::string shape_str(const std::vector<int64_t>& ne) {
    std::ostringstream os;
    os << "[";
    for (size_t i = 0; i < ne.size(); i++) os << (i ? ", " : "") << ne[i];
    os << "]";
    return os.str();
}

[[noreturn]] void fail(const Model::Impl& m, const std::string& what) {
    throw FormatError(m.path + ": " + what);
}

const GgufTensor& need_tensor(const Model::Impl& m, const std::string& name) {
    const GgufTensor* t = m.file->tensor(name);
    if (!t) fail(m, "required tensor '" + name + "' is missing");
    return *t;
}

void check_shape(const Model::Impl& m, const GgufTensor& t, std::vector<int64_t> want) {
    if (t.ne != want)
        fail(m, "tensor '" + t.name + "' has shape " + shape_str(t.ne) + ", expected " + shape_str(want));
}

WeightMatrix matrix(const Model::Impl& m, const std::string& name, int64_t n_in, int64_t n_out) {
    const GgufTensor& t = need_tensor(m, name);
    check_shape(m, t, {n_in, n_out});
    return weight_view(t);
}

std::vector<float> vector_f32(const Model::Impl& m, const std::string& name, int64_t n) {
    const GgufTensor& t = need_tensor(m, name);
    check_shape(m, t, {n});
    std::vector<float> out((size_t)n);
    dequantize_row(t.type, t.data, out.data(), n);
    for (float v : out)
        if (!std::isfinite(v)) fail(m, "tensor '" + name + "' holds a non-finite value");
    return out;
}

// A float metadata value that must be finite and positive (checked in double, before
// the narrowing cast).
float positive_float(const Model::Impl& m, const std::string& key, double def) {
    double v = m.file->get_float(key, def);
    if (!(v > 0.0) || !(v < 3.0e38)) fail(m, key + " must be positive and finite (found " + std::to_string(v) + ")");
    return (float)v;
}

int32_t positive_int(const Model::Impl& m, const std::string& key, int64_t max_value) {
    int64_t v = m.file->get_int(key);
    if (v <= 0 || v > max_value)
        fail(m, "metadata '" + key + "' = " + std::to_string(v) + " is out of range (1.." + std::to_string(max_value) + ")");
    return (int32_t)v;
}

}  // namespace

WeightMatrix weight_view(const GgufTensor& t) {
    WeightMatrix w;
    w.type = t.type;
    w.n_in = t.ne[0];
    w.n_out = t.ne.size() > 1 ? t.ne[1] : 1;
    w.row_bytes = row_size(t.type, w.n_in);
    w.data = t.data;
    return w;
}

void model_load_weights(Model::Impl& m) {
    const GgufFile& f = *m.file;
    HParams& hp = m.hp;
    hp.architecture = f.get_string("general.architecture");
    m.arch = find_arch(hp.architecture);
    if (!m.arch)
        fail(m, "unsupported architecture '" + hp.architecture + "' (ffnskip runs general.architecture = " +
                    known_arch_names() + ")");
    const ArchDesc& arch = *m.arch;
    hp.rope_neox = arch.rope == RopeMode::NEOX;
    const std::string a = hp.architecture + ".";
    if (f.has(a + "expert_count") && f.get_int(a + "expert_count") > 0)
        fail(m, "mixture-of-experts " + hp.architecture + " models are not supported");

    hp.n_layer = positive_int(m, a + "block_count", 4096);
    hp.n_embd = positive_int(m, a + "embedding_length", 1 << 20);
    hp.n_ff = positive_int(m, a + "feed_forward_length", 1 << 22);
    hp.n_head = positive_int(m, a + "attention.head_count", 4096);
    hp.n_head_kv = f.has(a + "attention.head_count_kv") ? positive_int(m, a + "attention.head_count_kv", 4096) : hp.n_head;
    hp.n_ctx_train = positive_int(m, a + "context_length", 1 << 24);
    if (hp.n_head % hp.n_head_kv != 0)
        fail(m, "head_count " + std::to_string(hp.n_head) + " is not a multiple of head_count_kv " + std::to_string(hp.n_head_kv));
    if (f.has(a + "attention.key_length")) {
        hp.head_dim = positive_int(m, a + "attention.key_length", 1024);
        if (f.has(a + "attention.value_length") && f.get_int(a + "attention.value_length") != hp.head_dim)
            fail(m, "attention.value_length differs from key_length, which " + hp.architecture + " models do not do");
    } else {
        if (hp.n_embd % hp.n_head != 0) fail(m, "embedding_length is not a multiple of head_count");
        hp.head_dim = hp.n_embd / hp.n_head;
        if (hp.head_dim > 1024) fail(m, "head width " + std::to_string(hp.head_dim) + " is larger than 1024");
    }
    hp.n_rot = f.has(a + "rope.dimension_count") ? positive_int(m, a + "rope.dimension_count", hp.head_dim) : hp.head_dim;
    if (hp.n_rot % 2 != 0) fail(m, "rope.dimension_count must be even");
    hp.rope_freq_base = positive_float(m, a + "rope.freq_base", 10000.0);
    hp.rms_eps = positive_float(m, a + "attention.layer_norm_rms_epsilon", 1e-5);

    // Linear RoPE scaling; "none" and absent mean 1. YaRN and others are refused
    // rather than silently computed wrong.
    std::string scaling = f.get_string(a + "rope.scaling.type", "none");
    double factor = f.get_float(a + "rope.scaling.factor", 0.0);
    if (factor == 0.0) factor = f.get_float(a + "rope.scale_linear", 0.0);
    if (scaling == "linear" || (scaling == "none" && f.has(a + "rope.scale_linear"))) {
        if (!(factor > 0) || !(factor < 1e30)) fail(m, "linear RoPE scaling needs a positive, finite rope.scaling.factor");
        hp.rope_freq_scale = (float)(1.0 / factor);
    } else if (scaling != "none") {
        fail(m, "RoPE scaling type '" + scaling + "' is not supported (none and linear are)");
    }

    // Weights.
    const GgufTensor& emb = need_tensor(m, "token_embd.weight");
    if (emb.ne.size() != 2 || emb.ne[0] != hp.n_embd)
        fail(m, "tensor 'token_embd.weight' has shape " + shape_str(emb.ne) + ", expected [" + std::to_string(hp.n_embd) + ", n_vocab]");
    hp.n_vocab = (int32_t)emb.ne[1];
    ModelWeights& w = m.w;
    w.token_embd = matrix(m, "token_embd.weight", hp.n_embd, hp.n_vocab);
    w.output_norm = vector_f32(m, "output_norm.weight", hp.n_embd);
    w.output = f.tensor("output.weight") ? matrix(m, "output.weight", hp.n_embd, hp.n_vocab) : w.token_embd;
    if (const GgufTensor* rf = f.tensor("rope_freqs.weight")) {
        (void)rf;
        w.rope_freq_factors = vector_f32(m, "rope_freqs.weight", hp.n_rot / 2);
    }

    const int64_t q_width = (int64_t)hp.n_head * hp.head_dim;
    const int64_t kv_width = (int64_t)hp.n_head_kv * hp.head_dim;
    w.layers.resize(hp.n_layer);
    for (int il = 0; il < hp.n_layer; il++) {
        const std::string p = "blk." + std::to_string(il) + ".";
        if (f.tensor(p + "ffn_gate_exps.weight")) fail(m, "mixture-of-experts " + hp.architecture + " models are not supported");
        LayerWeights& l = w.layers[il];
        l.attn_norm = vector_f32(m, p + "attn_norm.weight", hp.n_embd);
        l.wq = matrix(m, p + "attn_q.weight", hp.n_embd, q_width);
        l.wk = matrix(m, p + "attn_k.weight", hp.n_embd, kv_width);
        l.wv = matrix(m, p + "attn_v.weight", hp.n_embd, kv_width);
        if (arch.qkv_bias) {
            l.bq = vector_f32(m, p + "attn_q.bias", q_width);
            l.bk = vector_f32(m, p + "attn_k.bias", kv_width);
            l.bv = vector_f32(m, p + "attn_v.bias", kv_width);
        }
        l.wo = matrix(m, p + "attn_output.weight", q_width, hp.n_embd);
        l.ffn_norm = vector_f32(m, p + "ffn_norm.weight", hp.n_embd);
        l.ffn_gate = matrix(m, p + "ffn_gate.weight", hp.n_embd, hp.n_ff);
        l.ffn_up = matrix(m, p + "ffn_up.weight", hp.n_embd, hp.n_ff);
        l.ffn_down = matrix(m, p + "ffn_down.weight", hp.n_ff, hp.n_embd);
    }
    m.weight_bytes = 0;
    for (const GgufTensor& t : f.tensors()) m.weight_bytes += t.n_bytes;
}

}  // namespace ffnskip
