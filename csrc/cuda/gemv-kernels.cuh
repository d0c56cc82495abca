// Every supported format is decoded in units of 32 consecutive weights of a row (one
// block of the 32-element formats, one sub-block of the 256-element K-quants). A
// matrix-vector product gives each row to one warp; lane i takes units i, i + 32, ...
// so neighbouring lanes read neighbouring bytes. Values are formed as the reference
// decoder (quant-ref.cpp) forms them: scale products in float, then times the quant.
//
// The kernels of the decode products, de-quantization and embedding rows, included by
// the gemv-*.cu files, each instantiating its types (FFNSKIP_GEMV_INSTANTIATE).
#pragma once

#include "cuda/cuda-common.cuh"
#include "cuda/gemv-impl.cuh"
#include "cuda/launch.cuh"

namespace ffnskip {
namespace cuda {
namespace gemv_detail {

__device__ __forceinline__ float half_at(const uint8_t* p) {
    // Every half in a block sits at an even offset of a row that starts 256-byte aligned.
    return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}

__device__ __forceinline__ uint32_t u32_at(const uint8_t* p) {
    return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// Q4_K: 6-bit scale and min of sub-block j from the 12 packed bytes.
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// The two 16-bit values (F16 or BF16) packed in a word, as floats.
template <GgmlType T>
__device__ __forceinline__ float2 pair_to_float2(uint32_t word) {
    if constexpr (T == GgmlType::F16) return __half22float2(*reinterpret_cast<const __half2*>(&word));
    else return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&word));
}

// Unit u (weights 32u .. 32u + 31) of a row, decoded into w.
template <GgmlType T>
__device__ __forceinline__ void load_unit(const uint8_t* row, int64_t u, float (&w)[UNIT]) {
    if constexpr (T == GgmlType::F32) {
        const float4* p = reinterpret_cast<const float4*>(row) + u * 8;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float4 v = p[i];
            w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
        }
    } else if constexpr (T == GgmlType::F16 || T == GgmlType::BF16) {
        const uint4* p = reinterpret_cast<const uint4*>(row) + u * 4;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 v = p[i];
            const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 f = pair_to_float2<T>(words[j]);
                w[8 * i + 2 * j] = f.x; w[8 * i + 2 * j + 1] = f.y;
            }
        }
    } else if constexpr (T == GgmlType::Q8_0) {       // {f16 d; int8 qs[32]}
        const uint8_t* b = row + u * 34;
        const float d = half_at(b);
        const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
#pragma unroll
        for (int i = 0; i < 32; i++) w[i] = d * float(qs[i]);
    } else if constexpr (T == GgmlType::Q4_0) {       // {f16 d; u8 qs[16]}
        const uint8_t* b = row + u * 18;
        const float d = half_at(b);
        const uint8_t* qs = b + 2;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            w[j] = d * float((qs[j] & 0xF) - 8);
            w[j + 16] = d * float((qs[j] >> 4) - 8);
        }
    } else if constexpr (T == GgmlType::Q4_1) {       // {f16 d; f16 m; u8 qs[16]}
        const uint8_t* b = row + u * 20;
        const float d = half_at(b), m = half_at(b + 2);
        const uint8_t* qs = b + 4;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            w[j] = d * float(qs[j] & 0xF) + m;
            w[j + 16] = d * float(qs[j] >> 4) + m;
        }
    } else if constexpr (T == GgmlType::Q5_0) {       // {f16 d; u8 qh[4]; u8 qs[16]}
        const uint8_t* b = row + u * 22;
        const float d = half_at(b);
        const uint32_t qh = u32_at(b + 2);
        const uint8_t* qs = b + 6;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            w[j] = d * float(lo - 16);
            w[j + 16] = d * float(hi - 16);
        }
    } else if constexpr (T == GgmlType::Q5_1) {       // {f16 d; f16 m; u8 qh[4]; u8 qs[16]}
        const uint8_t* b = row + u * 24;
        const float d = half_at(b), m = half_at(b + 2);
        const uint32_t qh = u32_at(b + 4);
        const uint8_t* qs = b + 8;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            w[j] = d * float(lo) + m;
            w[j + 16] = d * float(hi) + m;
        }
    } else if constexpr (T == GgmlType::Q4_K) {
        // {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: sub-block s is nibble s%2 of
        // qs[32 (s/2) + l].
        const uint8_t* b = row + (u / 8) * 144;
        const int s = (int)(u % 8);
        const float d = half_at(b), dmin = half_at(b + 2);
        int sc, m;
        scale_min_k4(s, b + 4, &sc, &m);
        const float d1 = d * float(sc), m1 = dmin * float(m);
        const uint8_t* q = b + 16 + 32 * (s / 2);
        const int shift = 4 * (s % 2);
#pragma unroll
        for (int l = 0; l < 32; l++) w[l] = d1 * float((q[l] >> shift) & 0xF) - m1;
    } else if constexpr (T == GgmlType::Q6_K) {
        // {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: element 128h + 32k + l takes
        // nibble k/2 of ql[64h + 32(k%2) + l] and bits 2k of qh[32h + l], minus 32.
        const uint8_t* b = row + (u / 8) * 210;
        const int s = (int)(u % 8), h = s / 4, k = s % 4;
        const float d = half_at(b + 208);
        const uint8_t* ql = b + 64 * h + 32 * (k % 2);
        const uint8_t* qh = b + 128 + 32 * h;
        const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
        const float d_lo = d * float(scales[2 * s]), d_hi = d * float(scales[2 * s + 1]);
#pragma unroll
        for (int l = 0; l < 32; l++) {
            const int lo = (ql[l] >> (4 * (k / 2))) & 0xF;
            const int hi = (qh[l] >> (2 * k)) & 3;
            w[l] = (l < 16 ? d_lo : d_hi) * float((lo | (hi << 4)) - 32);
        }
    }
}

