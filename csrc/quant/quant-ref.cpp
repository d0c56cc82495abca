// Scalar reference of every block format: decode, activation quantizers, dot products.
//
// Decoding must give the same float32 bits as gguf.quants.dequantize, so each value is
// computed with the same float32 operations in the same order (scale products first,
// then one multiply and one add/subtract). This file is compiled with
// -ffp-contract=off: a fused multiply-add would round once instead of twice.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "quant/quant-impl.h"

namespace ffnskip {

// ---- decode -------------------------------------------------------------------

static void dequantize_q4_0(const block_q4_0* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = d * float((x[i].qs[j] & 0xF) - 8);
            y[j + QK4_0 / 2] = d * float((x[i].qs[j] >> 4) - 8);
        }
        y += QK4_0;
    }
}

static void dequantize_q4_1(const block_q4_1* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        const float m = half_to_float(x[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = d * float(x[i].qs[j] & 0xF) + m;
            y[j + QK4_1 / 2] = d * float(x[i].qs[j] >> 4) + m;
        }
        y += QK4_1;
    }
}

static uint32_t load_u32(const uint8_t* p) {
    return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

static void dequantize_q5_0(const block_q5_0* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        const uint32_t qh = load_u32(x[i].qh);
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int lo = (x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int hi = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            y[j] = d * float(lo - 16);
            y[j + QK5_0 / 2] = d * float(hi - 16);
        }
        y += QK5_0;
    }
}

static void dequantize_q5_1(const block_q5_1* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        const float m = half_to_float(x[i].m);
        const uint32_t qh = load_u32(x[i].qh);
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int lo = (x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int hi = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            y[j] = d * float(lo) + m;
            y[j + QK5_1 / 2] = d * float(hi) + m;
        }
        y += QK5_1;
    }
}

static void dequantize_q8_0(const block_q8_0* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        for (int j = 0; j < QK8_0; j++) y[j] = float(x[i].qs[j]) * d;
        y += QK8_0;
    }
}

static void dequantize_q8_1(const block_q8_1* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        for (int j = 0; j < QK8_1; j++) y[j] = float(x[i].qs[j]) * d;
        y += QK8_1;
    }
}

// Elements 128*h + 32*s + l take bits 2s..2s+1 of qs[32*h + l]; scale/min per 16.
static void dequantize_q2_K(const block_q2_K* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        const float dmin = half_to_float(x[i].dmin);
        for (int e = 0; e < QK_K; e++) {
            const int h = e / 128, s = (e / 32) % 4, l = e % 32;
            const uint8_t sc = x[i].scales[e / 16];
            const float dl = d * float(sc & 0xF);
            const float ml = dmin * float(sc >> 4);
            const int q = (x[i].qs[32 * h + l] >> (2 * s)) & 3;
            y[e] = dl * float(q) - ml;
        }
        y += QK_K;
    }
}

// 16 six-bit scales of Q3_K: low 4 bits from bytes 0..7 (low nibbles first), high 2
// bits from bytes 8..11 (two bits per scale, four scales per shift).
static void q3_K_scales(const uint8_t* packed, int* scales) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? (packed[j] & 0xF) : (packed[j - 8] >> 4);
        const int hi = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        scales[j] = (lo | (hi << 4)) - 32;
    }
}

// Element 128*h + 32*s + l: low 2 bits from qs[32*h + l] >> 2s, high bit from
// hmask[l] >> (e / 32); a clear high bit means q - 4.
static inline int q3_K_value(const block_q3_K* b, int e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const int lo = (b->qs[32 * h + l] >> (2 * s)) & 3;
    const int hb = (b->hmask[l] >> (e / 32)) & 1;
    return lo - (hb ? 0 : 4);
}

static void dequantize_q3_K(const block_q3_K* x, float* y, int64_t nb) {
    int scales[16];
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        q3_K_scales(x[i].scales, scales);
        for (int e = 0; e < QK_K; e++) {
            const float dl = d * float(scales[e / 16]);
            y[e] = dl * float(q3_K_value(&x[i], e));
        }
        y += QK_K;
    }
}

// Q4_K element 64*c + 32*s + l is nibble s of qs[32*c + l], in sub-block 2c + s.
static void dequantize_q4_K(const block_q4_K* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        const float dmin = half_to_float(x[i].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            get_scale_min_k4(j, x[i].scales, &sc, &m);
            const float d1 = d * float(sc);
            const float m1 = dmin * float(m);
            const uint8_t* q = x[i].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++) y[32 * j + l] = d1 * float((q[l] >> shift) & 0xF) - m1;
        }
        y += QK_K;
    }
}

