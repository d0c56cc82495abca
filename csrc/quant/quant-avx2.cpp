// AVX2 + FMA + F16C dot products. Compiled with -mavx2 -mfma -mf16c; only installed
// by quant.cpp after a CPUID/XGETBV check. Integer formats multiply 8-bit quants with
// _mm256_maddubs_epi16 (unsigned x signed bytes -> int16 pairs), widen with
// _mm256_madd_epi16 (times 1 or a sub-block scale) and convert to float once per block.
//
// Bounds that keep maddubs from saturating: the activation side is always in
// [-127, 127] (our quantizers never produce -128), and |weight quant| <= 128, so a pair
// sums to at most 2 * 128 * 127 = 32512.
//
// Q8_1 and Q8_K weights use the scalar kernels. Q4_1, Q5_0, Q8_0, Q4_K, Q6_K and F16 also
// have tiled kernels (several rows times several tokens) for matrix products.
#include "quant/quant-impl.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include "quant/gemm-tiles.h"
#include "quant/simd-avx2.h"

namespace ffnskip {
// Kernel types local to this file: the AVX2 and AVX-512 files define tiles of the same
// names, and shared (weak) template instances would let the linker keep one for both.
namespace {

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

static inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

static inline __m256i combine128(__m128i lo, __m128i hi) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

// 16 bytes of packed nibbles -> 32 bytes: element j < 16 the low nibble of byte j,
// element j + 16 the high one (the Q4_0/Q4_1/Q5_x order).
static inline __m256i unpack_nibbles_32(const uint8_t* qs) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    return _mm256_and_si256(combine128(b, _mm_srli_epi16(b, 4)), _mm256_set1_epi8(0x0F));
}

// 32 bits (little-endian) -> 32 bytes, 0xFF where the bit is set.
static inline __m256i bits_to_bytes_32(const uint8_t* p) {
    uint32_t bits;
    std::memcpy(&bits, p, 4);
    // shuffle_epi8 works per 128-bit lane; the broadcast puts the 4 bytes in both lanes
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), shuf);
    const __m256i mask = _mm256_set1_epi64x(int64_t(0x8040201008040201ULL));
    return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
}

// Signed weight bytes x times activation bytes y, in int16 pairs: |x| * (y * sign(x)).
static inline __m256i mul_i8_pairs16(__m256i x, __m256i y) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

static inline __m256i pairs16_to_32(__m256i v) { return _mm256_madd_epi16(v, _mm256_set1_epi16(1)); }

// int16 vector whose low 128-bit half is `a`, high half `b` (two 16-element sub-blocks).
static inline __m256i scale_pair16(int a, int b) {
    return combine128(_mm_set1_epi16(int16_t(a)), _mm_set1_epi16(int16_t(b)));
}

// ---- 32-element blocks -------------------------------------------------------------

static float dot_q4_0_q8_0(int64_t n, const void* vw, const void* va) {
    const block_q4_0* x = static_cast<const block_q4_0*>(vw);
    const block_q8_0* y = static_cast<const block_q8_0*>(va);
    const int64_t nb = n / QK8_0;
    const __m256i off = _mm256_set1_epi8(8);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m256i q0 = _mm256_sub_epi8(unpack_nibbles_32(x[i].qs), off);
        const __m256i q1 = _mm256_sub_epi8(unpack_nibbles_32(x[i + 1].qs), off);
        const __m256i s0 = pairs16_to_32(mul_i8_pairs16(q0, load256(y[i].qs)));
        const __m256i s1 = pairs16_to_32(mul_i8_pairs16(q1, load256(y[i + 1].qs)));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)), _mm256_cvtepi32_ps(s1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i q = _mm256_sub_epi8(unpack_nibbles_32(x[i].qs), off);
        const __m256i s = pairs16_to_32(mul_i8_pairs16(q, load256(y[i].qs)));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(s), acc0);
    }
    return hsum_avx2(_mm256_add_ps(acc0, acc1));
}

// Two adjacent fp16 values ((d, m) of a weight block, (d, s) of a Q8_1 block) as floats
// in lanes 0 and 1.
static inline __m128 half2_to_float(const uint16_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(int(v)));
}

