// AVX-512 (F/BW/VL/DQ + VNNI) dot products and tiled matrix products. Compiled with the
// AVX-512 flags (see cmake/compile-flags.cmake); only installed by quant.cpp after a
// CPUID/XGETBV check, on top of the AVX2 table (types without a kernel here keep theirs).
//
// One 512-bit register holds 64 quants: two 32-element blocks, or a quarter of a K-quant
// super-block. Integer products:
// - 32-element formats: weights as unsigned bytes u = q + offset (Q4_0: 8, Q5_0: 16,
//   Q8_0: 128, Q4_1: 0) against signed activation bytes with vpdpbusd, the accumulator
//   starting from -offset * sum(activations) (one vpdpbusd per activation block, shared by
//   every weight row of a tile), so each int32 lane holds the exact sum of 4 products.
// - K-quants: unsigned quants (Q4_K 0..15, Q6_K 0..63) times activations in int16 pairs
//   (vpmaddubsw, at most 2 * 63 * 127 = 16002: no saturation), then times the sub-block
//   scales and summed into int32 with vpdpwssd.
// Every output has one float accumulator; lanes 0-7 take the even blocks, lanes 8-15 the
// odd ones (K-quants: one update per super-block), in block order. As in quant-avx2.cpp,
// every tile shape runs the same instructions per output, so a matrix product gives the
// bits of the single dot product for each (row, token) pair.
#include "quant/quant-impl.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX512VNNI__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <vector>

// GCC 12's AVX-512 headers build some vectors from a deliberately undefined value
// (_mm512_undefined_*), which -Wuninitialized reports in every caller.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "quant/gemm-tiles.h"
#include "quant/simd-avx2.h"

namespace ffnskip {

static inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

static inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Lanes 0-7 lo, lanes 8-15 hi.
static inline __m512 pair_ps(float lo, float hi) {
    return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}

// 32 bytes at lo, then 32 bytes at hi.
static inline __m512i load_pair256(const void* lo, const void* hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load256(lo)), load256(hi), 1);
}

// The nibbles of two 32-element blocks (16 bytes each) as 64 bytes in element order:
// [low nibbles of q0, high nibbles of q0, low of q1, high of q1].
static inline __m512i unpack_nibbles_64(const uint8_t* q0, const uint8_t* q1) {
    const __m128i b0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q0));
    const __m128i b1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q1));
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(b0)),
                                         _mm256_broadcastsi128_si256(b1), 1);
    // 128-bit lanes 1 and 3 (qwords 2, 3, 6, 7) take the high nibbles
    return _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, v, _mm512_srli_epi16(v, 4)), _mm512_set1_epi8(0x0F));
}

// ---- 32-element blocks -----------------------------------------------------------------
//
// Q (the weight format) gives: block, OFFSET, quants(x0, x1) (64 unsigned bytes of blocks
// x0 and x1), d(x), and for formats with a minimum (d * q + m) m(x). A (the activation
// format) is block_q8_0 or block_q8_1; with a minimum the activation's s = d * sum(q)
// gives the minimum's term, m * s, as in the scalar reference.

struct Q4_0W {
    using block = block_q4_0;
    static constexpr int OFFSET = 8;
    static constexpr bool MIN = false;
    static __m512i quants(const block* x0, const block* x1) { return unpack_nibbles_64(x0->qs, x1->qs); }
};
struct Q4_1W {
    using block = block_q4_1;
    static constexpr int OFFSET = 0;
    static constexpr bool MIN = true;
    static __m512i quants(const block* x0, const block* x1) { return unpack_nibbles_64(x0->qs, x1->qs); }
};
struct Q5_0W {
    using block = block_q5_0;
    static constexpr int OFFSET = 16;
    static constexpr bool MIN = false;
    // 5th bit j of a block (qh, little-endian) is element j's: one mask bit per byte
    static __m512i quants(const block* x0, const block* x1) {
        uint32_t h0, h1;
        std::memcpy(&h0, x0->qh, 4);
        std::memcpy(&h1, x1->qh, 4);
        const __mmask64 hi = _cvtu64_mask64(uint64_t(h0) | (uint64_t(h1) << 32));
        const __m512i lo4 = unpack_nibbles_64(x0->qs, x1->qs);
        return _mm512_mask_add_epi8(lo4, hi, lo4, _mm512_set1_epi8(0x10));
    }
};
struct Q8_0W {
    using block = block_q8_0;
    static constexpr int OFFSET = 128;
    static constexpr bool MIN = false;
    // q + 128 as an unsigned byte is q with its top bit flipped
    static __m512i quants(const block* x0, const block* x1) {
        return _mm512_xor_si512(load_pair256(x0->qs, x1->qs), _mm512_set1_epi8(int8_t(0x80)));
    }
};

