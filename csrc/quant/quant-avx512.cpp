// AVX-512 (F/BW/VL/DQ + VNNI) tiled matrix products. Compiled with the AVX-512 flags
// (see cmake/compile-flags.cmake); only installed by quant.cpp after a CPUID/XGETBV
// check, on top of the AVX2 table: Q5_0, Q6_K and F16 matrix products, and Q6_K's dot
// product; the other formats' single dot products and most matrix-vector products of one
// token (decoding streams the weights from memory) keep the AVX2 kernels. Q4_1, Q8_0 and Q4_K have their
// own file (quant-rows16-avx512.cpp) and arithmetic.
//
// A 512-bit register holds two AVX2 computations side by side: its low half is the 8
// lanes of one (row, token) output exactly as the AVX2 kernel computes them, its high
// half the next token's (tiles) or the next row's (one token). The integer part reaches the same int32 lane sums by other
// instructions (exact, so order is free): vpdpbusd on unsigned weight bytes
// u = q + offset (Q5_0: 16) from an accumulator that starts at
// -offset * sum(activation quants), one per activation block shared by every row of a
// tile; vpmaddubsw + vpdpwssd for the K-quants' scaled sub-blocks. The float part is the
// AVX2 kernel's, operation for operation, and each half is reduced by hsum_avx2. So every
// output has the bits of the AVX2 dot product of its row and token (and a prompt batch
// computes what token-by-token decoding does) while one instruction does two outputs' work.
#include "quant/quant-impl.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX512VNNI__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

// GCC 12's AVX-512 headers build some vectors from a deliberately undefined value
// (_mm512_undefined_*), which -Wuninitialized reports in every caller.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "quant/gemm-tiles.h"
#include "quant/simd-avx2.h"

namespace ffnskip {
// Kernel types local to this file: the AVX2 and AVX-512 files define tiles of the same
// names, and shared (weak) template instances would let the linker keep one for both.
namespace {

static inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 32 bytes at lo in the low half, 32 bytes at hi in the high half.
static inline __m512i load_pair256(const void* lo, const void* hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load256(lo)), load256(hi), 1);
}
static inline __m512i both_halves(__m256i v) { return _mm512_inserti64x4(_mm512_castsi256_si512(v), v, 1); }
// Lanes 0-7 lo, lanes 8-15 hi.
static inline __m512 pair_ps(float lo, float hi) {
    return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}
// fp16 scales as floats (exact), built from broadcasts rather than through scalar registers:
// every lane *h, or lanes 0-7 *h0 and 8-15 *h1.
static inline __m512 bcast_h2f(const uint16_t* h) { return _mm512_cvtph_ps(_mm256_set1_epi16(int16_t(*h))); }
static inline __m512 pair_h2f(const uint16_t* h0, const uint16_t* h1) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(int16_t(*h0))),
                                                   _mm_set1_epi16(int16_t(*h1)), 1));
}
static inline float hsum_low(__m512 v) { return hsum_avx2(_mm512_castps512_ps256(v)); }
static inline float hsum_high(__m512 v) { return hsum_avx2(_mm512_extractf32x8_ps(v, 1)); }

// 16 bytes of packed nibbles -> 32 bytes: element j < 16 the low nibble of byte j,
// element j + 16 the high one (the Q4_0/Q4_1/Q5_x order).
static inline __m256i unpack_nibbles_32(const uint8_t* qs) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

// A tile of R rows x C tokens (F16 below pairs rows instead) works on P = (C + 1) / 2 token pairs: pair p holds tokens
// 2p (low half) and 2p + 1 (high half); an odd last token is paired with itself and its
// high half dropped.
template <int C>
static inline int pair_second(int p) { return 2 * p + 1 < C ? 2 * p + 1 : 2 * p; }

template <int R, int C>
static inline void store_pairs(const __m512 (&acc)[R][(C + 1) / 2], float* y, size_t ys) {
    for (int r = 0; r < R; r++)
        for (int p = 0; p < (C + 1) / 2; p++) {
            y[(2 * p) * ys + r] = hsum_low(acc[r][p]);
            if (2 * p + 1 < C) y[(2 * p + 1) * ys + r] = hsum_high(acc[r][p]);
        }
}

