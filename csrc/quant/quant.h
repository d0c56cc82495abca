// Tensor element types (ggml numbering, as stored in GGUF) and their block formats.
//
// Weights are multiplied with activations the way llama.cpp does it: each weight
// type names a `vec_dot_type`, the activation row is converted to that type once
// (8-bit blocks for the quantized formats, F16 for F16, ...), and a dot product of
// a weight row with a converted activation row gives one output. Every format has a
// scalar reference; SIMD variants are picked at run time and tested against it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ffnskip {

enum class GgmlType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};

struct TypeTraits {
    const char* name;        // "Q4_1"
    int64_t block_size;      // elements per block
    size_t type_size;        // bytes per block
    GgmlType vec_dot_type;   // activation format for dot products with this type
};

// True when `raw` is a type this engine can load (every type above).
bool type_is_supported(uint32_t raw);
// Name of any ggml type number, also unsupported ones ("IQ2_XXS", "type 99").
const char* type_name(uint32_t raw);
const TypeTraits& type_traits(GgmlType type);   // throws std::invalid_argument if unsupported
// Bytes of a row of n elements; n must be a multiple of the block size.
size_t row_size(GgmlType type, int64_t n);

// Scalar-exact decode of n elements (multiple of the block size), same values as
// gguf.quants.dequantize.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// Converts n activations to `type` (one of Q8_0, Q8_1, Q8_K, F16, BF16, F32) exactly
// as llama.cpp's reference quantizer does.
void quantize_row(GgmlType type, const float* src, void* dst, int64_t n);

// sum_i w[i] * a[i] over n elements: w a row of `wtype`, a a row already converted
// to type_traits(wtype).vec_dot_type. Uses the best SIMD path of this CPU.
float vec_dot(GgmlType wtype, int64_t n, const void* w, const void* a);
// The scalar reference of vec_dot (for tests).
float vec_dot_reference(GgmlType wtype, int64_t n, const void* w, const void* a);

// A dot-product kernel as vec_dot: n elements of w (a row of the weight type) times a
// (the same row length in its vec_dot_type).
using VecDotFn = float (*)(int64_t n, const void* w, const void* a);
// The kernel vec_dot uses for `wtype` right now (honours set_force_scalar at the time of
// the call), so matvec loops can hoist the type switch out of the row loop.
VecDotFn vec_dot_fn(GgmlType wtype);

// A tiled matrix product: weight rows [0, nr) times activation rows [0, nt) (converted
// to the vec_dot type), y[t * y_stride + r] = dot(row r, activation t). Each output has
// exactly the bits vec_dot gives for that pair, whatever nr and nt are, so a batch of
// tokens computes the same numbers as one token at a time. Weight rows are w_stride
// bytes apart, activation rows a_stride bytes.
using GemmFn = void (*)(int64_t n, const void* w, size_t w_stride, int nr, const void* a, size_t a_stride, int nt,
                        float* y, size_t y_stride);
// The tiled kernel for `wtype` right now, or null where there is none (loop over
// vec_dot_fn then). Honours set_force_scalar like vec_dot_fn.
GemmFn gemm_fn(GgmlType wtype);

// The SIMD level in use: "avx512" (AVX-512 F/BW/VL/DQ + VNNI), "avx2" (AVX2 + FMA +
// F16C) or "scalar". The best the CPU runs, unless FFNSKIP_CPU_SIMD names a lower one.
const char* simd_level();
// Forces the scalar path (true) or returns to the initial level (false); returns whether
// the scalar path was in use.
bool set_force_scalar(bool force);
// Switches to a named level (tests and benchmarks compare paths); returns the previous
// one. Throws std::invalid_argument for an unknown name or a level this CPU cannot run.
const char* set_simd_level(const char* name);
// The levels this CPU and build can run, lowest first ("scalar" always).
std::vector<std::string> simd_levels();

// fp16 / bf16 helpers (round to nearest even, as numpy and ggml do).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);

}  // namespace ffnskip
