// Placeholder type table until the block-format implementation lands.
#include <stdexcept>
#include "quant/quant.h"
namespace ffnskip {
static const TypeTraits kTraits[] = {
    {"F32", 1, 4, GgmlType::F32}, {"F16", 1, 2, GgmlType::F16}, {"Q4_0", 32, 18, GgmlType::Q8_0},
    {"Q4_1", 32, 20, GgmlType::Q8_1}, {"?", 0, 0, GgmlType::F32}, {"?", 0, 0, GgmlType::F32},
    {"Q5_0", 32, 22, GgmlType::Q8_0}, {"Q5_1", 32, 24, GgmlType::Q8_1}, {"Q8_0", 32, 34, GgmlType::Q8_0},
    {"Q8_1", 32, 36, GgmlType::Q8_1}, {"Q2_K", 256, 84, GgmlType::Q8_K}, {"Q3_K", 256, 110, GgmlType::Q8_K},
    {"Q4_K", 256, 144, GgmlType::Q8_K}, {"Q5_K", 256, 176, GgmlType::Q8_K}, {"Q6_K", 256, 210, GgmlType::Q8_K},
    {"Q8_K", 256, 292, GgmlType::Q8_K}};
static const TypeTraits kBF16 = {"BF16", 1, 2, GgmlType::BF16};
bool type_is_supported(uint32_t raw) { return raw == 30 || (raw < 16 && raw != 4 && raw != 5); }
const char* type_name(uint32_t raw) { return type_is_supported(raw) ? type_traits((GgmlType)raw).name : "unknown"; }
const TypeTraits& type_traits(GgmlType t) {
    if (t == GgmlType::BF16) return kBF16;
    if (!type_is_supported((uint32_t)t)) throw std::invalid_argument("unsupported type");
    return kTraits[(int)t];
}
size_t row_size(GgmlType t, int64_t n) { return (size_t)(n / type_traits(t).block_size) * type_traits(t).type_size; }
const char* simd_level() { return "scalar"; }
}
namespace ffnskip {
float fp16_to_fp32(uint16_t h) { _Float16 x; __builtin_memcpy(&x, &h, 2); return (float)x; }
uint16_t fp32_to_fp16(float f) { _Float16 x = (_Float16)f; uint16_t h; __builtin_memcpy(&h, &x, 2); return h; }
}