// ---- 32-element blocks against Q8_0 / Q8_1 ---------------------------------------------

// Q5_0 weights (quant-avx2.cpp's TileSigned): acc += (dw * da) * sum per block.
struct Q5_0U {
    using block = block_q5_0;
    static constexpr int OFFSET = 16;
    // the 5th bit of element j is bit j of qh (little-endian)
    static __m256i quants(const block* x) {
        uint32_t h;
        std::memcpy(&h, x->qh, 4);
        const __m256i lo4 = unpack_nibbles_32(x->qs);
        return _mm256_mask_add_epi8(lo4, _cvtu32_mask32(h), lo4, _mm256_set1_epi8(0x10));
    }
};

template <class Q, int ROWS_, int COLS_>
struct TileSigned {
    static constexpr int ROWS = ROWS_, COLS = COLS_;
    template <int R, int C>
    static void run(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        constexpr int P = (C + 1) / 2;
        using WB = typename Q::block;
        __m512 acc[R][P];
        for (int r = 0; r < R; r++)
            for (int p = 0; p < P; p++) acc[r][p] = _mm512_setzero_ps();
        const __m512i offset = _mm512_set1_epi8(int8_t(Q::OFFSET));
        for (int64_t i = 0; i < nb; i++) {
            __m512i q[R];
            __m512 dw[R];
            for (int r = 0; r < R; r++) {
                const WB* x = reinterpret_cast<const WB*>(w + r * ws) + i;
                prefetch_ahead<sizeof(WB)>(x);   // a few tokens' tiles are bound by memory
                q[r] = both_halves(Q::quants(x));
                dw[r] = bcast_h2f(&x->d);
            }
            for (int p = 0; p < P; p++) {
                const block_q8_0* b0 = reinterpret_cast<const block_q8_0*>(a + (2 * p) * as) + i;
                const block_q8_0* b1 = reinterpret_cast<const block_q8_0*>(a + pair_second<C>(p) * as) + i;
                const __m512i qa = load_pair256(b0->qs, b1->qs);
                const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(),
                                                      _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, qa));
                const __m512 da = pair_h2f(&b0->d, &b1->d);
                for (int r = 0; r < R; r++) {
                    const __m512 s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, q[r], qa));
                    acc[r][p] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], da), s, acc[r][p]);
                }
            }
        }
        store_pairs<R, C>(acc, y, ys);
    }
};
using TileQ5_0 = TileSigned<Q5_0U, 3, 8>;

// ---- Q6_K (256-element super-blocks against Q8_K; quant-avx2.cpp's tile_q6_K) --------------

