// AVX-512 Q4_1, Q8_0 and Q4_K products with sixteen weight rows in the lanes of a register.
//
// The other tiles (quant-avx512.cpp) keep each (row, token) output in 8 lanes and so pay
// a convert, a multiply and an FMA per block for every 8 lanes of every output; at a
// batch of 8 tokens that float work was most of the step. Here lane r of a register is
// weight row r: gathers bring 16 rows' quants in (dword j of every row in register j),
// and each token's block costs 8 vpdpbusd (one per 4 activation bytes, broadcast) that
// leave the block's integer sums of all 16 rows in one register, then one convert, one
// multiply and one FMA (two for Q4_1) for 16 outputs.
//
// Arithmetic ("block sums"), the same for every path of this file: per (row, token), in
// block order, with isum the block's exact integer dot product of the quants,
//     acc = fma(dw * da, float(isum), acc)     and for Q4_1 then  acc = fma(m, s, acc)
// (dw, m the weight block's scale and minimum, da and s the activation block's scale and
// stored d * sum(qs)). One row, sixteen rows, one token or many: the same float
// operations, so a batch computes each sequence's bits as decoding it alone does. They
// are not the AVX2 kernels' bits (those keep 8 partial sums per output): an AVX-512
// machine and an AVX2 one agree to rounding, not bit for bit, for these formats. Q4_K's
// super-blocks have their own form of the same idea (below). Q6_K in this layout ran
// prompts 4% faster but decoding 10% slower (53 gathers per super-block of 16 rows):
// it keeps the tile of quant-avx512.cpp.
#include "quant/quant-impl.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX512VNNI__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

// GCC 12's AVX-512 headers build some vectors from a deliberately undefined value.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

namespace ffnskip {
namespace {

constexpr int LANES = 16;       // weight rows per register
constexpr int MAX_TOKENS = 8;   // tokens per tile (one accumulator register each)

// What a format tells the kernels: its blocks, how 16 rows' quants reach the lanes (as
// unsigned bytes u, 4 per dword, in the order of the activation's dwords 0..7), and the
// per-token-block numbers the activation side adds (Q4_1: the minimum's s; Q8_0: the
// offset's -128 * sum(a), since u = q + 128).
//
// Q4_1 against Q8_1:  acc = fma(dw * da, float(isum), acc);  acc = fma(m, s, acc)
// Q8_0 against Q8_0:  acc = fma(dw * da, float(isum), acc)
struct Q4_1Rows {
    using block = block_q4_1;
    using act_block = block_q8_1;
    static constexpr bool HAS_MIN = true;
    // lane r = row r: q[j] holds elements 4j..4j+3 (low nibbles, j < 4) or 16+4(j-4).. (high)
    static void load(const uint8_t* blk, __m512i rows, __m512i (&q)[8], __m512& dw, __m512& mw) {
        const __m512i low4 = _mm512_set1_epi8(0x0F);
        const __m512i dm = _mm512_i32gather_epi32(rows, blk, 1);   // d | m << 16
        for (int j = 0; j < 4; j++) {
            const __m512i v = _mm512_i32gather_epi32(rows, blk + offsetof(block_q4_1, qs) + 4 * j, 1);
            q[j] = _mm512_and_si512(v, low4);
            q[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
        dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
        mw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
    }
    static __m256i quants(const block* x) {   // one row, elements 0..31 as u
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x->qs));
        return _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(packed), _mm_srli_epi16(packed, 4), 1),
                                _mm256_set1_epi8(0x0F));
    }
    static float min(const block* x) { return _cvtsh_ss(x->m); }
    // the activation block's second number: s (as float bits)
    static uint32_t extra(const act_block* b) {
        const float s = _cvtsh_ss(b->s);
        uint32_t u;
        std::memcpy(&u, &s, 4);
        return u;
    }
    static int32_t offset(const act_block*) { return 0; }
};

