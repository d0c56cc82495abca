// What tells the LLaMA-family architectures apart, as data: the loader reads the
// description of general.architecture, and the one forward pass of each backend reads
// what the loader filled in (HParams::rope_neox, the optional weights it found).
#pragma once

#include <string>

namespace ffnskip {

enum class RopeMode {
    NORMAL,   // llama: pairs (2i, 2i + 1) rotate (the converter permuted Q/K rows for it)
    NEOX,     // qwen2: pairs (i, i + n_rot / 2) rotate
};

struct ArchDesc {
    const char* name;         // general.architecture; also the prefix of its metadata keys
    RopeMode rope;
    bool qkv_bias;            // blk.N.attn_{q,k,v}.bias must be present (one float per output row)
};

// The description of an architecture, or null when the engine does not run it.
const ArchDesc* find_arch(const std::string& name);

// "llama, qwen2": for error messages.
std::string known_arch_names();

}  // namespace ffnskip