template <int R, int C>
static void tile_q6_K(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
    constexpr int P = (C + 1) / 2;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2 = _mm256_set1_epi8(0x03);
    __m512 acc[R][P];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < P; p++) acc[r][p] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const block_q6_K* x[R];
        for (int r = 0; r < R; r++) {
            x[r] = reinterpret_cast<const block_q6_K*>(w + r * ws) + i;
            prefetch_ahead<sizeof(block_q6_K)>(x[r]);
        }
        __m512i sumi[R][P];
        for (int p = 0; p < P; p++) {
            const block_q8_K* b0 = reinterpret_cast<const block_q8_K*>(a + (2 * p) * as) + i;
            const block_q8_K* b1 = reinterpret_cast<const block_q8_K*>(a + pair_second<C>(p) * as) + i;
            const __m512i bsums = load_pair256(b0->bsums, b1->bsums);
            for (int r = 0; r < R; r++) {
                // quants are stored as q + 32: start from -32 * sum_j sc[j] * bsums[j]
                const __m512i sc16 = both_halves(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[r]->scales))));
                sumi[r][p] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_madd_epi16(sc16, bsums), 5));
            }
        }
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                __m512i q[R], scl[R];
                for (int r = 0; r < R; r++) {
                    const __m256i lowbits = load256(x[r]->ql + 64 * h + 32 * (k & 1));
                    const __m256i low = k < 2 ? _mm256_and_si256(lowbits, m4) : _mm256_and_si256(_mm256_srli_epi16(lowbits, 4), m4);
                    const __m256i qh = _mm256_and_si256(_mm256_srli_epi16(load256(x[r]->qh + 32 * h), 2 * k), m2);
                    q[r] = both_halves(_mm256_or_si256(low, _mm256_slli_epi16(qh, 4)));
                    const int8_t* s = x[r]->scales + 8 * h + 2 * k;
                    // scale s[0] for 128-bit lanes 0 and 2 (elements 0-15 of each token), s[1] for 1 and 3
                    scl[r] = _mm512_mask_blend_epi64(0xCC, _mm512_set1_epi16(s[0]), _mm512_set1_epi16(s[1]));
                }
                for (int p = 0; p < P; p++) {
                    const block_q8_K* b0 = reinterpret_cast<const block_q8_K*>(a + (2 * p) * as) + i;
                    const block_q8_K* b1 = reinterpret_cast<const block_q8_K*>(a + pair_second<C>(p) * as) + i;
                    const __m512i q8 = load_pair256(b0->qs + 128 * h + 32 * k, b1->qs + 128 * h + 32 * k);
                    for (int r = 0; r < R; r++)
                        sumi[r][p] = _mm512_dpwssd_epi32(sumi[r][p], _mm512_maddubs_epi16(q[r], q8), scl[r]);
                }
            }
        }
        for (int p = 0; p < P; p++) {
            const block_q8_K* b0 = reinterpret_cast<const block_q8_K*>(a + (2 * p) * as) + i;
            const block_q8_K* b1 = reinterpret_cast<const block_q8_K*>(a + pair_second<C>(p) * as) + i;
            for (int r = 0; r < R; r++) {
                const float d = h2f(x[r]->d);
                acc[r][p] = _mm512_fmadd_ps(pair_ps(b0->d * d, b1->d * d), _mm512_cvtepi32_ps(sumi[r][p]), acc[r][p]);
            }
        }
    }
    store_pairs<R, C>(acc, y, ys);
}

struct TileQ6_K {
    static constexpr int ROWS = 2, COLS = 8;
    template <int R, int C>
    static void run(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        tile_q6_K<R, C>(nb, w, ws, a, as, y, ys);
    }
};

// ---- F16 (quant-avx2.cpp's tile_f16_f32: one accumulator per output, 8 elements a step) --
//
// Here the halves are two weight rows and each token's 8 activations are broadcast to
// both (a load-broadcast needs no shuffle unit, which the FMAs share): row pair q holds rows
// 2q and 2q + 1, an odd last row paired with itself and its high half dropped.

template <int R, int C>
static void tile_f16_f32(int64_t n8, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
    constexpr int Q = (R + 1) / 2;
    __m512 acc[Q][C];
    for (int q = 0; q < Q; q++)
        for (int c = 0; c < C; c++) acc[q][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n8; i++) {
        __m512 wv[Q];
        for (int q = 0; q < Q; q++) {
            const uint16_t* w0 = reinterpret_cast<const uint16_t*>(w + (2 * q) * ws) + 8 * i;
            const uint16_t* w1 = reinterpret_cast<const uint16_t*>(w + pair_second<R>(q) * ws) + 8 * i;
            wv[q] = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0))),
                                                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(w1)), 1));
        }
        for (int c = 0; c < C; c++) {
            const __m512 av = _mm512_broadcast_f32x8(_mm256_loadu_ps(reinterpret_cast<const float*>(a + c * as) + 8 * i));
            for (int q = 0; q < Q; q++) acc[q][c] = _mm512_fmadd_ps(wv[q], av, acc[q][c]);
        }
    }
    for (int q = 0; q < Q; q++)
        for (int c = 0; c < C; c++) {
            y[c * ys + 2 * q] = hsum_low(acc[q][c]);
            if (2 * q + 1 < R) y[c * ys + 2 * q + 1] = hsum_high(acc[q][c]);
        }
}