struct Q8_0Rows {
    using block = block_q8_0;
    using act_block = block_q8_0;
    static constexpr bool HAS_MIN = false;
    static void load(const uint8_t* blk, __m512i rows, __m512i (&q)[8], __m512& dw, __m512&) {
        const __m512i flip = _mm512_set1_epi8(int8_t(0x80));   // q + 128 as an unsigned byte
        for (int j = 0; j < 8; j++)
            q[j] = _mm512_xor_si512(_mm512_i32gather_epi32(rows, blk + offsetof(block_q8_0, qs) + 4 * j, 1), flip);
        dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(rows, blk, 1)));   // low 16 bits: d
    }
    static __m256i quants(const block* x) {
        return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->qs)), _mm256_set1_epi8(int8_t(0x80)));
    }
    static float min(const block*) { return 0.0f; }
    static uint32_t extra(const act_block* b) { return uint32_t(offset(b)); }
    static int32_t offset(const act_block* b) {
        int32_t sum = 0;
        for (int k = 0; k < QK8_0; k++) sum += b->qs[k];
        return -128 * sum;
    }
};

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// One (row, token): the arithmetic above for a single output, used for the rows past the
// last multiple of 16 and for the single dot product.
template <class F>
float dot_row(int64_t nb, const typename F::block* x, const typename F::act_block* b) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
        const int32_t isum = hsum_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), F::quants(x + i), a)) + F::offset(b + i);
        acc = std::fma(_cvtsh_ss(x[i].d) * _cvtsh_ss(b[i].d), float(isum), acc);
        if constexpr (F::HAS_MIN) acc = std::fma(F::min(x + i), _cvtsh_ss(b[i].s), acc);
    }
    return acc;
}

template <class F, int qk>
float vec_dot_rows(int64_t n, const void* w, const void* a) {
    return dot_row<F>(n / qk, static_cast<const typename F::block*>(w), static_cast<const typename F::act_block*>(a));
}

// Sixteen rows (ws bytes apart) x C tokens (as bytes apart). act: per token, per block,
// two 32-bit numbers: the activation's scale as a float, then F::extra.
template <class F, int C>
void rows16(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, const uint32_t* act, float* y,
            size_t ys) {
    using AB = typename F::act_block;
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(int32_t(ws)));
    __m512 acc[C];
    for (int t = 0; t < C; t++) acc[t] = _mm512_setzero_ps();
    // The next 16 rows are one contiguous stretch of memory: asked for line by line while
    // these run, since 16 interleaved rows (often only a few cache lines each) are not a
    // pattern the hardware prefetcher follows.
    const char* next = reinterpret_cast<const char*>(w + LANES * ws);
    const int64_t lines_per_block = (int64_t(LANES * ws) / 64 + nb - 1) / nb;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t* blk = w + i * sizeof(typename F::block);
        for (int64_t l = 0; l < lines_per_block; l++) _mm_prefetch(next + (i * lines_per_block + l) * 64, _MM_HINT_T0);
        __m512i q[8];
        __m512 dw, mw;
        F::load(blk, rows, q, dw, mw);
        for (int t = 0; t < C; t++) {
            const int32_t* qa = reinterpret_cast<const int32_t*>(reinterpret_cast<const AB*>(a + t * as)[i].qs);
            const uint32_t* ai = act + (size_t(t) * nb + i) * 2;
            __m512i s = F::HAS_MIN ? _mm512_setzero_si512() : _mm512_set1_epi32(int32_t(ai[1]));
            for (int j = 0; j < 8; j++) s = _mm512_dpbusd_epi32(s, q[j], _mm512_set1_epi32(qa[j]));
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(ai[0])))),
                                     _mm512_cvtepi32_ps(s), acc[t]);
            if constexpr (F::HAS_MIN)
                acc[t] = _mm512_fmadd_ps(mw, _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(ai[1]))), acc[t]);
        }
    }
    for (int t = 0; t < C; t++) _mm512_storeu_ps(y + t * ys, acc[t]);
}

// C tokens of 16 rows, C a run-time count up to MAX_TOKENS.
template <class F>
void rows16_tokens(int C, int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, const uint32_t* act,
                   float* y, size_t ys) {
    switch (C) {
        case 1: return rows16<F, 1>(nb, w, ws, a, as, act, y, ys);
        case 2: return rows16<F, 2>(nb, w, ws, a, as, act, y, ys);
        case 3: return rows16<F, 3>(nb, w, ws, a, as, act, y, ys);
        case 4: return rows16<F, 4>(nb, w, ws, a, as, act, y, ys);
        case 5: return rows16<F, 5>(nb, w, ws, a, as, act, y, ys);
        case 6: return rows16<F, 6>(nb, w, ws, a, as, act, y, ys);
        case 7: return rows16<F, 7>(nb, w, ws, a, as, act, y, ys);
        default: return rows16<F, 8>(nb, w, ws, a, as, act, y, ys);
    }
}

