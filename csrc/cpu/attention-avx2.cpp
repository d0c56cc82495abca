// AVX2 + FMA attention inner loops over float keys and values, and over fp16 cache
// rows for a decode step (see AttnKernels in ops.h). Compiled with -mavx2 -mfma
// -mf16c; called only after the run-time CPU check.
#include "cpu/ops.h"

#include <cmath>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "quant/simd-avx2.h"

namespace ffnskip {

// Eight dot-product accumulators -> one vector of their eight sums, by the same
// tree for every lane (so a key's score does not depend on its neighbours).
static inline __m256 reduce8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                             __m256 a7) {
    const __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
    const __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    // u0 = [sums of a0..a3 over lanes 0-3 | over lanes 4-7], u1 the same for a4..a7
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Eight keys at a time: each key's accumulator runs over the head in order, then the
// eight are reduced together instead of one horizontal sum per key.
void attn_scores_avx2(float* s, const float* q, const float* k, int n_keys, int hd, float scale) {
    const __m256 sc = _mm256_set1_ps(scale);
    for (int j = 0; j < n_keys; j += 8) {
        const float* kj = k + (size_t)j * hd;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int c = 0; c < hd; c += 8) {
            const __m256 qc = _mm256_loadu_ps(q + c);
            a0 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kj + c), a0);
            a1 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kj + hd + c), a1);
            a2 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kj + 2 * hd + c), a2);
            a3 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kj + 3 * hd + c), a3);
            a4 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kj + 4 * hd + c), a4);
            a5 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kj + 5 * hd + c), a5);
            a6 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kj + 6 * hd + c), a6);
            a7 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kj + 7 * hd + c), a7);
        }
        _mm256_storeu_ps(s + j, _mm256_mul_ps(reduce8(a0, a1, a2, a3, a4, a5, a6, a7), sc));
    }
}

void attn_softmax_avx2(float* s, int n) {
    __m256 mx = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j));
    float max_score = hmax_avx2(mx);
    for (; j < n; j++) max_score = s[j] > max_score ? s[j] : max_score;
    // Lanes past n count as -inf, whose exp adds nothing, so the sum of n keys always
    // splits into the same lanes.
    const __m256 m = _mm256_set1_ps(max_score);
    __m256 sum = _mm256_setzero_ps();
    for (j = 0; j < n; j += 8) {
        const __m256 x = j + 8 <= n ? _mm256_loadu_ps(s + j) : load_partial_avx2(s + j, n - j, -INFINITY);
        const __m256 e = exp_avx2(_mm256_sub_ps(x, m));
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum_avx2(sum));
    for (j = 0; j < n; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inv));
}

// NV vectors (8 NV dims) of the output held in registers across all keys.
template <int NV>
static inline void accum_dims(float* out, const float* p, const float* v, int n_keys, int hd) {
    __m256 o[NV];
    for (int i = 0; i < NV; i++) o[i] = _mm256_loadu_ps(out + 8 * i);
    for (int j = 0; j < n_keys; j++) {
        const __m256 pj = _mm256_broadcast_ss(p + j);
        const float* vj = v + (size_t)j * hd;
        for (int i = 0; i < NV; i++) o[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * i), o[i]);
    }
    for (int i = 0; i < NV; i++) _mm256_storeu_ps(out + 8 * i, o[i]);
}

void attn_accum_avx2(float* out, const float* p, const float* v, int n_keys, int hd) {
    int d = 0;
    for (; d + 64 <= hd; d += 64) accum_dims<8>(out + d, p, v + d, n_keys, hd);
    switch ((hd - d) / 8) {
        case 1: accum_dims<1>(out + d, p, v + d, n_keys, hd); break;
        case 2: accum_dims<2>(out + d, p, v + d, n_keys, hd); break;
        case 3: accum_dims<3>(out + d, p, v + d, n_keys, hd); break;
        case 4: accum_dims<4>(out + d, p, v + d, n_keys, hd); break;
        case 5: accum_dims<5>(out + d, p, v + d, n_keys, hd); break;
        case 6: accum_dims<6>(out + d, p, v + d, n_keys, hd); break;
        case 7: accum_dims<7>(out + d, p, v + d, n_keys, hd); break;
        default: break;
    }
}

// ---- fp16 cache rows read in place (a decode step) ----------------------------------