// (d, m) of a weight block and (d, s) of a Q8_1 block: [dx*dy, mx*sy] for a block.
static inline __m128 dm_products(const uint16_t* wdm, const uint16_t* ads) {
    return _mm_mul_ps(half2_to_float(wdm), half2_to_float(ads));
}

// Q5_0 quants as signed bytes q - 16: a clear 5th bit sets the top nibble (0xF0 | q = q - 16).
static inline __m256i q5_0_quants(const block_q5_0* b) {
    const __m256i hi = _mm256_andnot_si256(bits_to_bytes_32(b->qh), _mm256_set1_epi8(int8_t(0xF0)));
    return _mm256_or_si256(unpack_nibbles_32(b->qs), hi);
}

static float dot_q5_1_q8_1(int64_t n, const void* vw, const void* va) {
    const block_q5_1* x = static_cast<const block_q5_1*>(vw);
    const block_q8_1* y = static_cast<const block_q8_1*>(va);
    const int64_t nb = n / QK8_1;
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const __m128 p = dm_products(&x[i].d, &y[i].d);
        const __m256i hi = _mm256_and_si256(bits_to_bytes_32(x[i].qh), _mm256_set1_epi8(0x10));
        const __m256i q = _mm256_or_si256(unpack_nibbles_32(x[i].qs), hi);   // unsigned 0..31
        const __m256i s = pairs16_to_32(_mm256_maddubs_epi16(q, load256(y[i].qs)));
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(p), _mm256_cvtepi32_ps(s), acc);
        acc_m = _mm_add_ps(acc_m, p);
    }
    return hsum_avx2(acc) + _mm_cvtss_f32(_mm_shuffle_ps(acc_m, acc_m, 1));
}

// ---- K-quants (256-element super-blocks against Q8_K) ---------------------------------

static float dot_q4_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q4_K* x = static_cast<const block_q4_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    float acc_m = 0.0f;
    uint8_t sc[8], mn[8];
    for (int64_t i = 0; i < nb; i++) {
        prefetch_ahead<sizeof(block_q4_K)>(x + i);
        k4_scales(x[i].scales, sc, mn);
        acc_m += y[i].d * h2f(x[i].dmin) * float(k4_mins_dot(y[i].bsums, mn));
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i qv = load256(x[i].qs + 32 * c);
            const __m256i lo = _mm256_and_si256(qv, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
            const __m256i p0 = _mm256_maddubs_epi16(lo, load256(y[i].qs + 64 * c));
            const __m256i p1 = _mm256_maddubs_epi16(hi, load256(y[i].qs + 64 * c + 32));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * c])));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * c + 1])));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_avx2(acc) - acc_m;
}

static float dot_q5_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q5_K* x = static_cast<const block_q5_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float acc_m = 0.0f;
    uint8_t sc[8], mn[8];
    for (int64_t i = 0; i < nb; i++) {
        k4_scales(x[i].scales, sc, mn);
        acc_m += y[i].d * h2f(x[i].dmin) * float(k4_mins_dot(y[i].bsums, mn));
        // bit j of qh[l] is the 5th bit of sub-block j; shift it down to bit 0 two at a time
        __m256i hbits = load256(x[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i qv = load256(x[i].qs + 32 * c);
            const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(hbits, one), 4);
            const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 1), one), 4);
            hbits = _mm256_srli_epi16(hbits, 2);
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(qv, m4), h0);
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qv, 4), m4), h1);
            const __m256i p0 = _mm256_maddubs_epi16(q0, load256(y[i].qs + 64 * c));
            const __m256i p1 = _mm256_maddubs_epi16(q1, load256(y[i].qs + 64 * c + 32));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * c])));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * c + 1])));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_avx2(acc) - acc_m;
}