// ---- matrix-vector products --------------------------------------------------------
//
// A block of MV_WARPS warps takes ROWS consecutive rows per warp, all of one matrix of
// the launch (a launch fuses up to three matrices that read the same x). Two work
// splits keep a warp's loads contiguous:
// - dense types (F32, F16, BF16): lane i takes elements 8i .. 8i+7 of every 256-element
//   chunk, so a warp reads 256 consecutive weights and x values per step;
// - block types: lane i takes 32-element units i, i+32, ... (neighbouring lanes read
//   neighbouring blocks) and x is staged once per block in shared memory, each unit
//   padded by 16 bytes so that the lanes' 16-byte reads hit distinct banks. x is staged
//   as F16, or for Q4_K and Q8_0 (Q8X) as 8-bit integers with one scale per unit, as
//   llama.cpp's Q8_0 activations, so that the dot products are integer (dp4a): a float
//   dot product costs about five instructions per weight, more than the memory allows.
// Each row of a warp shares the x values loaded for it; the last warp of a matrix
// repeats its last row rather than branching inside the loop.

template <GgmlType T>
__host__ __device__ constexpr bool dense_type() { return T == GgmlType::F32 || T == GgmlType::F16 || T == GgmlType::BF16; }

template <GgmlType T>
__host__ __device__ constexpr bool has_q8x() { return T == GgmlType::Q4_K || T == GgmlType::Q8_0; }

template <GgmlType T>
__host__ __device__ constexpr bool has_split() { return T == GgmlType::F16 || T == GgmlType::BF16; }

// Eight weights at element e (a multiple of 8) of a dense row.
template <GgmlType T>
__device__ __forceinline__ void load8(const uint8_t* row, int64_t e, float (&w)[8]) {
    if constexpr (T == GgmlType::F32) {
        const float4* p = reinterpret_cast<const float4*>(row) + e / 4;
        const float4 a = p[0], b = p[1];
        w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w; w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
    } else {
        const uint4 v = *(reinterpret_cast<const uint4*>(row) + e / 8);
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 f = pair_to_float2<T>(words[j]);
            w[2 * j] = f.x; w[2 * j + 1] = f.y;
        }
    }
}

// 0..255 in byte b of v as a float, without an int-to-float conversion (a quarter-rate
// instruction): 2^23 + v in the mantissa, minus 2^23.
__device__ __forceinline__ float byte_to_float(uint32_t v, int b) {
    return __int_as_float((int)__byte_perm(v, 0x4B000000u, 0x7650u + b)) - 8388608.0f;
}

