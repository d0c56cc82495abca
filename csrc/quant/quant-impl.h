// Block layouts (byte-compatible with ggml) and the kernel tables shared by the
// scalar reference (quant-ref.cpp) and the SIMD variants (quant-avx2.cpp).
#pragma once

#include <cstdint>
#include <cstring>

#include "quant/quant.h"

namespace ffnskip {

constexpr int QK4_0 = 32;
constexpr int QK4_1 = 32;
constexpr int QK5_0 = 32;
constexpr int QK5_1 = 32;
constexpr int QK8_0 = 32;
constexpr int QK8_1 = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

// Element j < 16 of a 32-block is the low nibble of qs[j], element j + 16 the high nibble.
struct block_q4_0 {
    uint16_t d;               // fp16 scale
    uint8_t qs[QK4_0 / 2];    // nibbles, value = d * (q - 8)
};
struct block_q4_1 {
    uint16_t d;               // fp16 scale
    uint16_t m;               // fp16 minimum, value = d * q + m
    uint8_t qs[QK4_1 / 2];
};
struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4];            // bit j (little-endian uint32) = 5th bit of element j
    uint8_t qs[QK5_0 / 2];    // value = d * (q - 16)
};
struct block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];    // value = d * q + m
};
struct block_q8_0 {
    uint16_t d;
    int8_t qs[QK8_0];         // value = d * q
};
struct block_q8_1 {
    uint16_t d;
    uint16_t s;               // fp16 of d * sum(qs)
    int8_t qs[QK8_1];
};

// K-quants: super-blocks of 256 elements.
struct block_q2_K {
    uint8_t scales[QK_K / 16];  // per 16 elements: low nibble scale, high nibble min
    uint8_t qs[QK_K / 4];       // 2-bit quants
    uint16_t d;                 // fp16 super-scale of the scales
    uint16_t dmin;              // fp16 super-scale of the mins
};
struct block_q3_K {
    uint8_t hmask[QK_K / 8];    // high bit, set = no offset (q in 0..3), clear = q - 4
    uint8_t qs[QK_K / 4];       // low 2 bits
    uint8_t scales[12];         // 16 six-bit scales, biased by 32
    uint16_t d;
};
struct block_q4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];  // 8 six-bit scales and 8 six-bit mins (per 32)
    uint8_t qs[QK_K / 2];
};
struct block_q5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
struct block_q6_K {
    uint8_t ql[QK_K / 2];       // low 4 bits
    uint8_t qh[QK_K / 4];       // high 2 bits
    int8_t scales[QK_K / 16];   // per 16 elements
    uint16_t d;
};
struct block_q8_K {
    float d;                    // float, not fp16
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];   // sum of qs per 16 elements
};

static_assert(sizeof(block_q4_0) == 18, "block_q4_0 layout");
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 layout");
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 layout");
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 layout");
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 layout");
static_assert(sizeof(block_q2_K) == 84, "block_q2_K layout");
static_assert(sizeof(block_q3_K) == 110, "block_q3_K layout");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K layout");
static_assert(sizeof(block_q5_K) == 176, "block_q5_K layout");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K layout");
static_assert(sizeof(block_q8_K) == 292, "block_q8_K layout");

inline float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Exact fp16 -> fp32 (every fp16 value, subnormals and NaN payloads included, is a float).
inline float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        // zero or subnormal: mant * 2^-24, exact in float
        return bits_to_float(sign | float_to_bits(float(mant) * 5.9604644775390625e-8f));
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
    return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
}

// fp32 -> fp16, round to nearest even; overflow gives inf, NaN stays a quiet NaN.
inline uint16_t float_to_half(float f) {
    uint32_t u = float_to_bits(f);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000);
    u &= 0x7fffffff;
    if (u > 0x7f800000u) return uint16_t(sign | 0x7e00 | ((u >> 13) & 0x3ff));
    if (u >= 0x477ff000u) return uint16_t(sign | 0x7c00);   // >= 65520 rounds to inf
    if (u < 0x38800000u) {
        // below the smallest normal fp16 (2^-14): in 0.5 + |f| one float ulp is 2^-24,
        // the fp16 subnormal step, so the hardware add does the rounding for us
        const float r = bits_to_float(u) + 0.5f;
        return uint16_t(sign | (float_to_bits(r) - 0x3f000000u));
    }
    // normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to even;
    // a mantissa carry correctly bumps the exponent
    u += 0xc8000fffu + ((u >> 13) & 1);
    return uint16_t(sign | (u >> 13));
}

// fp32 -> bf16 as ggml does it: NaN made quiet, otherwise round to nearest even.
inline uint16_t float_to_bf16(float f) {
    const uint32_t u = float_to_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000u) return uint16_t((u >> 16) | 64);
    return uint16_t((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

inline float bf16_bits_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

// Q4_K / Q5_K: sub-block j (of 8) scale and min from the 12 packed bytes.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Number of ggml type numbers a table indexed by type needs (BF16 = 30 is the largest we know).
constexpr int TYPE_TABLE_SIZE = 31;

// n floats (a multiple of the block size) to one activation format.
using QuantizeFn = void (*)(const float* src, void* dst, int64_t n);

// Kernels of one implementation (scalar or SIMD); null entries fall back to scalar.
struct QuantKernels {
    VecDotFn vec_dot[TYPE_TABLE_SIZE];
    GemmFn gemm[TYPE_TABLE_SIZE];   // null: no tiled kernel, matmul loops over vec_dot
    // Activation converters with exactly the reference's output; null: the reference.
    QuantizeFn quantize[TYPE_TABLE_SIZE];
};

// A buffer of at least n floats for the calling thread, valid until its next call (it only
// grows). Lives in a file built without SIMD flags: std::vector code instantiated inside a
// *-avx2/-avx512 file could be the copy the linker keeps for every caller.
float* scratch_floats(size_t n);

// The scalar quantize_row (quantize_row dispatches to SIMD converters where there are some).
void quantize_row_reference(GgmlType type, const float* src, void* dst, int64_t n);

// Fills every vec_dot entry with the scalar reference.
void quant_ref_kernels(QuantKernels* k);
// Overwrites the entries that have AVX2 versions; call only when the CPU and OS support
// AVX2, FMA and F16C. Returns false (and changes nothing) when the build has no AVX2 code.
bool quant_avx2_kernels(QuantKernels* k);
// Overwrites the entries that have AVX-512 versions (on top of the AVX2 table); call only
// when the CPU and OS support AVX512 F/BW/VL/DQ and VNNI. False when the build has none.
bool quant_avx512_kernels(QuantKernels* k);
// Q4_1's and Q8_0's AVX-512 matrix products and dot products (quant-rows16-avx512.cpp);
// called by quant_avx512_kernels.
bool quant_rows16_avx512_kernels(QuantKernels* k);

}  // namespace ffnskip