static float dot_q6_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q6_K* x = static_cast<const block_q6_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2 = _mm256_set1_epi8(0x03);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        prefetch_ahead<sizeof(block_q6_K)>(x + i);
        const int8_t* sc = x[i].scales;
        // quants are stored as q + 32 (0..63): subtract 32 * sum_j sc[j] * bsums[j] at the end
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(y[i].bsums)), 5);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i a = load256(x[i].ql + 64 * h);
            const __m256i b = load256(x[i].ql + 64 * h + 32);
            const __m256i qh = load256(x[i].qh + 32 * h);
            const int8_t* q8 = y[i].qs + 128 * h;
            const int8_t* s = sc + 8 * h;
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(b, m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, load256(q8)), scale_pair16(s[0], s[1]));
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, load256(q8 + 32)), scale_pair16(s[2], s[3]));
            const __m256i p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(q2, load256(q8 + 64)), scale_pair16(s[4], s[5]));
            const __m256i p3 = _mm256_madd_epi16(_mm256_maddubs_epi16(q3, load256(q8 + 96)), scale_pair16(s[6], s[7]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
        }
        sumi = _mm256_sub_epi32(sumi, offset);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_avx2(acc);
}

static float dot_q2_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q2_K* x = static_cast<const block_q2_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    const int64_t nb = n / QK_K;
    const __m256i m2 = _mm256_set1_epi8(0x03);
    __m256 acc = _mm256_setzero_ps();
    float acc_m = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].scales));
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F)));
        const int summs = hsum_epi32(_mm256_madd_epi16(mins16, load256(y[i].bsums)));
        acc_m += y[i].d * h2f(x[i].dmin) * float(summs);
        const uint8_t* sc = x[i].scales;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i qv = load256(x[i].qs + 32 * h);
            const int8_t* q8 = y[i].qs + 128 * h;
            for (int s = 0; s < 4; s++) {
                const __m256i q = _mm256_and_si256(qv, m2);
                qv = _mm256_srli_epi16(qv, 2);
                const int j = 8 * h + 2 * s;
                const __m256i p = _mm256_maddubs_epi16(q, load256(q8 + 32 * s));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair16(sc[j] & 0xF, sc[j + 1] & 0xF)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_avx2(acc) - acc_m;
}

static float dot_q3_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q3_K* x = static_cast<const block_q3_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    const int64_t nb = n / QK_K;
    const __m256i m2 = _mm256_set1_epi8(0x03);
    const __m256i one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    int sc[16];
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t* p = x[i].scales;
        for (int j = 0; j < 16; j++) {
            const int lo = j < 8 ? (p[j] & 0xF) : (p[j - 8] >> 4);
            sc[j] = (lo | (((p[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        }
        __m256i hbits = load256(x[i].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i qv = load256(x[i].qs + 32 * h);
            const int8_t* q8 = y[i].qs + 128 * h;
            for (int s = 0; s < 4; s++) {
                // q = low 2 bits - 4 where the high bit is clear: -4..3
                const __m256i clear = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, one), _mm256_setzero_si256());
                hbits = _mm256_srli_epi16(hbits, 1);
                const __m256i q = _mm256_sub_epi8(_mm256_and_si256(qv, m2), _mm256_and_si256(clear, _mm256_set1_epi8(4)));
                qv = _mm256_srli_epi16(qv, 2);
                const int j = 8 * h + 2 * s;
                const __m256i pr = mul_i8_pairs16(q, load256(q8 + 32 * s));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pr, scale_pair16(sc[j], sc[j + 1])));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_avx2(acc);
}

// ---- float formats (float accumulators; the scalar reference sums in double) -----------

static float dot_f32(int64_t n, const void* vw, const void* va) {
    const float* x = static_cast<const float*>(vw);
    const float* y = static_cast<const float*>(va);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    float sum = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += x[i] * y[i];
    return sum;
}

static inline __m256 load_f16x8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

static float dot_f16(int64_t n, const void* vw, const void* va) {
    const uint16_t* x = static_cast<const uint16_t*>(vw);
    const uint16_t* y = static_cast<const uint16_t*>(va);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_f16x8(x + i), load_f16x8(y + i), a0);
        a1 = _mm256_fmadd_ps(load_f16x8(x + i + 8), load_f16x8(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_f16x8(x + i + 16), load_f16x8(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_f16x8(x + i + 24), load_f16x8(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_f16x8(x + i), load_f16x8(y + i), a0);
    float sum = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += h2f(x[i]) * h2f(y[i]);
    return sum;
}

static inline __m256 load_bf16x8(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

static float dot_bf16(int64_t n, const void* vw, const void* va) {
    const uint16_t* x = static_cast<const uint16_t*>(vw);
    const uint16_t* y = static_cast<const uint16_t*>(va);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_bf16x8(x + i), load_bf16x8(y + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16x8(x + i + 8), load_bf16x8(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_bf16x8(x + i + 16), load_bf16x8(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_bf16x8(x + i + 24), load_bf16x8(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_bf16x8(x + i), load_bf16x8(y + i), a0);
    float sum = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += bf16_bits_to_float(x[i]) * bf16_bits_to_float(y[i]);
    return sum;
}

// ---- activation converters (same bits as the scalar reference) -------------------------

// Rounds half away from zero like std::round: truncate, then step away from zero where
// the dropped fraction (exact in float) is at least one half.
static inline __m256 round_away(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(sign, _mm256_set1_ps(1.0f))));
}

// One block of 32 floats: writes the 32 quants, returns d; *sum gets the sum of the quants.
static inline float quantize_block_32(const float* x, int8_t* qs, int* sum) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4];
    // max(new, acc) keeps acc where new is NaN, as fmax does
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(_mm256_and_ps(v[k], abs_mask), m);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float d = _mm_cvtss_f32(h) / 127.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    __m256i q[4];
    for (int k = 0; k < 4; k++) q[k] = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[k], id)));
    // Keep the low byte of each int32, as the scalar int8_t(...) cast does (the same
    // values in range). packus works per 128-bit lane; the permute restores the order.
    const __m256i lo = _mm256_set1_epi32(0xFF);
    for (int k = 0; k < 4; k++) q[k] = _mm256_and_si256(q[k], lo);
    __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), b);
    *sum = hsum_epi32(pairs16_to_32(_mm256_maddubs_epi16(_mm256_set1_epi8(1), b)));
    return d;
}

