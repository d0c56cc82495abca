#include "backend.h"

#include <unistd.h>

#include <stdexcept>
#include <string>

#include "cpu/forward-cpu.h"

namespace ffnskip {

namespace {

// The CPU backend keeps its KV cache in host memory: refuse one that cannot fit before
// trying to allocate it. (A GPU backend checks its own device memory.)
std::unique_ptr<Backend> make_cpu_backend(const Model::Impl& model, const BackendParams& params) {
    const HParams& hp = model.hp;
    const double kv_bytes = 2.0 * hp.n_layer * (double)params.n_ctx * hp.n_head_kv * hp.head_dim * sizeof(uint16_t);
    const double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE);
    if (ram > 0 && kv_bytes > ram)
        throw Error("the KV cache for n_ctx = " + std::to_string(params.n_ctx) + " needs " +
                    std::to_string(kv_bytes / (1 << 30)) + " GiB, more than this machine's " +
                    std::to_string(ram / (1 << 30)) + " GiB of memory; lower n_ctx");
    return std::make_unique<CpuForward>(model, params);
}

}  // namespace

#ifdef FFNSKIP_HAVE_CUDA
// Defined by the CUDA backend; throws Error when no usable GPU is present.
std::unique_ptr<Backend> make_cuda_backend(const Model::Impl& model, const BackendParams& params);
bool cuda_device_available(std::string* why);
#endif

void decide_ffn_rows(int il, SkipSchedule* const* skips, int32_t n, bool vote, std::vector<uint8_t>& runs) {
    runs.resize(n);
    int n_skip = 0;
    for (int t = 0; t < n; t++) {
        runs[t] = !skips || !skips[t] || skips[t]->ffn_runs(il);
        n_skip += !runs[t];
    }
    if (!vote || n_skip == 0 || n_skip == n) return;
    const bool run = 2 * n_skip <= n;
    for (int t = 0; t < n; t++) {
        if (runs[t] == run) continue;
        runs[t] = run;
        if (skips && skips[t]) skips[t]->set_ffn_skipped(il, !run);
    }
}

std::unique_ptr<Backend> make_backend(const std::string& name, const Model::Impl& model, const BackendParams& params) {
    if (name == "cpu") return make_cpu_backend(model, params);
    if (name == "cuda" || name == "auto") {
#ifdef FFNSKIP_HAVE_CUDA
        std::string why;
        if (cuda_device_available(&why)) return make_cuda_backend(model, params);
        if (name == "cuda") throw Error("backend 'cuda': no usable GPU: " + why);
#else
        if (name == "cuda") throw Error("backend 'cuda' is not available: this build of ffnskip has no CUDA backend "
                                        "(it was built without nvcc and cuBLAS)");
#endif
        return make_cpu_backend(model, params);
    }
    throw std::invalid_argument("unknown backend '" + name + "' (cpu, cuda or auto)");
}

}  // namespace ffnskip