// Q4_K sub-block s of the block at b: d * scale and dmin * min, and the 32 quants'
// 8 words (nibble s%2 of qs[32 (s/2) + l], l = 0..31, 4 per word, low byte first).
__device__ __forceinline__ void q4k_unit(const uint8_t* b, int s, float* d1, float* m1, uint32_t (&nib)[8]) {
    // {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}, 16-byte aligned.
    const uint4 head = *reinterpret_cast<const uint4*>(b);
    const uint4* qv = reinterpret_cast<const uint4*>(b + 16 + 32 * (s / 2));
    const uint4 q0 = qv[0], q1 = qv[1];
    const uint32_t hw[3] = {head.y, head.z, head.w};   // the 12 scale bytes
    auto sbyte = [&](int k) -> int { const uint32_t w = k < 4 ? hw[0] : (k < 8 ? hw[1] : hw[2]); return (w >> (8 * (k & 3))) & 0xFF; };
    int sc, m;
    if (s < 4) {
        sc = sbyte(s) & 63;
        m = sbyte(s + 4) & 63;
    } else {
        sc = (sbyte(s + 4) & 0xF) | ((sbyte(s - 4) >> 6) << 4);
        m = (sbyte(s + 4) >> 4) | ((sbyte(s) >> 6) << 4);
    }
    *d1 = __half2float(__ushort_as_half((unsigned short)(head.x & 0xFFFF))) * float(sc);
    *m1 = __half2float(__ushort_as_half((unsigned short)(head.x >> 16))) * float(m);
    const int shift = 4 * (s % 2);
    const uint32_t words[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
    for (int j = 0; j < 8; j++) nib[j] = (words[j] >> shift) & 0x0F0F0F0Fu;
}

// Dot product of unit u of a row with x (32 floats, x_sum their sum).
template <GgmlType T>
__device__ __forceinline__ float unit_dot(const uint8_t* row, int64_t u, const float (&x)[UNIT], float x_sum) {
    if constexpr (T == GgmlType::Q4_K) {
        // sum_l (d1 q_l - m1) x_l = d1 sum q_l x_l - m1 sum x_l
        float d1, m1;
        uint32_t nib[8];
        q4k_unit(row + (u / 8) * 144, (int)(u % 8), &d1, &m1, nib);
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) dot += byte_to_float(nib[j], k) * x[4 * j + k];
        return d1 * dot - m1 * x_sum;
    } else if constexpr (T == GgmlType::Q8_0) {
        // {f16 d; int8 qs[32]}: 2-byte aligned; q + 128 is a byte 0..255.
        const uint16_t* h = reinterpret_cast<const uint16_t*>(row + u * 34);
        const float d = __half2float(__ushort_as_half(h[0]));
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const uint32_t v = (uint32_t(h[1 + 2 * j]) | (uint32_t(h[2 + 2 * j]) << 16)) ^ 0x80808080u;
#pragma unroll
            for (int k = 0; k < 4; k++) dot += byte_to_float(v, k) * x[4 * j + k];
        }
        return d * (dot - 128.0f * x_sum);
    } else {
        float w[UNIT];
        load_unit<T>(row, u, w);
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < UNIT; i++) dot += w[i] * x[i];
        return dot;
    }
}

// The same with x as 8-bit integers xq (8 words of 4) times dx; sx = dx * sum of xq.
template <GgmlType T>
__device__ __forceinline__ float unit_dot_q8(const uint8_t* row, int64_t u, const int (&xq)[8], float dx, float sx) {
    if constexpr (T == GgmlType::Q4_K) {
        float d1, m1;
        uint32_t nib[8];
        q4k_unit(row + (u / 8) * 144, (int)(u % 8), &d1, &m1, nib);
        int sum = 0;
#pragma unroll
        for (int j = 0; j < 8; j++) sum = __dp4a((int)nib[j], xq[j], sum);
        return d1 * dx * float(sum) - m1 * sx;
    } else {   // Q8_0
        const uint16_t* h = reinterpret_cast<const uint16_t*>(row + u * 34);
        const float d = __half2float(__ushort_as_half(h[0]));
        int sum = 0;
#pragma unroll
        for (int j = 0; j < 8; j++) sum = __dp4a((int)(uint32_t(h[1 + 2 * j]) | (uint32_t(h[2 + 2 * j]) << 16)), xq[j], sum);
        return d * dx * float(sum);
    }
}