template <class Q, class A, int ROWS_, int COLS_>
struct Tile32 {
    static constexpr int ROWS = ROWS_, COLS = COLS_;
    using WB = typename Q::block;
    template <int R, int C>
    static void run(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        __m512 acc[R][C];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
        const __m512i offset = _mm512_set1_epi8(int8_t(Q::OFFSET));
        for (int64_t i = 0; i < nb; i += 2) {
            // An odd last block pairs with itself, its second half weighted by 0.
            const bool pair = i + 1 < nb;
            const int64_t j = pair ? i + 1 : i;
            if constexpr (R == 1 && C == 1) prefetch_ahead<2 * sizeof(WB)>(reinterpret_cast<const WB*>(w) + i);
            __m512i q[R];
            __m512 dw[R], mw[R];
            for (int r = 0; r < R; r++) {
                const WB* x = reinterpret_cast<const WB*>(w + r * ws);
                q[r] = Q::quants(x + i, x + j);
                dw[r] = pair_ps(h2f(x[i].d), pair ? h2f(x[j].d) : 0.0f);
                // m * s spread over the 8 lanes of its block (exact: a power of two)
                if constexpr (Q::MIN) mw[r] = pair_ps(h2f(x[i].m) * 0.125f, pair ? h2f(x[j].m) * 0.125f : 0.0f);
            }
            for (int c = 0; c < C; c++) {
                const A* b = reinterpret_cast<const A*>(a + c * as);
                const __m512i qa = load_pair256(b[i].qs, b[j].qs);
                __m512i init = _mm512_setzero_si512();
                if constexpr (Q::OFFSET != 0) init = _mm512_sub_epi32(init, _mm512_dpbusd_epi32(init, offset, qa));
                const __m512 da = pair_ps(h2f(b[i].d), h2f(b[j].d));
                for (int r = 0; r < R; r++) {
                    const __m512 s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, q[r], qa));
                    if constexpr (Q::MIN) {
                        const __m512 sa = pair_ps(h2f(b[i].s), h2f(b[j].s));
                        acc[r][c] = _mm512_add_ps(acc[r][c], _mm512_fmadd_ps(mw[r], sa, _mm512_mul_ps(_mm512_mul_ps(dw[r], da), s)));
                    } else {
                        acc[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], da), s, acc[r][c]);
                    }
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) y[c * ys + r] = _mm512_reduce_add_ps(acc[r][c]);
    }
};

using TileQ4_0 = Tile32<Q4_0W, block_q8_0, 3, 4>;
using TileQ4_1 = Tile32<Q4_1W, block_q8_1, 3, 4>;
using TileQ5_0 = Tile32<Q5_0W, block_q8_0, 3, 4>;
using TileQ8_0 = Tile32<Q8_0W, block_q8_0, 3, 4>;

// ---- K-quants (256-element super-blocks against Q8_K) -----------------------------------

// Indices for vpermw: 32 int16 lanes, the first n_per of each group copy scale `first`,
// the next n_per `first + 1`, ... (n_per = 16: 2 scales; n_per = 8: 4 scales).
static inline __m512i scale_index(int first, int n_per) {
    alignas(64) int16_t idx[32];
    for (int l = 0; l < 32; l++) idx[l] = int16_t(first + l / n_per);
    return _mm512_load_si512(idx);
}