struct TileF16 {
    static constexpr int ROWS = 4, COLS = 8;   // 16 accumulators + 2 weight pairs + 1 activation (6 x 8: no faster)
    template <int R, int C>
    static void run(int64_t n8, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, size_t ys) {
        tile_f16_f32<R, C>(n8, w, ws, a, as, y, ys);
    }
};

// ---- one token (decoding): two weight rows per register ---------------------------------
//
// Row r in the low half, row r + 1 in the high half, the activation in both: each half is
// the AVX2 dot product of its row, lane for lane (as in the tiles), and a pass reads two
// weight rows, both asked for ahead. Only where it pays: matrix-vector products of 40-60 MB
// (beyond the caches; thread CPU time on a busy machine) ran Q5_0 1.3-1.4x and Q8_0
// 1.04-1.08x as fast as the AVX2 kernels; Q4_1 (0.75x) and F16 (0.87x) keep theirs.

using Rows2Fn = void (*)(int64_t n, const uint8_t* w0, const uint8_t* w1, const uint8_t* a, float* y0, float* y1);

template <class Q>
static void rows2_signed(int64_t n, const uint8_t* w0, const uint8_t* w1, const uint8_t* a, float* y0, float* y1) {
    using WB = typename Q::block;
    const WB* x0 = reinterpret_cast<const WB*>(w0);
    const WB* x1 = reinterpret_cast<const WB*>(w1);
    const block_q8_0* b = reinterpret_cast<const block_q8_0*>(a);
    const __m512i offset = _mm512_set1_epi8(int8_t(Q::OFFSET));
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK8_0; i++) {
        prefetch_ahead<sizeof(WB)>(x0 + i);
        prefetch_ahead<sizeof(WB)>(x1 + i);
        const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(Q::quants(x0 + i)), Q::quants(x1 + i), 1);
        const __m512i qa = both_halves(load256(b[i].qs));
        const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, qa));
        const __m512 s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, q, qa));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(pair_h2f(&x0[i].d, &x1[i].d), bcast_h2f(&b[i].d)), s, acc);
    }
    *y0 = hsum_low(acc);
    *y1 = hsum_high(acc);
}

// Q6_K, one row and one token: a super-block's two 128-element halves side by side, so the
// row is still read as one stream. The halves' int32 lanes are added (exact) before the
// float step, which is then the AVX2 kernel's: same bits, half the integer instructions.
static float dot_q6_K_q8_K(int64_t n, const void* vw, const void* va) {
    const block_q6_K* x = static_cast<const block_q6_K*>(vw);
    const block_q8_K* y = static_cast<const block_q8_K*>(va);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m2 = _mm512_set1_epi8(0x03);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        prefetch_ahead<sizeof(block_q6_K)>(x + i);
        const int8_t* sc = x[i].scales;
        // quants are stored as q + 32 (0..63): subtract 32 * sum_j sc[j] * bsums[j] at the end
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(y[i].bsums)), 5);
        const __m512i lowbits[2] = {load_pair256(x[i].ql, x[i].ql + 64), load_pair256(x[i].ql + 32, x[i].ql + 96)};
        const __m512i qh = load_pair256(x[i].qh, x[i].qh + 32);
        __m512i sumi = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            const __m512i low = k < 2 ? _mm512_and_si512(lowbits[k], m4)
                                      : _mm512_and_si512(_mm512_srli_epi16(lowbits[k & 1], 4), m4);
            const __m512i high = _mm512_and_si512(_mm512_srli_epi16(qh, 2 * k), m2);
            const __m512i q = _mm512_or_si512(low, _mm512_slli_epi16(high, 4));
            // 128-bit lanes 0, 1: the first half's scales of elements 0-15 and 16-31; lanes 2, 3: the second's
            const __m512i scl = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_set1_epi16(sc[2 * k]), _mm_set1_epi16(sc[2 * k + 1]), 1)),
                _mm256_inserti128_si256(_mm256_set1_epi16(sc[8 + 2 * k]), _mm_set1_epi16(sc[9 + 2 * k]), 1), 1);
            const __m512i q8 = load_pair256(y[i].qs + 32 * k, y[i].qs + 128 + 32 * k);
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(q, q8), scl);
        }
        const __m256i sum = _mm256_sub_epi32(
            _mm256_add_epi32(_mm512_castsi512_si256(sumi), _mm512_extracti64x4_epi64(sumi, 1)), offset);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sum), acc);
    }
    return hsum_avx2(acc);
}