// The GemmFn: nr rows x nt tokens, y[t * ys + r].
template <class F, int qk>
void gemm_rows(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y, size_t ys) {
    using AB = typename F::act_block;
    const int64_t nb = n / qk;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    const int full = nr - nr % LANES;
    // a gather's row offsets are 32-bit
    const bool gathers = full > 0 && ws <= size_t(INT32_MAX / LANES);
    if (gathers) {
        // The activation blocks' numbers, once for all rows (exact); floats as their bits.
        uint32_t* act = reinterpret_cast<uint32_t*>(scratch_floats(size_t(nt) * 2 * nb));
        for (int t = 0; t < nt; t++) {
            const AB* b = reinterpret_cast<const AB*>(ab + t * as);
            for (int64_t i = 0; i < nb; i++) {
                const float d = _cvtsh_ss(b[i].d);
                std::memcpy(&act[(size_t(t) * nb + i) * 2], &d, 4);
                act[(size_t(t) * nb + i) * 2 + 1] = F::extra(b + i);
            }
        }
        for (int r = 0; r < full; r += LANES)
            for (int t = 0; t < nt; t += MAX_TOKENS)
                rows16_tokens<F>(std::min(MAX_TOKENS, nt - t), nb, wb + r * ws, ws, ab + t * as, as,
                                 act + size_t(t) * 2 * nb, y + t * ys + r, ys);
    }
    for (int r = gathers ? full : 0; r < nr; r++)
        for (int t = 0; t < nt; t++)
            y[t * ys + r] = dot_row<F>(nb, reinterpret_cast<const typename F::block*>(wb + r * ws),
                                       reinterpret_cast<const AB*>(ab + t * as));
}

// ---- Q4_K against Q8_K ------------------------------------------------------------
//
// Per (row, token) and 256-element super-block, with isc = sum_j sc_j * (sub-block j's
// integer dot product) and imin = sum_j m_j * (bsums[2j] + bsums[2j+1]), both exact:
//     acc = fma(d * da, float(isc), acc);   acc = fma(-(dmin * da), float(imin), acc)

// One (row, token), for the rows past the last multiple of 16 and the single dot product.
float dot_row_q4_K(int64_t nb, const block_q4_K* x, const block_q8_K* b) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t isc = 0, imin = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            get_scale_min_k4(j, x[i].scales, &sc, &m);
            const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].qs + 32 * (j / 2)));
            const __m128i packed2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].qs + 32 * (j / 2) + 16));
            __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(packed), packed2, 1);
            if (j % 2) q = _mm256_srli_epi16(q, 4);
            q = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
            const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 32 * j));
            isc += int32_t(sc) * hsum_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), q, a));
            imin += int32_t(m) * (int32_t(b[i].bsums[2 * j]) + int32_t(b[i].bsums[2 * j + 1]));
        }
        acc = std::fma(_cvtsh_ss(x[i].d) * b[i].d, float(isc), acc);
        acc = std::fma(-(_cvtsh_ss(x[i].dmin) * b[i].d), float(imin), acc);
    }
    return acc;
}

float vec_dot_q4_K(int64_t n, const void* w, const void* a) {
    return dot_row_q4_K(n / QK_K, static_cast<const block_q4_K*>(w), static_cast<const block_q8_K*>(a));
}

// Per token and super-block, what the Q4_K tile reads of the activation besides its
// quants: the scale, and the sub-blocks' sums as int16 pairs for vpdpwssd against the
// mins: (b0, b2), (b1, b3), (b4, b6), (b5, b7), b_j = bsums[2j] + bsums[2j + 1].
constexpr int Q8K_INFO = 8;   // 32-bit words per (token, super-block); 5 used
static inline uint32_t pair16(int32_t lo, int32_t hi) { return uint32_t(uint16_t(int16_t(lo))) | (uint32_t(uint16_t(int16_t(hi))) << 16); }