// Q4_K: chunk k (32 bytes of qs) holds sub-block 2k in its low nibbles and 2k + 1 in its
// high ones, elements 64k..64k+63 of the super-block, which one activation load covers.
template <int R, int C>
static void tile_q4_K(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i sidx[4];
    for (int k = 0; k < 4; k++) sidx[k] = scale_index(2 * k, 16);
    __m512 acc[R][C];
    float acc_m[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm512_setzero_ps();
            acc_m[r][c] = 0.0f;
        }
    for (int64_t i = 0; i < nb; i++) {
        const block_q4_K* x[R];
        uint8_t mn[R][8];
        __m512i sc16[R];
        for (int r = 0; r < R; r++) {
            x[r] = reinterpret_cast<const block_q4_K*>(w + r * ws) + i;
            if constexpr (R == 1 && C == 1) prefetch_ahead<sizeof(block_q4_K)>(x[r]);
            uint8_t sc[8];
            k4_scales(x[r]->scales, sc, mn[r]);
            sc16[r] = _mm512_zextsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc))));
        }
        __m512i sumi[R][C];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) sumi[r][c] = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            __m512i q[R], scl[R];
            for (int r = 0; r < R; r++) {
                const __m512i v = _mm512_broadcast_i64x4(load256(x[r]->qs + 32 * k));
                q[r] = _mm512_and_si512(_mm512_mask_blend_epi64(0xF0, v, _mm512_srli_epi16(v, 4)), m4);
                scl[r] = _mm512_permutexvar_epi16(sidx[k], sc16[r]);
            }
            for (int c = 0; c < C; c++) {
                const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
                const __m512i ya = load512(b->qs + 64 * k);
                for (int r = 0; r < R; r++)
                    sumi[r][c] = _mm512_dpwssd_epi32(sumi[r][c], _mm512_maddubs_epi16(q[r], ya), scl[r]);
            }
        }
        for (int c = 0; c < C; c++) {
            const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
            for (int r = 0; r < R; r++) {
                acc_m[r][c] += b->d * h2f(x[r]->dmin) * float(k4_mins_dot(b->bsums, mn[r]));
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(b->d * h2f(x[r]->d)), _mm512_cvtepi32_ps(sumi[r][c]), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ys + r] = _mm512_reduce_add_ps(acc[r][c]) - acc_m[r][c];
}

// Q6_K: half h (128 elements) is ql[64h..64h+64) (low nibbles: elements 0-63 of the half,
// high nibbles: 64-127) and qh[32h..32h+32) (2 bits per element, 4 groups of 32 at shifts
// 0, 2, 4, 6); quants are stored as q + 32, one int8 scale per 16 elements.
template <int R, int C>
static void tile_q6_K(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m2 = _mm512_set1_epi8(0x03);
    __m512i sidx[2][2], shift[2];
    for (int h = 0; h < 2; h++)
        for (int p = 0; p < 2; p++) sidx[h][p] = scale_index(8 * h + 4 * p, 8);
    for (int p = 0; p < 2; p++)
        shift[p] = _mm512_inserti64x4(_mm512_set1_epi16(int16_t(4 * p)), _mm256_set1_epi16(int16_t(4 * p + 2)), 1);
    __m512 acc[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const block_q6_K* x[R];
        __m512i sc16[R];
        for (int r = 0; r < R; r++) {
            x[r] = reinterpret_cast<const block_q6_K*>(w + r * ws) + i;
            if constexpr (R == 1 && C == 1) prefetch_ahead<sizeof(block_q6_K)>(x[r]);
            sc16[r] = _mm512_zextsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[r]->scales))));
        }
        __m512i sumi[R][C];
        for (int c = 0; c < C; c++) {
            const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
            for (int r = 0; r < R; r++) {
                // start from -32 * sum_j sc[j] * bsums[j] (the stored + 32)
                const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(_mm512_castsi512_si256(sc16[r]), load256(b->bsums)), 5);
                sumi[r][c] = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), off));
            }
        }
        for (int h = 0; h < 2; h++) {
            for (int p = 0; p < 2; p++) {
                __m512i q[R], scl[R];
                for (int r = 0; r < R; r++) {
                    const __m512i lowbits = load512(x[r]->ql + 64 * h);
                    const __m512i low = p == 0 ? _mm512_and_si512(lowbits, m4) : _mm512_and_si512(_mm512_srli_epi16(lowbits, 4), m4);
                    const __m512i hb = _mm512_broadcast_i64x4(load256(x[r]->qh + 32 * h));
                    const __m512i high = _mm512_and_si512(_mm512_srlv_epi16(hb, shift[p]), m2);
                    q[r] = _mm512_or_si512(low, _mm512_slli_epi16(high, 4));
                    scl[r] = _mm512_permutexvar_epi16(sidx[h][p], sc16[r]);
                }
                for (int c = 0; c < C; c++) {
                    const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
                    const __m512i q8 = load512(b->qs + 128 * h + 64 * p);
                    for (int r = 0; r < R; r++)
                        sumi[r][c] = _mm512_dpwssd_epi32(sumi[r][c], _mm512_maddubs_epi16(q[r], q8), scl[r]);
                }
            }
        }
        for (int c = 0; c < C; c++) {
            const block_q8_K* b = reinterpret_cast<const block_q8_K*>(a + c * as) + i;
            for (int r = 0; r < R; r++)
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(b->d * h2f(x[r]->d)), _mm512_cvtepi32_ps(sumi[r][c]), acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ys + r] = _mm512_reduce_add_ps(acc[r][c]);
}