static void quantize_q8_0(const float* x, void* dst, int64_t n) {
    block_q8_0* y = static_cast<block_q8_0*>(dst);
    for (int64_t i = 0; i < n / 32; i++) {
        int sum;
        y[i].d = float_to_half(quantize_block_32(x + 32 * i, y[i].qs, &sum));
    }
}

static void quantize_q8_1(const float* x, void* dst, int64_t n) {
    block_q8_1* y = static_cast<block_q8_1*>(dst);
    for (int64_t i = 0; i < n / 32; i++) {
        int sum;
        const float d = quantize_block_32(x + 32 * i, y[i].qs, &sum);
        y[i].d = float_to_half(d);
        y[i].s = float_to_half(float(sum) * d);
    }
}

// fp32 -> fp16 with the hardware's round-to-nearest-even: the bits of float_to_half,
// NaN payloads and subnormals included (tested against it on every class of value).
static void quantize_f16(const float* x, void* dst, int64_t n) {
    uint16_t* h = static_cast<uint16_t*>(dst);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) h[i] = float_to_half(x[i]);
}

struct TileQ4_1 {
    static constexpr int ROWS = 3, COLS = 4;
    template <int R, int C>
    static void run(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        __m256 acc[R][C];
        __m128 acc_m[R][C];   // lane 1: the minimum term
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                acc[r][c] = _mm256_setzero_ps();
                acc_m[r][c] = _mm_setzero_ps();
            }
        const __m256i ones = _mm256_set1_epi16(1);
        for (int64_t i = 0; i < nb; i++) {
            __m256i q[R];
            __m128 dm[R];   // [d, m] of the weight block
            for (int r = 0; r < R; r++) {
                const block_q4_1* x = reinterpret_cast<const block_q4_1*>(w + r * ws) + i;
                prefetch_ahead<sizeof(block_q4_1)>(x);   // every row: interleaved rows defeat the hardware prefetcher
                q[r] = unpack_nibbles_32(x->qs);
                dm[r] = half2_to_float(&x->d);
            }
            for (int c = 0; c < C; c++) {
                const block_q8_1* b = reinterpret_cast<const block_q8_1*>(a + c * as) + i;
                const __m256i qa = load256(b->qs);
                const __m128 ds = half2_to_float(&b->d);   // [d, s] of the activation block
                for (int r = 0; r < R; r++) {
                    const __m128 p = _mm_mul_ps(dm[r], ds);   // [dw * da, mw * sa]
                    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], qa), ones);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_broadcastss_ps(p), _mm256_cvtepi32_ps(s), acc[r][c]);
                    acc_m[r][c] = _mm_add_ps(acc_m[r][c], p);
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                const __m128 m = acc_m[r][c];
                y[c * ys + r] = hsum_avx2(acc[r][c]) + _mm_cvtss_f32(_mm_shuffle_ps(m, m, 1));
            }
    }
};