// The AVX2 matrix products, kept for what the kernels here do not cover.
static GemmFn g_avx2_gemm[TYPE_TABLE_SIZE];

// One token: rows two at a time, an odd last row by the AVX2 kernel.
template <Rows2Fn F, GgmlType T>
static void gemv_rows2(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, float* y, size_t ys) {
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    int r = 0;
    for (; r + 2 <= nr; r += 2) F(n, wb + r * ws, wb + (r + 1) * ws, ab, y + r, y + r + 1);
    if (r < nr) g_avx2_gemm[int(T)](n, wb + r * ws, ws, 1, a, as, 1, y + r, ys);
}

// ---- entry points --------------------------------------------------------------------------

template <class K, int qk, GgmlType T, Rows2Fn F>
static void gemm_blocks512(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y,
                           size_t ys) {
    if (nt == 1) {
        if constexpr (F != nullptr) return gemv_rows2<F, T>(n, w, ws, nr, a, as, y, ys);
        return g_avx2_gemm[int(T)](n, w, ws, nr, a, as, nt, y, ys);
    }
    gemm_tiled<K>(n / qk, w, ws, nr, a, as, nt, y, ys);
}

static void gemm_q6_K(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y,
                      size_t ys) {
    if (nt == 1) {
        const uint8_t* wb = static_cast<const uint8_t*>(w);
        for (int r = 0; r < nr; r++) y[r] = dot_q6_K_q8_K(n, wb + r * ws, a);
        return;
    }
    gemm_tiled<TileQ6_K>(n / QK_K, w, ws, nr, a, as, nt, y, ys);
}

static void gemm_f16(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y,
                     size_t ys) {
    if (n % 8 != 0 || nt == 1) return g_avx2_gemm[int(GgmlType::F16)](n, w, ws, nr, a, as, nt, y, ys);
    // The activations widened once per call (exact); the buffer only grows.
    float* wide = scratch_floats(size_t(n) * nt);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    for (int t = 0; t < nt; t++) {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(ab + t * as);
        for (int64_t i = 0; i < n; i += 8)
            _mm256_storeu_ps(wide + size_t(t) * n + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    }
    gemm_tiled<TileF16>(n / 8, w, ws, nr, wide, size_t(n) * sizeof(float), nt, y, ys);
}

}  // namespace

bool quant_avx512_kernels(QuantKernels* k) {
    // Each kernel here (Q4_1, Q8_0 and Q4_K are in quant-rows16-avx512.cpp) reproduces the AVX2 one of its type: install only over those.
    for (int t = 0; t < TYPE_TABLE_SIZE; t++) g_avx2_gemm[t] = k->gemm[t];
    auto install = [&](GgmlType t, GemmFn fn) {
        if (g_avx2_gemm[int(t)]) k->gemm[int(t)] = fn;
    };
    install(GgmlType::F16, gemm_f16);
    install(GgmlType::Q5_0, gemm_blocks512<TileQ5_0, QK5_0, GgmlType::Q5_0, rows2_signed<Q5_0U>>);
    install(GgmlType::Q6_K, gemm_q6_K);
    if (g_avx2_gemm[int(GgmlType::Q6_K)]) k->vec_dot[int(GgmlType::Q6_K)] = dot_q6_K_q8_K;
    // Q4_1, Q8_0, Q4_K: sixteen rows per register and their own arithmetic (quant-rows16-avx512.cpp)
    if (g_avx2_gemm[int(GgmlType::Q4_1)] && g_avx2_gemm[int(GgmlType::Q8_0)] && g_avx2_gemm[int(GgmlType::Q4_K)])
        quant_rows16_avx512_kernels(k);
    return true;
}

}  // namespace ffnskip

#else  // the compiler cannot target AVX-512 here: keep the AVX2 kernels

namespace ffnskip {
bool quant_avx512_kernels(QuantKernels*) { return false; }
}  // namespace ffnskip

#endif