template <GgmlType T, int NR>
__device__ __forceinline__ void dense_dots(const uint8_t* const (&rows)[NR], int64_t n_in, const float* __restrict__ x,
                                           int lane, float (&acc)[NR]) {
#pragma unroll 4
    for (int64_t e = 8 * lane; e < n_in; e += 256) {
        const float4 xa = *reinterpret_cast<const float4*>(x + e), xb = *reinterpret_cast<const float4*>(x + e + 4);
        const float xv[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
        for (int r = 0; r < NR; r++) {
            float w[8];
            load8<T>(rows[r], e, w);
#pragma unroll
            for (int i = 0; i < 8; i++) acc[r] += w[i] * xv[i];
        }
    }
}

// The split rows' path for the 16-bit dense types: the block's threads take elements
// 8t .. 8t + 7 of every (8 x blockDim)-element chunk, and each thread has the weights of
// DEPTH chunks in flight before it multiplies (streaming loads: weights are read once).
template <GgmlType T, int NR>
__device__ __forceinline__ void dense_dots_batched(const uint8_t* const (&rows)[NR], int64_t n_in,
                                                   const float* __restrict__ x, int64_t first, int64_t stride,
                                                   float (&acc)[NR]) {
    static_assert(T == GgmlType::F16 || T == GgmlType::BF16, "16-bit weights only");
    constexpr int DEPTH = NR <= 2 ? 4 : 2;
    auto fma8 = [&](const uint4& wv, int64_t e, float& a) {
        const float4 xa = *reinterpret_cast<const float4*>(x + e), xb = *reinterpret_cast<const float4*>(x + e + 4);
        const float xv[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
        const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 f = pair_to_float2<T>(words[j]);
            a += f.x * xv[2 * j];
            a += f.y * xv[2 * j + 1];
        }
    };
    int64_t e = first;
    for (; e + (DEPTH - 1) * stride < n_in; e += DEPTH * stride) {
        uint4 w[DEPTH][NR];
#pragma unroll
        for (int d = 0; d < DEPTH; d++)
#pragma unroll
            for (int r = 0; r < NR; r++) w[d][r] = __ldcs(reinterpret_cast<const uint4*>(rows[r]) + (e + d * stride) / 8);
#pragma unroll
        for (int d = 0; d < DEPTH; d++)
#pragma unroll
            for (int r = 0; r < NR; r++) fma8(w[d][r], e + d * stride, acc[r]);
    }
    for (; e < n_in; e += stride)
#pragma unroll
        for (int r = 0; r < NR; r++) fma8(__ldcs(reinterpret_cast<const uint4*>(rows[r]) + e / 8), e, acc[r]);
}

template <GgmlType T, int NR>
__device__ __forceinline__ void block_dots(const uint8_t* const (&rows)[NR], int64_t n_in, const __half* xs, int lane,
                                           float (&acc)[NR]) {
    const int64_t n_units = n_in / UNIT;
#pragma unroll 2
    for (int64_t u = lane; u < n_units; u += 32) {
        const uint4* xp = reinterpret_cast<const uint4*>(xs + u * XS_UNIT);
        float xv[UNIT];
        float x_sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 v = xp[i];
            const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[j]));
                xv[8 * i + 2 * j] = f.x;
                xv[8 * i + 2 * j + 1] = f.y;
                x_sum += f.x + f.y;
            }
        }
#pragma unroll
        for (int r = 0; r < NR; r++) acc[r] += unit_dot<T>(rows[r], u, xv, x_sum);
    }
}

// x staged as 8-bit units: xq (n_units, XQ_UNIT bytes), then dx (n_units), then sx (n_units).
template <GgmlType T, int NR>
__device__ __forceinline__ void block_dots_q8(const uint8_t* const (&rows)[NR], int64_t n_in, const uint8_t* xs,
                                              int lane, float (&acc)[NR]) {
    const int64_t n_units = n_in / UNIT;
    const float* dxs = reinterpret_cast<const float*>(xs + n_units * XQ_UNIT);
    const float* sxs = dxs + n_units;
#pragma unroll 2
    for (int64_t u = lane; u < n_units; u += 32) {
        const uint4* xp = reinterpret_cast<const uint4*>(xs + u * XQ_UNIT);
        const uint4 v0 = xp[0], v1 = xp[1];
        const int xq[8] = {(int)v0.x, (int)v0.y, (int)v0.z, (int)v0.w, (int)v1.x, (int)v1.y, (int)v1.z, (int)v1.w};
        const float dx = dxs[u], sx = sxs[u];
#pragma unroll
        for (int r = 0; r < NR; r++) acc[r] += unit_dot_q8<T>(rows[r], u, xq, dx, sx);
    }
}

