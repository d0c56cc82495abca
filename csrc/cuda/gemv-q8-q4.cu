// The decode product, de-quantization and embedding kernels for Q8_0, Q4_0 and Q4_1 weights.
#include "cuda/gemv-kernels.cuh"

namespace ffnskip {
namespace cuda {
namespace gemv_detail {

FFNSKIP_GEMV_INSTANTIATE(GgmlType::Q8_0)
FFNSKIP_GEMV_INSTANTIATE(GgmlType::Q4_0)
FFNSKIP_GEMV_INSTANTIATE(GgmlType::Q4_1)

}  // namespace gemv_detail
}  // namespace cuda
}  // namespace ffnskip
