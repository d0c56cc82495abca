// The decode product, de-quantization and embedding kernels for F32, F16 and BF16 weights.
#include "cuda/gemv-kernels.cuh"

namespace ffnskip {
namespace cuda {
namespace gemv_detail {

FFNSKIP_GEMV_INSTANTIATE(GgmlType::F32)
FFNSKIP_GEMV_INSTANTIATE(GgmlType::F16)
FFNSKIP_GEMV_INSTANTIATE(GgmlType::BF16)

}  // namespace gemv_detail
}  // namespace cuda
}  // namespace ffnskip
