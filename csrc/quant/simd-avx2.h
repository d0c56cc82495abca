// Inline AVX2 + FMA helpers shared by the *-avx2.cpp and *-avx512.cpp kernels (csrc/quant,
// csrc/cpu). Include only from files compiled with at least -mavx2 -mfma -mf16c.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace ffnskip {

// exp(x) for 8 floats, within ~1 ulp of expf: inf and values above 88.72 give inf,
// -inf and values below -103.97 give 0 (denormals in between), NaN stays NaN.
static inline __m256 exp_avx2(__m256 x) {
    // Clamp first so that n below fits an int; max(lo, x) keeps a NaN x (the second
    // operand is returned when either is NaN).
    x = _mm256_min_ps(_mm256_set1_ps(120.0f), _mm256_max_ps(_mm256_set1_ps(-120.0f), x));
    // x = n ln2 + r with |r| <= ln2/2; ln2 split in two so that r is nearly exact.
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693147182464599609375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-1.904654323148236e-09f), r);
    // exp(r) by its Taylor series to r^7 (truncation below 1e-8 relative on |r| <= ln2/2).
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    // Times 2^n in two steps (2^(n/2) each): n reaches +-173, past one float exponent,
    // and the halves give inf and gradual underflow where expf does.
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1);
    const __m256i n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

// Sum of the 8 lanes, always in the same order.
static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax_avx2(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Lanes i < n of p (0 <= n <= 8), the rest `fill`.
static inline __m256 load_partial_avx2(const float* p, int n, float fill) {
    alignas(32) float tmp[8];
    for (int i = 0; i < 8; i++) tmp[i] = i < n ? p[i] : fill;
    return _mm256_load_ps(tmp);
}

static inline void store_partial_avx2(float* p, __m256 v, int n) {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (int i = 0; i < n; i++) p[i] = tmp[i];
}

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Decoding reads each weight row once, from memory: asking for the bytes a few rows'
// worth ahead keeps more loads in flight than the hardware prefetcher alone (F16, Q8_0,
// Q4_1 matrix-vector products from memory: about 10-40% faster on this machine's
// microbenchmark). `bytes` from p on are requested, one cache line at a time.
constexpr int PREFETCH_AHEAD = 2048;
template <int bytes>
static inline void prefetch_ahead(const void* p) {
    for (int off = 0; off < bytes; off += 64)
        _mm_prefetch(static_cast<const char*>(p) + PREFETCH_AHEAD + off, _MM_HINT_T0);
}

// sum_j m[j] * (bsums[2j] + bsums[2j+1]) for the 8 per-32 mins of Q4_K / Q5_K.
static inline int k4_mins_dot(const int16_t* bsums, const uint8_t* mins) {
    const __m128i b0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bsums));
    const __m128i b1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bsums + 8));
    const __m128i pairs = _mm_hadd_epi16(b0, b1);   // 8 sums of 32
    const __m128i m = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mins)));
    __m128i s = _mm_madd_epi16(pairs, m);
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// The 12 packed bytes as little-endian words w0..w2: scales 0-3 are the low 6 bits of
// w0's bytes, mins 0-3 of w1's; scales 4-7 are the low nibbles of w2 with the top 2 bits
// of w0 above them, mins 4-7 the high nibbles of w2 with the top 2 bits of w1. Same
// values as get_scale_min_k4, without branches.
static inline void k4_scales(const uint8_t* packed, uint8_t* sc, uint8_t* mn) {
    uint32_t w[3];
    std::memcpy(w, packed, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const uint32_t out[4] = {
        w[0] & m6,
        (w[2] & m4) | (((w[0] >> 6) & m2) << 4),
        w[1] & m6,
        ((w[2] >> 4) & m4) | (((w[1] >> 6) & m2) << 4),
    };
    std::memcpy(sc, out, 8);
    std::memcpy(mn, out + 2, 8);
}

}  // namespace ffnskip