template <int C>
void rows16_q4_K(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, const uint32_t* act, float* y,
                 size_t ys) {
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(int32_t(ws)));
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i low6 = _mm512_set1_epi8(0x3F);
    const __m512i bits45 = _mm512_set1_epi8(0x30);
    const __m512i byte0 = _mm512_set1_epi32(0xFF);
    const __m512i words = _mm512_set1_epi32(0x00FF00FF);
    float acc[C][LANES];
    for (int t = 0; t < C; t++) _mm512_storeu_ps(acc[t], _mm512_setzero_ps());
    const char* next = reinterpret_cast<const char*>(w + LANES * ws);
    const int64_t lines_per_block = (int64_t(LANES * ws) / 64 + nb - 1) / nb;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t* blk = w + i * sizeof(block_q4_K);
        for (int64_t l = 0; l < lines_per_block; l++) _mm_prefetch(next + (i * lines_per_block + l) * 64, _MM_HINT_T0);
        const __m512i dd = _mm512_i32gather_epi32(rows, blk, 1);   // d | dmin << 16
        const __m512i s0 = _mm512_i32gather_epi32(rows, blk + offsetof(block_q4_K, scales), 1);
        const __m512i s1 = _mm512_i32gather_epi32(rows, blk + offsetof(block_q4_K, scales) + 4, 1);
        const __m512i s2 = _mm512_i32gather_epi32(rows, blk + offsetof(block_q4_K, scales) + 8, 1);
        // four 6-bit numbers per lane, byte k: scales 0-3, scales 4-7, mins 0-3, mins 4-7
        const __m512i sc_a = _mm512_and_si512(s0, low6);
        const __m512i sc_b = _mm512_or_si512(_mm512_and_si512(s2, low4), _mm512_and_si512(_mm512_srli_epi32(s0, 2), bits45));
        const __m512i m_a = _mm512_and_si512(s1, low6);
        const __m512i m_b = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s2, 4), low4),
                                            _mm512_and_si512(_mm512_srli_epi32(s1, 2), bits45));
        __m512i isc[C], imin[C];
        for (int t = 0; t < C; t++) {
            // mins x sub-block sums: bytes 0, 2 then 1, 3 as int16 pairs
            const uint32_t* ai = act + (size_t(t) * nb + i) * Q8K_INFO;
            __m512i mm = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_and_si512(m_a, words), _mm512_set1_epi32(int32_t(ai[1])));
            mm = _mm512_dpwssd_epi32(mm, _mm512_and_si512(_mm512_srli_epi32(m_a, 8), words), _mm512_set1_epi32(int32_t(ai[2])));
            mm = _mm512_dpwssd_epi32(mm, _mm512_and_si512(m_b, words), _mm512_set1_epi32(int32_t(ai[3])));
            imin[t] = _mm512_dpwssd_epi32(mm, _mm512_and_si512(_mm512_srli_epi32(m_b, 8), words), _mm512_set1_epi32(int32_t(ai[4])));
            isc[t] = _mm512_setzero_si512();
        }
        for (int c = 0; c < 4; c++) {   // 64 elements: sub-blocks 2c (low nibbles) and 2c + 1 (high)
            __m512i raw[8];
            for (int k = 0; k < 8; k++)
                raw[k] = _mm512_i32gather_epi32(rows, blk + offsetof(block_q4_K, qs) + 32 * c + 4 * k, 1);
            const __m512i& scs = c < 2 ? sc_a : sc_b;
            for (int half = 0; half < 2; half++) {
                const int j = 2 * c + half;
                const __m512i sc = _mm512_and_si512(_mm512_srli_epi32(scs, 8 * (j % 4)), byte0);
                __m512i q[8];
                for (int k = 0; k < 8; k++) q[k] = _mm512_and_si512(half ? _mm512_srli_epi16(raw[k], 4) : raw[k], low4);
                for (int t = 0; t < C; t++) {
                    const int32_t* qa = reinterpret_cast<const int32_t*>(
                        reinterpret_cast<const block_q8_K*>(a + t * as)[i].qs + 32 * j);
                    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], _mm512_set1_epi32(qa[0]));
                    for (int k = 1; k < 8; k++) s = _mm512_dpbusd_epi32(s, q[k], _mm512_set1_epi32(qa[k]));
                    isc[t] = _mm512_add_epi32(isc[t], _mm512_mullo_epi32(s, sc));
                }
            }
        }
        const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        const __m512 dmw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dd, 16)));
        for (int t = 0; t < C; t++) {
            const __m512 da = _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(act[(size_t(t) * nb + i) * Q8K_INFO])));
            __m512 f = _mm512_loadu_ps(acc[t]);
            f = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(isc[t]), f);
            f = _mm512_fnmadd_ps(_mm512_mul_ps(dmw, da), _mm512_cvtepi32_ps(imin[t]), f);
            _mm512_storeu_ps(acc[t], f);
        }
    }
    for (int t = 0; t < C; t++) _mm512_storeu_ps(y + t * ys, _mm512_loadu_ps(acc[t]));
}