// x's RMSNorm scale, 1 / sqrt(mean(x^2) + eps), computed by the whole block as
// rmsnorm_kernel (norm.cu) computes it: squares summed in double.
__device__ __forceinline__ float rms_scale(const float* __restrict__ x, int64_t n, float eps) {
    __shared__ double scratch[32];
    const float4* x4 = reinterpret_cast<const float4*>(x);
    double sum = 0.0;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
        const float4 v = x4[i];
        sum += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    sum = block_sum(sum, scratch);
    return 1.0f / sqrtf((float)(sum / (double)n) + eps);
}

// Four values of x at x4[i], normalized when NORM: (x * scale) * w, as rmsnorm_kernel.
template <bool NORM>
__device__ __forceinline__ float4 x_at(const float4* __restrict__ x4, int64_t i, const float* __restrict__ norm_w,
                                       float scale) {
    const float4 v = x4[i];
    if constexpr (!NORM) return v;
    const float4 g = reinterpret_cast<const float4*>(norm_w)[i];
    return make_float4((v.x * scale) * g.x, (v.y * scale) * g.y, (v.z * scale) * g.z, (v.w * scale) * g.w);
}

// x into shared memory as floats, normalized (the dense types' SWIGLU_NORM).
__device__ __forceinline__ void stage_f32_norm(const float* __restrict__ x, int64_t n_in, const float* norm_w,
                                               float scale, float* xs) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n_in / 4; i += blockDim.x)
        reinterpret_cast<float4*>(xs)[i] = x_at<true>(x4, i, norm_w, scale);
}

// x into shared memory as F16 units (normalized first when NORM).
template <bool NORM>
__device__ __forceinline__ void stage_f16(const float* __restrict__ x, int64_t n_in, const float* norm_w, float scale,
                                          __half* xs) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int64_t n4 = n_in / 4;
#pragma unroll 8
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = x_at<NORM>(x4, i, norm_w, scale);
        __half2* d = reinterpret_cast<__half2*>(xs + (i / 8) * XS_UNIT + (i % 8) * 4);
        d[0] = __floats2half2_rn(v.x, v.y);
        d[1] = __floats2half2_rn(v.z, v.w);
    }
}

// x into shared memory as 8-bit units, as llama.cpp quantizes to Q8_0: dx = max|x| / 127,
// q = round(x / dx). Eight consecutive lanes hold one unit's 32 values (blockDim and
// the unit count keep whole groups of 8 together). Normalized first when NORM.
template <bool NORM>
__device__ __forceinline__ void stage_q8(const float* __restrict__ x, int64_t n_in, const float* norm_w, float scale,
                                         uint8_t* xs) {
    const int64_t n_units = n_in / UNIT;
    float* dxs = reinterpret_cast<float*>(xs + n_units * XQ_UNIT);
    float* sxs = dxs + n_units;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int64_t n4 = n_in / 4;
    const unsigned group = 0xFFu << (threadIdx.x & 24);
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = x_at<NORM>(x4, i, norm_w, scale);
        float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
        amax = fmaxf(amax, __shfl_xor_sync(group, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(group, amax, 2));
        amax = fmaxf(amax, __shfl_xor_sync(group, amax, 4));
        const float dx = amax / 127.0f;
        const float inv = dx != 0.0f ? 1.0f / dx : 0.0f;
        const int q0 = __float2int_rn(v.x * inv), q1 = __float2int_rn(v.y * inv);
        const int q2 = __float2int_rn(v.z * inv), q3 = __float2int_rn(v.w * inv);
        int qsum = q0 + q1 + q2 + q3;
        qsum += __shfl_xor_sync(group, qsum, 1);
        qsum += __shfl_xor_sync(group, qsum, 2);
        qsum += __shfl_xor_sync(group, qsum, 4);
        const int64_t u = i / 8;
        *reinterpret_cast<uint32_t*>(xs + u * XQ_UNIT + (i % 8) * 4) =
            (uint32_t)(q0 & 0xFF) | ((uint32_t)(q1 & 0xFF) << 8) | ((uint32_t)(q2 & 0xFF) << 16) | ((uint32_t)(q3 & 0xFF) << 24);
        if (i % 8 == 0) {
            dxs[u] = dx;
            sxs[u] = dx * (float)qsum;
        }
    }
}