static void dequantize_q5_K(const block_q5_K* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        const float dmin = half_to_float(x[i].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            get_scale_min_k4(j, x[i].scales, &sc, &m);
            const float d1 = d * float(sc);
            const float m1 = dmin * float(m);
            const uint8_t* q = x[i].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++) {
                const int v = ((q[l] >> shift) & 0xF) | (((x[i].qh[l] >> j) & 1) << 4);
                y[32 * j + l] = d1 * float(v) - m1;
            }
        }
        y += QK_K;
    }
}

// Q6_K element 128*h + 32*s + l: low nibble (s even) or high nibble (s odd) of
// ql[64*h + 32*(s%2) + l], high 2 bits from qh[32*h + l] >> 2s; value q - 32.
static inline int q6_K_value(const block_q6_K* b, int e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const int lo = (b->ql[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0xF;
    const int hi = (b->qh[32 * h + l] >> (2 * s)) & 3;
    return (lo | (hi << 4)) - 32;
}

static void dequantize_q6_K(const block_q6_K* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        for (int e = 0; e < QK_K; e++) {
            const float dl = d * float(x[i].scales[e / 16]);
            y[e] = dl * float(q6_K_value(&x[i], e));
        }
        y += QK_K;
    }
}

static void dequantize_q8_K(const block_q8_K* x, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        for (int j = 0; j < QK_K; j++) y[j] = x[i].d * float(x[i].qs[j]);
        y += QK_K;
    }
}

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
    const TypeTraits& t = type_traits(type);
    row_size(type, n);   // validates n
    const int64_t nb = n / t.block_size;
    switch (type) {
        case GgmlType::F32: std::memcpy(dst, src, size_t(n) * 4); break;
        case GgmlType::F16: {
            const uint16_t* h = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; i++) dst[i] = half_to_float(h[i]);
            break;
        }
        case GgmlType::BF16: {
            const uint16_t* h = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; i++) dst[i] = bf16_bits_to_float(h[i]);
            break;
        }
        case GgmlType::Q4_0: dequantize_q4_0(static_cast<const block_q4_0*>(src), dst, nb); break;
        case GgmlType::Q4_1: dequantize_q4_1(static_cast<const block_q4_1*>(src), dst, nb); break;
        case GgmlType::Q5_0: dequantize_q5_0(static_cast<const block_q5_0*>(src), dst, nb); break;
        case GgmlType::Q5_1: dequantize_q5_1(static_cast<const block_q5_1*>(src), dst, nb); break;
        case GgmlType::Q8_0: dequantize_q8_0(static_cast<const block_q8_0*>(src), dst, nb); break;
        case GgmlType::Q8_1: dequantize_q8_1(static_cast<const block_q8_1*>(src), dst, nb); break;
        case GgmlType::Q2_K: dequantize_q2_K(static_cast<const block_q2_K*>(src), dst, nb); break;
        case GgmlType::Q3_K: dequantize_q3_K(static_cast<const block_q3_K*>(src), dst, nb); break;
        case GgmlType::Q4_K: dequantize_q4_K(static_cast<const block_q4_K*>(src), dst, nb); break;
        case GgmlType::Q5_K: dequantize_q5_K(static_cast<const block_q5_K*>(src), dst, nb); break;
        case GgmlType::Q6_K: dequantize_q6_K(static_cast<const block_q6_K*>(src), dst, nb); break;
        case GgmlType::Q8_K: dequantize_q8_K(static_cast<const block_q8_K*>(src), dst, nb); break;
    }
}

// ---- activation quantizers ------------------------------------------------------

static void quantize_q8_0(const float* x, block_q8_0* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = float_to_half(d);
        for (int j = 0; j < QK8_0; j++) y[i].qs[j] = int8_t(std::round(x[j] * id));   // ties away from zero
        x += QK8_0;
    }
}

static void quantize_q8_1(const float* x, block_q8_1* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; j++) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = float_to_half(d);
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[i].qs[j] = int8_t(std::round(x[j] * id));
            sum += y[i].qs[j];
        }
        y[i].s = float_to_half(float(sum) * d);
        x += QK8_1;
    }
}

// Q8_K scales by the signed element of largest magnitude (that one maps to -127) and
// rounds half to even (ggml's float-add trick; nearbyint in the default rounding mode).
static void quantize_q8_K(const float* x, block_q8_K* y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            x += QK_K;
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = int(std::nearbyint(iscale * x[j]));
            y[i].qs[j] = int8_t(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = int16_t(sum);
        }
        y[i].d = 1.0f / iscale;
        x += QK_K;
    }
}

