#include "cuda/cublas-dl.h"

#include <dlfcn.h>

#include <mutex>

namespace ffnskip {
namespace cuda {

namespace {

constexpr const char* CUBLAS_SONAME = "libcublas.so.13";

struct Loaded {
    CublasApi api{};
    bool ok = false;
    std::string why;
};

void* open_cublas(std::string* tried) {
    // RUNPATH of this library and the usual search path.
    void* h = dlopen(CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
    *tried = dlerror();
    // The wheel installed beside the package: <site-packages>/nvidia/cu13/lib.
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&cublas_api), &info) && info.dli_fname) {
        std::string dir = info.dli_fname;
        const size_t slash = dir.rfind('/');
        dir = slash == std::string::npos ? std::string(".") : dir.substr(0, slash);
        const std::string path = dir + "/../nvidia/cu13/lib/" + CUBLAS_SONAME;
        h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (h) return h;
        *tried += "; " + std::string(dlerror());
    }
    return nullptr;
}

template <typename F>
bool bind(void* h, const char* name, F* out, std::string* why) {
    *out = reinterpret_cast<F>(dlsym(h, name));
    if (!*out) *why = std::string(CUBLAS_SONAME) + " has no symbol " + name;
    return *out != nullptr;
}

Loaded load() {
    Loaded l;
    std::string tried;
    void* h = open_cublas(&tried);
    if (!h) {
        l.why = "cuBLAS (" + std::string(CUBLAS_SONAME) + ") could not be loaded (" + tried +
                "); install it with: pip install nvidia-cublas==13.1.0.3  (or ffnskip[cuda])";
        return l;
    }
    l.ok = bind(h, "cublasCreate_v2", &l.api.create, &l.why) && bind(h, "cublasDestroy_v2", &l.api.destroy, &l.why) &&
           bind(h, "cublasSetStream_v2", &l.api.set_stream, &l.why) && bind(h, "cublasGemmEx", &l.api.gemm_ex, &l.why) &&
           bind(h, "cublasGetStatusString", &l.api.status_string, &l.why);
    return l;   // the handle stays open for the life of the process
}

}  // namespace

const CublasApi* cublas_api(std::string* why) {
    static std::once_flag once;
    static Loaded loaded;
    std::call_once(once, [] { loaded = load(); });
    if (!loaded.ok) {
        if (why) *why = loaded.why;
        return nullptr;
    }
    return &loaded.api;
}

}  // namespace cuda
}  // namespace ffnskip
