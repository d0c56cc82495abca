// The decode product, de-quantization and embedding kernels for Q5_0 and Q5_1 weights.
#include "cuda/gemv-kernels.cuh"

namespace ffnskip {
namespace cuda {
namespace gemv_detail {

FFNSKIP_GEMV_INSTANTIATE(GgmlType::Q5_0)
FFNSKIP_GEMV_INSTANTIATE(GgmlType::Q5_1)

}  // namespace gemv_detail
}  // namespace cuda
}  // namespace ffnskip