void quantize_row_reference(GgmlType type, const float* src, void* dst, int64_t n) {
    const TypeTraits& t = type_traits(type);
    row_size(type, n);
    const int64_t nb = n / t.block_size;
    switch (type) {
        case GgmlType::F32: std::memcpy(dst, src, size_t(n) * 4); break;
        case GgmlType::F16: {
            uint16_t* h = static_cast<uint16_t*>(dst);
            for (int64_t i = 0; i < n; i++) h[i] = float_to_half(src[i]);
            break;
        }
        case GgmlType::BF16: {
            uint16_t* h = static_cast<uint16_t*>(dst);
            for (int64_t i = 0; i < n; i++) h[i] = float_to_bf16(src[i]);
            break;
        }
        case GgmlType::Q8_0: quantize_q8_0(src, static_cast<block_q8_0*>(dst), nb); break;
        case GgmlType::Q8_1: quantize_q8_1(src, static_cast<block_q8_1*>(dst), nb); break;
        case GgmlType::Q8_K: quantize_q8_K(src, static_cast<block_q8_K*>(dst), nb); break;
        default:
            throw std::invalid_argument(std::string("quantize_row: ") + t.name +
                                        " is a weight format; activations convert to Q8_0, Q8_1, Q8_K, F16, BF16 or F32");
    }
}

// ---- dot products -------------------------------------------------------------------
// Integer sums inside a block, scaled once per block (or per sub-block), as ggml does.

static float dot_q4_0_q8_0(int64_t n, const void* vw, const void* va) {
    const block_q4_0* x = static_cast<const block_q4_0*>(vw);
    const block_q8_0* y = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0 / 2; j++) {
            sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j];
            sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + QK8_0 / 2];
        }
        sumf += float(sumi) * (half_to_float(x[i].d) * half_to_float(y[i].d));
    }
    return sumf;
}

static float dot_q4_1_q8_1(int64_t n, const void* vw, const void* va) {
    const block_q4_1* x = static_cast<const block_q4_1*>(vw);
    const block_q8_1* y = static_cast<const block_q8_1*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_1 / 2; j++) {
            sumi += (x[i].qs[j] & 0xF) * y[i].qs[j];
            sumi += (x[i].qs[j] >> 4) * y[i].qs[j + QK8_1 / 2];
        }
        sumf += (half_to_float(x[i].d) * half_to_float(y[i].d)) * float(sumi) +
                half_to_float(x[i].m) * half_to_float(y[i].s);
    }
    return sumf;
}

static float dot_q5_0_q8_0(int64_t n, const void* vw, const void* va) {
    const block_q5_0* x = static_cast<const block_q5_0*>(vw);
    const block_q8_0* y = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK8_0 / 2; j++) {
            const int lo = ((x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
            const int hi = ((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += lo * y[i].qs[j] + hi * y[i].qs[j + QK8_0 / 2];
        }
        sumf += float(sumi) * (half_to_float(x[i].d) * half_to_float(y[i].d));
    }
    return sumf;
}

static float dot_q5_1_q8_1(int64_t n, const void* vw, const void* va) {
    const block_q5_1* x = static_cast<const block_q5_1*>(vw);
    const block_q8_1* y = static_cast<const block_q8_1*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK8_1 / 2; j++) {
            const int lo = (x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int hi = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            sumi += lo * y[i].qs[j] + hi * y[i].qs[j + QK8_1 / 2];
        }
        sumf += (half_to_float(x[i].d) * half_to_float(y[i].d)) * float(sumi) +
                half_to_float(x[i].m) * half_to_float(y[i].s);
    }
    return sumf;
}

static float dot_q8_0_q8_0(int64_t n, const void* vw, const void* va) {
    const block_q8_0* x = static_cast<const block_q8_0*>(vw);
    const block_q8_0* y = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sumf += float(sumi) * (half_to_float(x[i].d) * half_to_float(y[i].d));
    }
    return sumf;
}

static float dot_q8_1_q8_1(int64_t n, const void* vw, const void* va) {
    const block_q8_1* x = static_cast<const block_q8_1*>(vw);
    const block_q8_1* y = static_cast<const block_q8_1*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_1; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sumf += float(sumi) * (half_to_float(x[i].d) * half_to_float(y[i].d));
    }
    return sumf;
}

static float dot_q2_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q2_K* x = static_cast<const block_q2_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int summs = 0, isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            summs += (x[i].scales[j] >> 4) * y[i].bsums[j];
            int s = 0;
            for (int l = 0; l < 16; l++) {
                const int e = 16 * j + l;
                const int q = (x[i].qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
                s += q * y[i].qs[e];
            }
            isum += (x[i].scales[j] & 0xF) * s;
        }
        const float dall = y[i].d * half_to_float(x[i].d);
        const float dmin = y[i].d * half_to_float(x[i].dmin);
        sumf += dall * float(isum) - dmin * float(summs);
    }
    return sumf;
}