// Lane 0's results for rows r0 .. r0 + ROWS - 1 of matrix m, stored as a.qkv says (MV_QKV).
template <int ROWS>
__device__ __forceinline__ void store_rows(const MatvecArgs& a, int m, int64_t r0, int n_valid, const float (&acc)[ROWS]) {
    // Selected, not indexed: a run-time index into the parameter block puts it on the stack.
    const RowStore how = m == 0 ? a.qkv.store[0] : m == 1 ? a.qkv.store[1] : a.qkv.store[2];
    if (how == RowStore::FLOAT) {
#pragma unroll
        for (int r = 0; r < ROWS; r++)
            if (r < n_valid) a.y[m][r0 + r] = acc[r];
        return;
    }
    // Q, K, V rows come in whole pairs: n_out and r0 are even.
    const RopeParams rp = a.qkv.rope;
    const int p = *a.qkv.pos;
#pragma unroll
    for (int r = 0; r < ROWS; r += 2) {
        if (r >= n_valid) break;
        const int64_t row = r0 + r;
        float x0 = acc[r], x1 = acc[r + 1];
        const int d = (int)(row % rp.head_dim);
        if (how != RowStore::CACHE && d < rp.n_rot) {
            float c, s;
            rope_angle(p, d / 2, rp, &c, &s);
            const float r0v = x0 * c - x1 * s, r1v = x0 * s + x1 * c;
            x0 = r0v;
            x1 = r1v;
        }
        if (how == RowStore::ROPE_FLOAT) {
            a.y[m][row] = x0;
            a.y[m][row + 1] = x1;
        } else {
            __half* cache = m == 0 ? a.qkv.cache[0] : m == 1 ? a.qkv.cache[1] : a.qkv.cache[2];
            __half* dst = cache + (int64_t)p * a.n_out[m] + row;
            dst[0] = __float2half_rn(x0);
            dst[1] = __float2half_rn(x1);
        }
    }
}

// SPLIT (16-bit dense types): the block's warps share ROWS rows, each taking a quarter
// of every row, and add their sums in shared memory; more warps per row keep more loads
// in flight when a matrix has few rows.
template <GgmlType T, int MODE, int ROWS, bool Q8X, bool SPLIT>
__global__ void __launch_bounds__(32 * MV_WARPS) matvec_kernel(const MatvecArgs a, const float* __restrict__ x) {
    wait_for_inputs();
    const int m = (int)blockIdx.x >= a.block_start[1] ? ((int)blockIdx.x >= a.block_start[2] ? 2 : 1) : 0;
    if (skipped(a.skip[m])) return;   // the whole block belongs to matrix m
    constexpr bool SWIGLU = MODE == MV_SWIGLU || MODE == MV_SWIGLU_NORM;
    constexpr bool NORM = MODE == MV_SWIGLU_NORM;
    float scale = 1.0f;   // NORM: x's RMSNorm scale, before any thread of the block returns
    if constexpr (NORM) scale = rms_scale(x, a.n_in, a.norm_eps);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t r0 = SPLIT ? (int64_t)(blockIdx.x - a.block_start[m]) * ROWS
                             : ((int64_t)(blockIdx.x - a.block_start[m]) * MV_WARPS + warp) * ROWS;
    const int64_t left = a.n_out[m] - r0;
    const int n_valid = left <= 0 ? 0 : (left < ROWS ? (int)left : ROWS);

    constexpr int NR = SWIGLU ? 2 * ROWS : ROWS;   // SWIGLU: rows ROWS.. are W_1's
    const uint8_t* rows[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const int mm = SWIGLU ? r / ROWS : m;
        const int64_t rr = r0 + (SWIGLU ? r % ROWS : r);
        rows[r] = a.W[mm] + (size_t)(rr < a.n_out[m] ? rr : a.n_out[m] - 1) * a.row_bytes;
    }
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;

    extern __shared__ uint4 xs_raw[];
    const float* xd = x;   // what the dense products read: x, or normalized x in shared memory
    if constexpr (dense_type<T>() && NORM) {
        stage_f32_norm(x, a.n_in, a.norm_w, scale, reinterpret_cast<float*>(xs_raw));
        __syncthreads();
        xd = reinterpret_cast<const float*>(xs_raw);
    }
    if constexpr (SPLIT) {
        static_assert(T == GgmlType::F16 || T == GgmlType::BF16, "split rows: 16-bit dense types only");
        if (n_valid == 0) return;   // the same for the whole block
        dense_dots_batched<T, NR>(rows, a.n_in, xd, 8 * threadIdx.x, 8 * blockDim.x, acc);
    } else if constexpr (dense_type<T>()) {
        if (n_valid == 0) return;
        dense_dots<T, NR>(rows, a.n_in, xd, lane, acc);
    } else if constexpr (Q8X) {
        uint8_t* xs = reinterpret_cast<uint8_t*>(xs_raw);
        stage_q8<NORM>(x, a.n_in, a.norm_w, scale, xs);
        __syncthreads();
        if (n_valid == 0) return;
        block_dots_q8<T, NR>(rows, a.n_in, xs, lane, acc);
    } else {
        __half* xs = reinterpret_cast<__half*>(xs_raw);
        stage_f16<NORM>(x, a.n_in, a.norm_w, scale, xs);
        __syncthreads();
        if (n_valid == 0) return;
        block_dots<T, NR>(rows, a.n_in, xs, lane, acc);
    }
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = warp_sum(acc[r]);
    if constexpr (SPLIT) {
        __shared__ float part[MV_WARPS][NR];
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < NR; r++) part[warp][r] = acc[r];
        __syncthreads();
        if (threadIdx.x != 0) return;
#pragma unroll
        for (int r = 0; r < NR; r++) {
            float sum = 0.0f;
#pragma unroll
            for (int w = 0; w < MV_WARPS; w++) sum += part[w][r];
            acc[r] = sum;
        }
    } else if (lane != 0) {
        return;
    }
    if constexpr (MODE == MV_QKV) {
        store_rows<ROWS>(a, m, r0, n_valid, acc);
    } else {
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            if (r >= n_valid) break;
            if constexpr (MODE == MV_STORE) a.y[m][r0 + r] = acc[r];
            else if constexpr (MODE == MV_ACCUMULATE) a.y[m][r0 + r] += acc[r];
            else {
                const float g = acc[r], up = acc[ROWS + r];
                a.y[0][r0 + r] = g / (1.0f + expf(-g)) * up;
            }
        }
    }
}

