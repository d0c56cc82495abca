// The tiled matrix-product driver shared by the SIMD files (quant-avx2.cpp,
// quant-avx512.cpp): plain templates over a tile kernel, no intrinsics here.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ffnskip {

// ---- tiled products: R weight rows x C tokens share each block's loads ------------------
//
// Every output has one float accumulator, updated block by block in block order (plus,
// for Q4_1, the minimum term), and the same instructions make each update whatever the
// tile shape: so a 4x2 tile, a 1x2 tile and the single dot product (a 1x1 tile) give
// identical bits for the same pair, and a batch of tokens computes what one token does.
//
// A tile kernel K has ROWS x COLS (its largest tile) and run<R, C>(nb, w, ws, a, as, y, ys),
// which writes y[c * ys + r] for R weight rows ws bytes apart times C activation rows
// as bytes apart, nb blocks long.


// R rows times all nt tokens, COLS at a time, the last few with a narrower tile.
template <class K, int R>
static void tile_row_strip(int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, int nt, float* y,
                           size_t ys) {
    int t = 0;
    for (; t + K::COLS <= nt; t += K::COLS) K::template run<R, K::COLS>(nb, w, ws, a + t * as, as, y + t * ys, ys);
    // Batches of a few sequences end here: 4 and 2 tokens at a time still share each
    // weight load, where one at a time would be slower than a single-token product.
    if constexpr (K::COLS > 4)
        if (nt - t >= 4) { K::template run<R, 4>(nb, w, ws, a + t * as, as, y + t * ys, ys); t += 4; }
    if constexpr (K::COLS > 2)
        if (nt - t >= 2) { K::template run<R, 2>(nb, w, ws, a + t * as, as, y + t * ys, ys); t += 2; }
    for (; t < nt; t++) K::template run<R, 1>(nb, w, ws, a + t * as, as, y + t * ys, ys);
}

// The rows left over (fewer than ROWS): one strip of exactly `left` rows.
template <class K, int R>
static void tile_tail_rows(int left, int64_t nb, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, int nt,
                           float* y, size_t ys) {
    if constexpr (R >= 1) {
        if (left == R) return tile_row_strip<K, R>(nb, w, ws, a, as, nt, y, ys);
        tile_tail_rows<K, R - 1>(left, nb, w, ws, a, as, nt, y, ys);
    }
}

// The whole nr x nt product. One token (decode) goes a row at a time: weights come from
// memory once either way, and one sequential stream runs about twice as fast as several
// interleaved rows (row lengths of 600+ bytes defeat the hardware prefetcher).
template <class K>
static void gemm_tiled(int64_t nb, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y,
                       size_t ys) {
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    if (nt == 1) {
        for (int r = 0; r < nr; r++) K::template run<1, 1>(nb, wb + r * ws, ws, ab, as, y + r, ys);
        return;
    }
    int r = 0;
    for (; r + K::ROWS <= nr; r += K::ROWS) tile_row_strip<K, K::ROWS>(nb, wb + r * ws, ws, ab, as, nt, y + r, ys);
    if (r < nr) tile_tail_rows<K, K::ROWS - 1>(nr - r, nb, wb + r * ws, ws, ab, as, nt, y + r, ys);
}

template <class K>
static float tile_dot(int64_t nb, const void* w, const void* a) {
    float y;
    K::template run<1, 1>(nb, static_cast<const uint8_t*>(w), 0, static_cast<const uint8_t*>(a), 0, &y, 0);
    return y;
}

// GemmFn / VecDotFn of a tile kernel over blocks of qk elements.
template <class K, int qk>
static void gemm_blocks(int64_t n, const void* w, size_t ws, int nr, const void* a, size_t as, int nt, float* y, size_t ys) {
    gemm_tiled<K>(n / qk, w, ws, nr, a, as, nt, y, ys);
}
template <class K, int qk>
static float dot_blocks(int64_t n, const void* w, const void* a) { return tile_dot<K>(n / qk, w, a); }

}  // namespace ffnskip
