// AVX2 + FMA + F16C versions of the elementwise kernels (fp16 rows, exp, swiglu).
// Compiled with -mavx2 -mfma -mf16c; ops.cpp calls them only when simd_level() is
// not "scalar".
#include "cpu/ops.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <cmath>

#include "quant/simd-avx2.h"

namespace ffnskip {

void fp32_to_fp16_row_avx2(uint16_t* dst, const float* src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
    for (; i < n; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

void fp16_to_fp32_row_avx2(float* dst, const uint16_t* src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    }
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}

void exp_row_avx2(float* out, const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp_avx2(_mm256_loadu_ps(x + i)));
    if (i < n) store_partial_avx2(out + i, exp_avx2(load_partial_avx2(x + i, (int)(n - i), 0.0f)), (int)(n - i));
}

// Sum of squares in double as the scalar version, in 8 lanes (two vectors of 4).
void rmsnorm_avx2(float* out, const float* x, const float* w, int64_t n, float eps) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_fmadd_pd(lo, lo, s0);
        s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(s0, s1));
    double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < n; i++) sum += (double)x[i] * (double)x[i];
    const float mean = (float)(sum / (double)n);
    const __m256 scale = _mm256_set1_ps(1.0f / std::sqrt(mean + eps));
    for (i = 0; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale), _mm256_loadu_ps(w + i)));
    }
    const float sc = _mm256_cvtss_f32(scale);
    for (; i < n; i++) out[i] = (x[i] * sc) * w[i];
}

static inline __m256 swiglu8(__m256 g, __m256 u) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

void swiglu_avx2(float* out, const float* gate, const float* up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, swiglu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        const int r = (int)(n - i);
        store_partial_avx2(out + i, swiglu8(load_partial_avx2(gate + i, r, 0.0f), load_partial_avx2(up + i, r, 0.0f)), r);
    }
}

}  // namespace ffnskip

#endif