// Signed weights (Q8_0, Q5_0) against Q8_0 activations: |w| * (a * sign(w)).
// Q::quants(x, &d) gives a block as signed bytes and its scale.
template <class Q, int ROWS_, int COLS_>
struct TileSigned {
    static constexpr int ROWS = ROWS_, COLS = COLS_;
    template <int R, int C>
    static void run(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        __m256 acc[R][C];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
        const __m256i ones = _mm256_set1_epi16(1);
        for (int64_t i = 0; i < nb; i++) {
            __m256i q[R], qabs[R];
            float dw[R];
            for (int r = 0; r < R; r++) {
                prefetch_ahead<sizeof(typename Q::block)>(reinterpret_cast<const typename Q::block*>(w + r * ws) + i);
                q[r] = Q::quants(reinterpret_cast<const typename Q::block*>(w + r * ws) + i, &dw[r]);
                qabs[r] = _mm256_sign_epi8(q[r], q[r]);
            }
            for (int c = 0; c < C; c++) {
                const block_q8_0* b = reinterpret_cast<const block_q8_0*>(a + c * as) + i;
                const __m256i qa = load256(b->qs);
                const float da = h2f(b->d);
                for (int r = 0; r < R; r++) {
                    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(qabs[r], _mm256_sign_epi8(qa, q[r])), ones);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw[r] * da), _mm256_cvtepi32_ps(s), acc[r][c]);
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) y[c * ys + r] = hsum_avx2(acc[r][c]);
    }
};

struct Q8_0Quants {
    using block = block_q8_0;
    static __m256i quants(const block_q8_0* x, float* d) {
        *d = h2f(x->d);
        return load256(x->qs);
    }
};
struct Q5_0Quants {
    using block = block_q5_0;
    static __m256i quants(const block_q5_0* x, float* d) {
        *d = h2f(x->d);
        return q5_0_quants(x);
    }
};
using TileQ8_0 = TileSigned<Q8_0Quants, 3, 4>;
using TileQ5_0 = TileSigned<Q5_0Quants, 3, 4>;


// ---- K-quant tiles (256-element super-blocks; same arithmetic as the dot products above) --

