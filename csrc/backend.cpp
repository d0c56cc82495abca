#include "backend.h"

#include <stdexcept>

#include "cpu/forward-cpu.h"

namespace ffnskip {

#ifdef FFNSKIP_HAVE_CUDA
// Defined by the CUDA backend; throws Error when no usable GPU is present.
std::unique_ptr<Backend> make_cuda_backend(const Model::Impl& model, const BackendParams& params);
bool cuda_device_available(std::string* why);
#endif

std::unique_ptr<Backend> make_backend(const std::string& name, const Model::Impl& model, const BackendParams& params) {
    if (name == "cpu") return std::make_unique<CpuForward>(model, params);
    if (name == "cuda" || name == "auto") {
#ifdef FFNSKIP_HAVE_CUDA
        std::string why;
        if (cuda_device_available(&why)) return make_cuda_backend(model, params);
        if (name == "cuda") throw Error("backend 'cuda': no usable GPU: " + why);
#else
        if (name == "cuda") throw Error("backend 'cuda' is not available: this build of ffnskip has no CUDA backend "
                                        "(it was built without nvcc and cuBLAS)");
#endif
        return std::make_unique<CpuForward>(model, params);
    }
    throw std::invalid_argument("unknown backend '" + name + "' (cpu, cuda or auto)");
}

}  // namespace ffnskip