// G queries against 8 keys at most, four keys at a time: each key vector is converted
// once and feeds G accumulators, and the 4 * G independent fma chains keep the FMA
// units busy (one key's chain alone would wait on each fma's latency). A key's
// arithmetic is attn_scores_avx2's (fp16 -> float is exact). The loops are unrolled so
// that the accumulators stay in registers.
template <int G>
static inline void scores_f16_block(float* s, size_t s_stride, const float* q, size_t q_stride,
                                    const uint16_t* k, size_t k_stride, int m, int hd, __m256 sc) {
    const uint16_t* kz[8];
    static const uint16_t zeros[8] = {0};
    for (int kk = 0; kk < 8; kk++) kz[kk] = kk < m ? k + (size_t)kk * k_stride : nullptr;
    __m256 sums[G][8];
    for (int k0 = 0; k0 < 8; k0 += 4) {
        __m256 a[4][G];
#pragma GCC unroll 4
        for (int kk = 0; kk < 4; kk++)
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) a[kk][g] = _mm256_setzero_ps();
        if (k0 < m) {
            // Keys past the last read a row of zeros over and over (lanes never stored).
            const uint16_t* r[4];
            size_t step[4];
            for (int kk = 0; kk < 4; kk++) {
                r[kk] = kz[k0 + kk] ? kz[k0 + kk] : zeros;
                step[kk] = kz[k0 + kk] ? 8 : 0;
            }
            for (int c = 0; c < hd; c += 8) {
#pragma GCC unroll 4
                for (int kk = 0; kk < 4; kk++) {
                    const __m256 kc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)r[kk]));
                    r[kk] += step[kk];
#pragma GCC unroll 4
                    for (int g = 0; g < G; g++) a[kk][g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * q_stride + c), kc, a[kk][g]);
                }
            }
        }
#pragma GCC unroll 4
        for (int kk = 0; kk < 4; kk++)
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) sums[g][k0 + kk] = a[kk][g];
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) {
        const __m256 r = _mm256_mul_ps(reduce8(sums[g][0], sums[g][1], sums[g][2], sums[g][3], sums[g][4], sums[g][5],
                                               sums[g][6], sums[g][7]), sc);
        if (m == 8) _mm256_storeu_ps(s + g * s_stride, r);
        else store_partial_avx2(s + g * s_stride, r, m);
    }
}

void attn_scores_f16_avx2(float* s, size_t s_stride, const float* q, size_t q_stride, int n_q, const uint16_t* k,
                          size_t k_stride, int n_keys, int hd, float scale) {
    const __m256 sc = _mm256_set1_ps(scale);
    for (int j = 0; j < n_keys; j += 8) {
        const int m = n_keys - j < 8 ? n_keys - j : 8;
        const uint16_t* kj = k + (size_t)j * k_stride;
        int i = 0;
        for (; i + 3 <= n_q; i += 3) scores_f16_block<3>(s + i * s_stride + j, s_stride, q + i * q_stride, q_stride, kj, k_stride, m, hd, sc);
        if (n_q - i == 2) scores_f16_block<2>(s + i * s_stride + j, s_stride, q + i * q_stride, q_stride, kj, k_stride, m, hd, sc);
        if (n_q - i == 1) scores_f16_block<1>(s + i * s_stride + j, s_stride, q + i * q_stride, q_stride, kj, k_stride, m, hd, sc);
    }
}

// G queries times NV * 8 dims held in registers across the keys (G * NV <= 12); each
// value vector is converted once for all G. Per output: fma in key order, as
// attn_accum_avx2.
template <int G, int NV>
static inline void accum_f16_dims(float* out, size_t out_stride, const float* p, size_t p_stride, const uint16_t* v,
                                  size_t v_stride, int n_keys) {
    __m256 o[G][NV];
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int i = 0; i < NV; i++) o[g][i] = _mm256_loadu_ps(out + g * out_stride + 8 * i);
    for (int j = 0; j < n_keys; j++) {
        const uint16_t* vj = v + (size_t)j * v_stride;
#pragma GCC unroll 4
        for (int i = 0; i < NV; i++) {
            const __m256 vi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(vj + 8 * i)));
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) o[g][i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + g * p_stride + j), vi, o[g][i]);
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int i = 0; i < NV; i++) _mm256_storeu_ps(out + g * out_stride + 8 * i, o[g][i]);
}

template <int G>
static inline void accum_f16_queries(float* out, size_t out_stride, const float* p, size_t p_stride, const uint16_t* v,
                                     size_t v_stride, int n_keys, int n_dims) {
    int d = 0;
    for (; d + 32 <= n_dims; d += 32) accum_f16_dims<G, 4>(out + d, out_stride, p, p_stride, v + d, v_stride, n_keys);
    switch ((n_dims - d) / 8) {
        case 1: accum_f16_dims<G, 1>(out + d, out_stride, p, p_stride, v + d, v_stride, n_keys); break;
        case 2: accum_f16_dims<G, 2>(out + d, out_stride, p, p_stride, v + d, v_stride, n_keys); break;
        case 3: accum_f16_dims<G, 3>(out + d, out_stride, p, p_stride, v + d, v_stride, n_keys); break;
        default: break;
    }
}

void attn_accum_f16_avx2(float* out, size_t out_stride, const float* p, size_t p_stride, int n_q, const uint16_t* v,
                         size_t v_stride, int n_keys, int n_dims) {
    int i = 0;
    for (; i + 3 <= n_q; i += 3)
        accum_f16_queries<3>(out + i * out_stride, out_stride, p + i * p_stride, p_stride, v, v_stride, n_keys, n_dims);
    if (n_q - i == 2) accum_f16_queries<2>(out + i * out_stride, out_stride, p + i * p_stride, p_stride, v, v_stride, n_keys, n_dims);
    if (n_q - i == 1) accum_f16_queries<1>(out + i * out_stride, out_stride, p + i * p_stride, p_stride, v, v_stride, n_keys, n_dims);
}

}  // namespace ffnskip

#endif