template <int R, int C>
static void tile_q4_K(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[R][C];
    float acc_m[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            acc_m[r][c] = 0.0f;
        }
    for (int64_t i = 0; i < nb; i++) {
        const block_q4_K* x[R];
        uint8_t sc[R][8], mn[R][8];
        for (int r = 0; r < R; r++) {
            x[r] = reinterpret_cast<const block_q4_K*>(w + r * ws) + i;
            k4_scales(x[r]->scales, sc[r], mn[r]);
        }
        __m256i sumi[R][C];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) sumi[r][c] = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            __m256i lo[R], hi[R];
            for (int r = 0; r < R; r++) {
                const __m256i qv = load256(x[r]->qs + 32 * k);
                lo[r] = _mm256_and_si256(qv, m4);
                hi[r] = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
            }
            for (int c = 0; c < C; c++) {
                const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
                const __m256i ya = load256(b->qs + 64 * k), yb = load256(b->qs + 64 * k + 32);
                for (int r = 0; r < R; r++) {
                    const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[r], ya), _mm256_set1_epi16(sc[r][2 * k]));
                    const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[r], yb), _mm256_set1_epi16(sc[r][2 * k + 1]));
                    sumi[r][c] = _mm256_add_epi32(sumi[r][c], _mm256_add_epi32(p0, p1));
                }
            }
        }
        for (int c = 0; c < C; c++) {
            const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
            for (int r = 0; r < R; r++) {
                acc_m[r][c] += b->d * h2f(x[r]->dmin) * float(k4_mins_dot(b->bsums, mn[r]));
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(b->d * h2f(x[r]->d)), _mm256_cvtepi32_ps(sumi[r][c]), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ys + r] = hsum_avx2(acc[r][c]) - acc_m[r][c];
}
template <int R, int C>
static void tile_q6_K(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2 = _mm256_set1_epi8(0x03);
    __m256 acc[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const block_q6_K* x[R];
        for (int r = 0; r < R; r++) x[r] = reinterpret_cast<const block_q6_K*>(w + r * ws) + i;
        __m256i sumi[R][C];
        for (int c = 0; c < C; c++) {
            const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
            for (int r = 0; r < R; r++) {
                // quants are stored as q + 32: start from -32 * sum_j sc[j] * bsums[j]
                const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[r]->scales)));
                sumi[r][c] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(b->bsums)), 5));
            }
        }
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                __m256i q[R];
                for (int r = 0; r < R; r++) {
                    const __m256i lowbits = load256(x[r]->ql + 64 * h + 32 * (k & 1));
                    const __m256i low = k < 2 ? _mm256_and_si256(lowbits, m4) : _mm256_and_si256(_mm256_srli_epi16(lowbits, 4), m4);
                    const __m256i qh = _mm256_and_si256(_mm256_srli_epi16(load256(x[r]->qh + 32 * h), 2 * k), m2);
                    q[r] = _mm256_or_si256(low, _mm256_slli_epi16(qh, 4));
                }
                for (int c = 0; c < C; c++) {
                    const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
                    const __m256i q8 = load256(b->qs + 128 * h + 32 * k);
                    for (int r = 0; r < R; r++) {
                        const int8_t* s = x[r]->scales + 8 * h + 2 * k;
                        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], q8), scale_pair16(s[0], s[1]));
                        sumi[r][c] = _mm256_add_epi32(sumi[r][c], p);
                    }
                }
            }
        }
        for (int c = 0; c < C; c++) {
            const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
            for (int r = 0; r < R; r++)
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(b->d * h2f(x[r]->d)), _mm256_cvtepi32_ps(sumi[r][c]), acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ys + r] = hsum_avx2(acc[r][c]);
}
// K-quant tiles, 2 x 4; the 1 x 1 tile is the plain dot product, which gives the same bits.
// F names the format's dot product and tile template.
template <class F>
struct TileK {
    static constexpr int ROWS = 2, COLS = 4;
    template <int R, int C>
    static void run(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        if constexpr (R == 1 && C == 1) *y = F::dot(nb * QK_K, w, a);
        else F::template tile<R, C>(nb, w, ws, a, as, y, ys);
    }
};
struct Q4_KKernels {
    static constexpr auto dot = dot_q4_K_q8_K;
    template <int R, int C> static constexpr auto tile = tile_q4_K<R, C>;
};
struct Q6_KKernels {
    static constexpr auto dot = dot_q6_K_q8_K;
    template <int R, int C> static constexpr auto tile = tile_q6_K<R, C>;
};

// F16 weights times activations rounded to fp16, one accumulator per output, 8 elements
// a step in order. The tiles read the activations widened to float (exact: every fp16
// value is a float), so that a step converts only the R weight vectors; the single dot
// product converts its fp16 activations as it goes. Both feed the FMAs identical values.
template <int R, int C>
static void tile_f16_f32(int64_t n8, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
    __m256 acc[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i++) {
        __m256 wv[R];
        for (int r = 0; r < R; r++) wv[r] = load_f16x8(reinterpret_cast<const uint16_t*>(w + r * ws) + 8 * i);
        for (int c = 0; c < C; c++) {
            const __m256 av = _mm256_loadu_ps(reinterpret_cast<const float*>(a + c * as) + 8 * i);
            for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(wv[r], av, acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ys + r] = hsum_avx2(acc[r][c]);
}

struct TileF16 {
    static constexpr int ROWS = 3, COLS = 4;   // 12 accumulators + 3 weights + 1 activation
    template <int R, int C>
    static void run(int64_t n8, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        tile_f16_f32<R, C>(n8, w, ws, a, as, y, ys);
    }
};

static float dot_f16_f16(int64_t n8, const uint16_t* w, const uint16_t* a) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 4 <= n8; i += 4) {   // one cache line of weights a pass
        prefetch_ahead<64>(w + 8 * i);
        for (int k = 0; k < 4; k++) acc = _mm256_fmadd_ps(load_f16x8(w + 8 * (i + k)), load_f16x8(a + 8 * (i + k)), acc);
    }
    for (; i < n8; i++) acc = _mm256_fmadd_ps(load_f16x8(w + 8 * i), load_f16x8(a + 8 * i), acc);
    return hsum_avx2(acc);
}

