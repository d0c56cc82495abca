// Build and run-time facts: backends compiled in, SIMD path chosen.
#include <ffnskip/ffnskip.h>

#include "quant/quant.h"

namespace ffnskip {

const char* version() { return "0.1.0"; }

std::vector<std::string> available_backends() {
    std::vector<std::string> out = {"cpu"};
#ifdef FFNSKIP_HAVE_CUDA
    out.push_back("cuda");
#endif
    return out;
}

std::string build_info() {
    std::string s = "ffnskip ";
    s += version();
#if defined(__clang__)
    s += ", clang " __clang_version__;
#elif defined(__GNUC__)
    s += ", gcc " __VERSION__;
#endif
    s += ", cpu simd: ";
    s += simd_level();
#ifdef FFNSKIP_HAVE_CUDA
    s += ", cuda: on";
#else
    s += ", cuda: off";
#endif
    return s;
}

const char* finish_reason_name(FinishReason reason) {
    switch (reason) {
        case FinishReason::none: return "none";
        case FinishReason::length: return "length";
        case FinishReason::stop: return "stop";
        case FinishReason::eos: return "eos";
        case FinishReason::cancelled: return "cancelled";
        case FinishReason::context_full: return "context_full";
    }
    return "unknown";
}

}  // namespace ffnskip
