// cuBLAS, opened with dlopen at first use: the library (and `import ffnskip`) loads on
// machines without libcublas; only a CUDA session needs it.
#pragma once

#include <cublas_v2.h>

#include <string>

namespace ffnskip {
namespace cuda {

// cublasGemmEx is overloaded in C++ (a cudaDataType compute-type wrapper): the exported one.
using CublasGemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                          const void*, const void*, cudaDataType, int, const void*, cudaDataType, int,
                                          const void*, void*, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

struct CublasApi {
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    decltype(&cublasSetStream_v2) set_stream;
    CublasGemmExFn gemm_ex;
    decltype(&cublasGetStatusString) status_string;
};

// Loads libcublas.so.13 once: from this library's RPATH (the nvidia-cublas wheel beside
// the package), the loader's search path, or <this library's folder>/../nvidia/cu13/lib.
// Returns null and sets *why when it cannot.
const CublasApi* cublas_api(std::string* why);

}  // namespace cuda
}  // namespace ffnskip