struct TileQ4_K {
    static constexpr int ROWS = 2, COLS = 4;
    template <int R, int C>
    static void run(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        tile_q4_K<R, C>(nb, w, ws, a, as, y, ys);
    }
};
struct TileQ6_K {
    static constexpr int ROWS = 2, COLS = 4;
    template <int R, int C>
    static void run(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        tile_q6_K<R, C>(nb, w, ws, a, as, y, ys);
    }
};

// ---- float formats -----------------------------------------------------------------------

static inline __m512 load_f16x16(const uint16_t* p) { return _mm512_cvtph_ps(load256(p)); }

// F16 weights times activations rounded to fp16, one accumulator per output, 16 elements a
// step in order. As in the AVX2 tiles, the tiles read the activations widened to float
// (exact), the single dot product converts them as it goes: the FMAs see the same values.
template <int R, int C>
static void tile_f16_f32(int64_t n16, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
    __m512 acc[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n16; i++) {
        __m512 wv[R];
        for (int r = 0; r < R; r++) wv[r] = load_f16x16(reinterpret_cast<const uint16_t*>(w + r * ws) + 16 * i);
        for (int c = 0; c < C; c++) {
            const __m512 av = _mm512_loadu_ps(reinterpret_cast<const float*>(a + c * as) + 16 * i);
            for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], av, acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ys + r] = _mm512_reduce_add_ps(acc[r][c]);
}

struct TileF16 {
    static constexpr int ROWS = 3, COLS = 4;
    template <int R, int C>
    static void run(int64_t n16, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        tile_f16_f32<R, C>(n16, w, ws, a, as, y, ys);
    }
};

static float dot_f16_f16(int64_t n16, const uint16_t* w, const uint16_t* a) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= n16; i += 2) {   // one cache line of weights a pass
        prefetch_ahead<64>(w + 16 * i);
        acc = _mm512_fmadd_ps(load_f16x16(w + 16 * i), load_f16x16(a + 16 * i), acc);
        acc = _mm512_fmadd_ps(load_f16x16(w + 16 * (i + 1)), load_f16x16(a + 16 * (i + 1)), acc);
    }
    for (; i < n16; i++) acc = _mm512_fmadd_ps(load_f16x16(w + 16 * i), load_f16x16(a + 16 * i), acc);
    return _mm512_reduce_add_ps(acc);
}

// Rows whose length is not a multiple of 16 keep the AVX2 kernels, for the dot product and
// the matrix product alike (so the two still agree).
static VecDotFn g_dot_f16_avx2 = nullptr;
static GemmFn g_gemm_f16_avx2 = nullptr;

static float dot_f16_any(int64_t n, const void* vw, const void* va) {
    if (n % 16 == 0) return dot_f16_f16(n / 16, static_cast<const uint16_t*>(vw), static_cast<const uint16_t*>(va));
    return g_dot_f16_avx2(n, vw, va);
}

