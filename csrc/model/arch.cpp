#include "model/arch.h"

namespace ffnskip {

namespace {

// Both take the output matrix from output.weight, or from token_embd.weight when the
// file has none (tied embeddings), as llama.cpp does.
const ArchDesc ARCHS[] = {
    {"llama", RopeMode::NORMAL, /*qkv_bias=*/false},
    {"qwen2", RopeMode::NEOX, /*qkv_bias=*/true},
};

}  // namespace

const ArchDesc* find_arch(const std::string& name) {
    for (const ArchDesc& a : ARCHS)
        if (name == a.name) return &a;
    return nullptr;
}

std::string known_arch_names() {
    std::string out;
    for (const ArchDesc& a : ARCHS) out += (out.empty() ? "" : ", ") + std::string(a.name);
    return out;
}

}  // namespace ffnskip