void rows16_q4_K_tokens(int C, int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, const uint32_t* act,
                        float* y, size_t ys) {
    switch (C) {
        case 1: return rows16_q4_K<1>(nb, w, ws, a, as, act, y, ys);
        case 2: return rows16_q4_K<2>(nb, w, ws, a, as, act, y, ys);
        case 3: return rows16_q4_K<3>(nb, w, ws, a, as, act, y, ys);
        case 4: return rows16_q4_K<4>(nb, w, ws, a, as, act, y, ys);
        case 5: return rows16_q4_K<5>(nb, w, ws, a, as, act, y, ys);
        case 6: return rows16_q4_K<6>(nb, w, ws, a, as, act, y, ys);
        case 7: return rows16_q4_K<7>(nb, w, ws, a, as, act, y, ys);
        default: return rows16_q4_K<8>(nb, w, ws, a, as, act, y, ys);
    }
}

void gemm_q4_K(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y, size_t ys) {
    const int64_t nb = n / QK_K;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    const int full = nr - nr % LANES;
    const bool gathers = full > 0 && ws <= size_t(INT32_MAX / LANES);
    if (gathers) {
        uint32_t* act = reinterpret_cast<uint32_t*>(scratch_floats(size_t(nt) * Q8K_INFO * nb));
        for (int t = 0; t < nt; t++) {
            const block_q8_K* b = reinterpret_cast<const block_q8_K*>(ab + t * as);
            for (int64_t i = 0; i < nb; i++) {
                uint32_t* info = act + (size_t(t) * nb + i) * Q8K_INFO;
                std::memcpy(&info[0], &b[i].d, 4);
                int32_t sums[8];
                for (int j = 0; j < 8; j++) sums[j] = int32_t(b[i].bsums[2 * j]) + int32_t(b[i].bsums[2 * j + 1]);
                info[1] = pair16(sums[0], sums[2]);
                info[2] = pair16(sums[1], sums[3]);
                info[3] = pair16(sums[4], sums[6]);
                info[4] = pair16(sums[5], sums[7]);
            }
        }
        for (int r = 0; r < full; r += LANES)
            for (int t = 0; t < nt; t += MAX_TOKENS)
                rows16_q4_K_tokens(std::min(MAX_TOKENS, nt - t), nb, wb + r * ws, ws, ab + t * as, as,
                                   act + size_t(t) * Q8K_INFO * nb, y + t * ys + r, ys);
    }
    for (int r = gathers ? full : 0; r < nr; r++)
        for (int t = 0; t < nt; t++)
            y[t * ys + r] = dot_row_q4_K(nb, reinterpret_cast<const block_q4_K*>(wb + r * ws),
                                         reinterpret_cast<const block_q8_K*>(ab + t * as));
}

}  // namespace

bool quant_rows16_avx512_kernels(QuantKernels* k) {
    k->gemm[int(GgmlType::Q4_1)] = gemm_rows<Q4_1Rows, QK4_1>;
    k->vec_dot[int(GgmlType::Q4_1)] = vec_dot_rows<Q4_1Rows, QK4_1>;
    k->gemm[int(GgmlType::Q8_0)] = gemm_rows<Q8_0Rows, QK8_0>;
    k->vec_dot[int(GgmlType::Q8_0)] = vec_dot_rows<Q8_0Rows, QK8_0>;
    k->gemm[int(GgmlType::Q4_K)] = gemm_q4_K;
    k->vec_dot[int(GgmlType::Q4_K)] = vec_dot_q4_K;
    return true;
}

}  // namespace ffnskip

#else

namespace ffnskip {
bool quant_rows16_avx512_kernels(QuantKernels*) { return false; }
}  // namespace ffnskip

#endif
