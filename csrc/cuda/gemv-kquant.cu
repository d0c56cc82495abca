// The decode product, de-quantization and embedding kernels for Q4_K and Q6_K weights.
#include "cuda/gemv-kernels.cuh"

namespace ffnskip {
namespace cuda {
namespace gemv_detail {

FFNSKIP_GEMV_INSTANTIATE(GgmlType::Q4_K)
FFNSKIP_GEMV_INSTANTIATE(GgmlType::Q6_K)

}  // namespace gemv_detail
}  // namespace cuda
}  // namespace ffnskip