static float dot_q3_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q3_K* x = static_cast<const block_q3_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    int scales[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        q3_K_scales(x[i].scales, scales);
        int isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += q3_K_value(&x[i], 16 * j + l) * y[i].qs[16 * j + l];
            isum += scales[j] * s;
        }
        sumf += (half_to_float(x[i].d) * y[i].d) * float(isum);
    }
    return sumf;
}

static float dot_q4_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q4_K* x = static_cast<const block_q4_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int isum = 0, summs = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            get_scale_min_k4(j, x[i].scales, &sc, &m);
            const uint8_t* q = x[i].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            int s = 0;
            for (int l = 0; l < 32; l++) s += ((q[l] >> shift) & 0xF) * y[i].qs[32 * j + l];
            isum += sc * s;
            summs += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
        }
        const float d = y[i].d * half_to_float(x[i].d);
        const float dmin = y[i].d * half_to_float(x[i].dmin);
        sumf += d * float(isum) - dmin * float(summs);
    }
    return sumf;
}

static float dot_q5_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q5_K* x = static_cast<const block_q5_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int isum = 0, summs = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            get_scale_min_k4(j, x[i].scales, &sc, &m);
            const uint8_t* q = x[i].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            int s = 0;
            for (int l = 0; l < 32; l++) {
                const int v = ((q[l] >> shift) & 0xF) | (((x[i].qh[l] >> j) & 1) << 4);
                s += v * y[i].qs[32 * j + l];
            }
            isum += sc * s;
            summs += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
        }
        const float d = y[i].d * half_to_float(x[i].d);
        const float dmin = y[i].d * half_to_float(x[i].dmin);
        sumf += d * float(isum) - dmin * float(summs);
    }
    return sumf;
}

static float dot_q6_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q6_K* x = static_cast<const block_q6_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += q6_K_value(&x[i], 16 * j + l) * y[i].qs[16 * j + l];
            isum += x[i].scales[j] * s;
        }
        sumf += (half_to_float(x[i].d) * y[i].d) * float(isum);
    }
    return sumf;
}

static float dot_q8_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q8_K* x = static_cast<const block_q8_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sumi = 0;
        for (int j = 0; j < QK_K; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sumf += (x[i].d * y[i].d) * float(sumi);
    }
    return sumf;
}

// Float formats: products rounded to float, summed in double (ggml_float).
static float dot_f32(int64_t n, const void* vw, const void* va) {
    const float* x = static_cast<const float*>(vw);
    const float* y = static_cast<const float*>(va);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += double(x[i] * y[i]);
    return float(sum);
}

static float dot_f16(int64_t n, const void* vw, const void* va) {
    const uint16_t* x = static_cast<const uint16_t*>(vw);
    const uint16_t* y = static_cast<const uint16_t*>(va);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += double(half_to_float(x[i]) * half_to_float(y[i]));
    return float(sum);
}

static float dot_bf16(int64_t n, const void* vw, const void* va) {
    const uint16_t* x = static_cast<const uint16_t*>(vw);
    const uint16_t* y = static_cast<const uint16_t*>(va);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += double(bf16_bits_to_float(x[i]) * bf16_bits_to_float(y[i]));
    return float(sum);
}

void quant_ref_kernels(QuantKernels* k) {
    for (int i = 0; i < TYPE_TABLE_SIZE; i++) {
        k->vec_dot[i] = nullptr;
        k->gemm[i] = nullptr;
        k->quantize[i] = nullptr;
    }
    k->vec_dot[int(GgmlType::F32)] = dot_f32;
    k->vec_dot[int(GgmlType::F16)] = dot_f16;
    k->vec_dot[int(GgmlType::BF16)] = dot_bf16;
    k->vec_dot[int(GgmlType::Q4_0)] = dot_q4_0_q8_0;
    k->vec_dot[int(GgmlType::Q4_1)] = dot_q4_1_q8_1;
    k->vec_dot[int(GgmlType::Q5_0)] = dot_q5_0_q8_0;
    k->vec_dot[int(GgmlType::Q5_1)] = dot_q5_1_q8_1;
    k->vec_dot[int(GgmlType::Q8_0)] = dot_q8_0_q8_0;
    k->vec_dot[int(GgmlType::Q8_1)] = dot_q8_1_q8_1;
    k->vec_dot[int(GgmlType::Q2_K)] = dot_q2_K_q8_K;
    k->vec_dot[int(GgmlType::Q3_K)] = dot_q3_K_q8_K;
    k->vec_dot[int(GgmlType::Q4_K)] = dot_q4_K_q8_K;
    k->vec_dot[int(GgmlType::Q5_K)] = dot_q5_K_q8_K;
    k->vec_dot[int(GgmlType::Q6_K)] = dot_q6_K_q8_K;
    k->vec_dot[int(GgmlType::Q8_K)] = dot_q8_K_q8_K;
}

}  // namespace ffnskip