// One thread per unit of the tile.
template <GgmlType T>
__global__ void dequant_f16_kernel(const uint8_t* W, size_t row_bytes, int64_t n_in, int64_t row0, int64_t n_rows,
                                   __half* __restrict__ out) {
    const int64_t units_per_row = n_in / UNIT;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n_rows * units_per_row) return;
    const int64_t r = idx / units_per_row, u = idx % units_per_row;
    float w[UNIT];
    load_unit<T>(W + (size_t)(row0 + r) * row_bytes, u, w);
    __half* o = out + r * n_in + u * UNIT;
#pragma unroll
    for (int i = 0; i < UNIT; i++) o[i] = __float2half_rn(w[i]);
}

template <GgmlType T>
__global__ void embed_kernel(const uint8_t* W, size_t row_bytes, int64_t n_in, const int32_t* tokens, int n,
                             float* __restrict__ out) {
    wait_for_inputs();
    const int64_t units_per_row = n_in / UNIT;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * units_per_row) return;
    const int64_t t = idx / units_per_row, u = idx % units_per_row;
    float w[UNIT];
    load_unit<T>(W + (size_t)tokens[t] * row_bytes, u, w);
    float* o = out + t * n_in + u * UNIT;
#pragma unroll
    for (int i = 0; i < UNIT; i++) o[i] = w[i];
}

inline unsigned blocks_for(int64_t n, int per_block) { return (unsigned)((n + per_block - 1) / per_block); }

template <GgmlType T, int ROWS, bool Q8X, bool SPLIT>
void launch_matvec_as(const MatvecArgs& a, const float* x, int mode, unsigned blocks, const Launch& l) {
    const size_t smem = matvec_smem(T, a.n_in, Q8X, mode == MV_SWIGLU_NORM);
    if (mode == MV_STORE) launch(l, matvec_kernel<T, MV_STORE, ROWS, Q8X, SPLIT>, blocks, 32 * MV_WARPS, smem, a, x);
    else if (mode == MV_QKV) launch(l, matvec_kernel<T, MV_QKV, ROWS, Q8X, SPLIT>, blocks, 32 * MV_WARPS, smem, a, x);
    else if (mode == MV_ACCUMULATE) launch(l, matvec_kernel<T, MV_ACCUMULATE, ROWS, Q8X, SPLIT>, blocks, 32 * MV_WARPS, smem, a, x);
    else if (mode == MV_SWIGLU) launch(l, matvec_kernel<T, MV_SWIGLU, ROWS, Q8X, SPLIT>, blocks, 32 * MV_WARPS, smem, a, x);
    else launch(l, matvec_kernel<T, MV_SWIGLU_NORM, ROWS, Q8X, SPLIT>, blocks, 32 * MV_WARPS, smem, a, x);
}