// F16 rows whose length is not a multiple of 8 keep the plain loop.
static float dot_f16_any(int64_t n, const void* vw, const void* va) {
    if (n % 8 == 0) return dot_f16_f16(n / 8, static_cast<const uint16_t*>(vw), static_cast<const uint16_t*>(va));
    return dot_f16(n, vw, va);
}

static void gemm_f16_any(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y,
                         size_t ys) {
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    if (n % 8 != 0 || nt == 1) {
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < nr; r++) y[t * ys + r] = dot_f16_any(n, static_cast<const uint8_t*>(w) + r * ws, ab + t * as);
        return;
    }
    // The activations widened once per call (a few percent of the products' work for
    // the row counts matmul passes); the buffer only grows.
    float* wide = scratch_floats(size_t(n) * nt);
    for (int t = 0; t < nt; t++) {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(ab + t * as);
        for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(wide + size_t(t) * n + i, load_f16x8(src + i));
    }
    gemm_tiled<TileF16>(n / 8, w, ws, nr, wide, size_t(n) * sizeof(float), nt, y, ys);
}

}  // namespace

bool quant_avx2_kernels(QuantKernels* k) {
    k->vec_dot[int(GgmlType::F32)] = dot_f32;
    k->vec_dot[int(GgmlType::F16)] = dot_f16_any;
    k->gemm[int(GgmlType::F16)] = gemm_f16_any;
    k->vec_dot[int(GgmlType::BF16)] = dot_bf16;
    k->vec_dot[int(GgmlType::Q4_0)] = dot_q4_0_q8_0;
    k->vec_dot[int(GgmlType::Q4_1)] = dot_blocks<TileQ4_1, QK4_1>;
    k->gemm[int(GgmlType::Q4_1)] = gemm_blocks<TileQ4_1, QK4_1>;
    k->vec_dot[int(GgmlType::Q5_0)] = dot_blocks<TileQ5_0, QK5_0>;
    k->gemm[int(GgmlType::Q5_0)] = gemm_blocks<TileQ5_0, QK5_0>;
    k->vec_dot[int(GgmlType::Q5_1)] = dot_q5_1_q8_1;
    k->vec_dot[int(GgmlType::Q8_0)] = dot_blocks<TileQ8_0, QK8_0>;
    k->gemm[int(GgmlType::Q8_0)] = gemm_blocks<TileQ8_0, QK8_0>;
    k->vec_dot[int(GgmlType::Q2_K)] = dot_q2_K_q8_K;
    k->vec_dot[int(GgmlType::Q3_K)] = dot_q3_K_q8_K;
    k->vec_dot[int(GgmlType::Q4_K)] = dot_q4_K_q8_K;
    k->gemm[int(GgmlType::Q4_K)] = gemm_blocks<TileK<Q4_KKernels>, QK_K>;   // matrices only: vec_dot keeps the plain kernel
    k->vec_dot[int(GgmlType::Q5_K)] = dot_q5_K_q8_K;
    k->vec_dot[int(GgmlType::Q6_K)] = dot_q6_K_q8_K;
    k->gemm[int(GgmlType::Q6_K)] = gemm_blocks<TileK<Q6_KKernels>, QK_K>;
    k->quantize[int(GgmlType::Q8_0)] = quantize_q8_0;
    k->quantize[int(GgmlType::F16)] = quantize_f16;
    k->quantize[int(GgmlType::Q8_1)] = quantize_q8_1;
    return true;
}

}  // namespace ffnskip

#else  // the compiler cannot target AVX2 here: keep the scalar kernels

namespace ffnskip {
bool quant_avx2_kernels(QuantKernels*) { return false; }
}  // namespace ffnskip

#endif