static void gemm_f16_any(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y,
                         size_t ys) {
    if (n % 16 != 0) return g_gemm_f16_avx2(n, w, ws, nr, a, as, nt, y, ys);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    if (nt == 1) {
        for (int r = 0; r < nr; r++) y[r] = dot_f16_any(n, static_cast<const uint8_t*>(w) + r * ws, ab);
        return;
    }
    // The activations widened once per call; the buffer only grows.
    thread_local std::vector<float> wide;
    if (wide.size() < size_t(n) * nt) wide.resize(size_t(n) * nt);
    for (int t = 0; t < nt; t++) {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(ab + t * as);
        for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(wide.data() + size_t(t) * n + i, load_f16x16(src + i));
    }
    gemm_tiled<TileF16>(n / 16, w, ws, nr, wide.data(), size_t(n) * sizeof(float), nt, y, ys);
}

static inline __m512 load_bf16x16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load256(p)), 16));
}

// BF16: four accumulators, 64 elements a pass; the tail one element at a time.
static float dot_bf16(int64_t n, const void* vw, const void* va) {
    const uint16_t* x = static_cast<const uint16_t*>(vw);
    const uint16_t* y = static_cast<const uint16_t*>(va);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        prefetch_ahead<128>(x + i);
        a0 = _mm512_fmadd_ps(load_bf16x16(x + i), load_bf16x16(y + i), a0);
        a1 = _mm512_fmadd_ps(load_bf16x16(x + i + 16), load_bf16x16(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(load_bf16x16(x + i + 32), load_bf16x16(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(load_bf16x16(x + i + 48), load_bf16x16(y + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(load_bf16x16(x + i), load_bf16x16(y + i), a0);
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) sum += bf16_bits_to_float(x[i]) * bf16_bits_to_float(y[i]);
    return sum;
}

bool quant_avx512_kernels(QuantKernels* k) {
    g_dot_f16_avx2 = k->vec_dot[int(GgmlType::F16)];
    g_gemm_f16_avx2 = k->gemm[int(GgmlType::F16)];
    if (g_dot_f16_avx2 && g_gemm_f16_avx2) {
        k->vec_dot[int(GgmlType::F16)] = dot_f16_any;
        k->gemm[int(GgmlType::F16)] = gemm_f16_any;
    }
    k->vec_dot[int(GgmlType::BF16)] = dot_bf16;
    k->vec_dot[int(GgmlType::Q4_0)] = dot_blocks<TileQ4_0, QK4_0>;
    k->gemm[int(GgmlType::Q4_0)] = gemm_blocks<TileQ4_0, QK4_0>;
    k->vec_dot[int(GgmlType::Q4_1)] = dot_blocks<TileQ4_1, QK4_1>;
    k->gemm[int(GgmlType::Q4_1)] = gemm_blocks<TileQ4_1, QK4_1>;
    k->vec_dot[int(GgmlType::Q5_0)] = dot_blocks<TileQ5_0, QK5_0>;
    k->gemm[int(GgmlType::Q5_0)] = gemm_blocks<TileQ5_0, QK5_0>;
    k->vec_dot[int(GgmlType::Q8_0)] = dot_blocks<TileQ8_0, QK8_0>;
    k->gemm[int(GgmlType::Q8_0)] = gemm_blocks<TileQ8_0, QK8_0>;
    k->vec_dot[int(GgmlType::Q4_K)] = dot_blocks<TileQ4_K, QK_K>;
    k->gemm[int(GgmlType::Q4_K)] = gemm_blocks<TileQ4_K, QK_K>;
    k->vec_dot[int(GgmlType::Q6_K)] = dot_blocks<TileQ6_K, QK_K>;
    k->gemm[int(GgmlType::Q6_K)] = gemm_blocks<TileQ6_K, QK_K>;
    return true;
}

}  // namespace ffnskip

#else  // the compiler cannot target AVX-512 here: keep the AVX2 kernels

namespace ffnskip {
bool quant_avx512_kernels(QuantKernels*) { return false; }
}  // namespace ffnskip

#endif