template <GgmlType T>
void launch_matvec_t(const MatvecArgs& a, const float* x, int mode, unsigned blocks, const Launch& l) {
    if constexpr (has_q8x<T>()) {
        if (uses_q8x(T, l)) {
            if (l.mv_rows == 4) launch_matvec_as<T, 4, true, false>(a, x, mode, blocks, l);
            else launch_matvec_as<T, 2, true, false>(a, x, mode, blocks, l);
            return;
        }
    }
    if constexpr (has_split<T>()) {
        if (splits_rows(T, l)) {
            if (l.mv_rows == 4) launch_matvec_as<T, 4, false, true>(a, x, mode, blocks, l);
            else launch_matvec_as<T, 2, false, true>(a, x, mode, blocks, l);
            return;
        }
    }
    if (l.mv_rows == 4) launch_matvec_as<T, 4, false, false>(a, x, mode, blocks, l);
    else launch_matvec_as<T, 2, false, false>(a, x, mode, blocks, l);
}

template <typename Kernel>
void set_smem_limit(Kernel kernel, int bytes) {
    FFNSKIP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <GgmlType T, int ROWS, bool Q8X, bool SPLIT>
void set_smem_limit_as(int bytes) {
    if constexpr (!dense_type<T>()) {   // the dense types stage x only with the norm folded in
        set_smem_limit(matvec_kernel<T, MV_STORE, ROWS, Q8X, SPLIT>, bytes);
        set_smem_limit(matvec_kernel<T, MV_QKV, ROWS, Q8X, SPLIT>, bytes);
        set_smem_limit(matvec_kernel<T, MV_ACCUMULATE, ROWS, Q8X, SPLIT>, bytes);
        set_smem_limit(matvec_kernel<T, MV_SWIGLU, ROWS, Q8X, SPLIT>, bytes);
    }
    set_smem_limit(matvec_kernel<T, MV_SWIGLU_NORM, ROWS, Q8X, SPLIT>, bytes);
}

template <GgmlType T>
void set_smem_limit_t(int bytes) {
    set_smem_limit_as<T, 2, false, false>(bytes);
    set_smem_limit_as<T, 4, false, false>(bytes);
    if constexpr (has_q8x<T>()) {
        set_smem_limit_as<T, 2, true, false>(bytes);
        set_smem_limit_as<T, 4, true, false>(bytes);
    }
    if constexpr (has_split<T>()) {
        set_smem_limit_as<T, 2, false, true>(bytes);
        set_smem_limit_as<T, 4, false, true>(bytes);
    }
}

template <GgmlType T>
void dequantize_rows_t(const DeviceMatrix& W, int64_t row0, int64_t n_rows, __half* out, cudaStream_t stream) {
    dequant_f16_kernel<T><<<blocks_for(n_rows * (W.n_in / UNIT), 256), 256, 0, stream>>>(W.data, W.row_bytes, W.n_in,
                                                                                          row0, n_rows, out);
    FFNSKIP_CUDA_LAUNCHED();
}

template <GgmlType T>
void embed_rows_t(const DeviceMatrix& W, const int32_t* tokens, int n, float* out, const Launch& l) {
    launch(l, embed_kernel<T>, blocks_for((int64_t)n * (W.n_in / UNIT), 256), 256, 0, W.data, W.row_bytes, W.n_in,
           tokens, n, out);
}

}  // namespace gemv_detail
}  // namespace cuda
}  // namespace ffnskip

// Explicit instantiation of one type's entry points (inside namespace gemv_detail).
#define FFNSKIP_GEMV_INSTANTIATE(T)                                                                         \
    template void launch_matvec_t<T>(const MatvecArgs&, const float*, int, unsigned, const Launch&);         \
    template void set_smem_limit_t<T>(int);                                                                  \
    template void dequantize_rows_t<T>(const DeviceMatrix&, int64_t, int64_t, __half*, cudaStream_t);        \
    template void embed_rows_t<T>(const DeviceMatrix&, const int32_t*, int, float*, const Launch&);
