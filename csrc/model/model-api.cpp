// ffnskip::Model: the public face of a loaded model.
#include <stdexcept>

#include "model/model.h"

namespace ffnskip {

Model::Model() : impl_(new Impl) {}
Model::~Model() = default;

std::shared_ptr<Model> Model::load(const std::string& path, const ModelParams& params) {
    (void)params;   // the mapping is the only loading mode so far
    std::shared_ptr<Model> model(new Model());
    Impl& m = *model->impl_;
    m.path = path;
    m.file = std::make_unique<GgufFile>(path);
    model_load_weights(m);
    m.vocab = Vocab::from_gguf(*m.file);
    if (m.vocab->n_tokens() != m.hp.n_vocab)
        throw FormatError(path + ": the tokenizer has " + std::to_string(m.vocab->n_tokens()) +
                          " tokens but token_embd.weight has " + std::to_string(m.hp.n_vocab) + " rows");
    return model;
}

const HParams& Model::hparams() const { return impl_->hp; }
const std::string& Model::path() const { return impl_->path; }
uint64_t Model::file_size() const { return impl_->file->file_size(); }
uint64_t Model::weight_bytes() const { return impl_->weight_bytes; }

std::vector<std::pair<std::string, std::string>> Model::metadata() const {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& kv : impl_->file->metadata()) out.emplace_back(kv.first, kv.second.to_string());
    return out;
}

std::string Model::metadata_string(const std::string& key) const {
    const GgufValue* v = impl_->file->find(key);
    return v && v->type == GgufValueType::STRING ? v->str : std::string();
}

std::vector<Model::TensorInfo> Model::tensors() const {
    std::vector<TensorInfo> out;
    const GgufFile& f = *impl_->file;
    for (const GgufTensor& t : f.tensors())
        out.push_back({t.name, type_name((uint32_t)t.type), t.ne, f.data_offset() + t.offset, t.n_bytes});
    return out;
}

std::vector<int32_t> Model::tokenize(const std::string& text, bool add_special, bool parse_special) const {
    return impl_->vocab->tokenize(text, add_special, parse_special);
}

static void check_token(const Model::Impl& m, int32_t token) {
    if (token < 0 || token >= m.hp.n_vocab)
        throw std::invalid_argument("token id " + std::to_string(token) + " is out of range [0, " +
                                    std::to_string(m.hp.n_vocab) + ")");
}

std::string Model::token_to_piece(int32_t token, bool render_special) const {
    check_token(*impl_, token);
    return impl_->vocab->token_to_piece(token, render_special);
}

std::string Model::detokenize(const std::vector<int32_t>& tokens, bool render_special) const {
    for (int32_t t : tokens) check_token(*impl_, t);
    return impl_->vocab->detokenize(tokens, render_special);
}

int32_t Model::token_bos() const { return impl_->vocab->bos(); }
int32_t Model::token_eos() const { return impl_->vocab->eos(); }
bool Model::token_is_eog(int32_t token) const { return impl_->vocab->is_eog(token); }
int32_t Model::n_vocab() const { return impl_->hp.n_vocab; }

}  // namespace ffnskip
