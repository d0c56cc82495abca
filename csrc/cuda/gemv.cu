// Every supported format is decoded in units of 32 consecutive weights of a row (one
// block of the 32-element formats, one sub-block of the 256-element K-quants). A
// matrix-vector product gives each row to one warp; lane i takes units i, i + 32, ...
// so neighbouring lanes read neighbouring bytes. Values are formed as the reference
// decoder (quant-ref.cpp) forms them: scale products in float, then times the quant.
#include "cuda/gemv.cuh"

#include "cuda/cuda-common.cuh"

namespace ffnskip {
namespace cuda {

namespace {

constexpr int UNIT = 32;

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
    } else if constexpr (T == GgmlType::F16) {
        const uint4* p = reinterpret_cast<const uint4*>(row) + u * 4;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 v = p[i];
            const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 f = __half22float2(h[j]);
                w[8 * i + 2 * j] = f.x; w[8 * i + 2 * j + 1] = f.y;
            }
        }
    } else if constexpr (T == GgmlType::BF16) {
        const uint4* p = reinterpret_cast<const uint4*>(row) + u * 4;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 v = p[i];
            const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 f = __bfloat1622float2(h[j]);
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

// One warp per output row, 4 rows per block.
constexpr int MATVEC_WARPS = 4;

template <GgmlType T>
__global__ void matvec_kernel(const uint8_t* W, size_t row_bytes, int64_t n_in, int64_t n_out,
                              const float* __restrict__ x, float* __restrict__ y, const int* skip) {
    if (skipped(skip)) return;
    const int lane = threadIdx.x % 32;
    const int64_t r = (int64_t)blockIdx.x * MATVEC_WARPS + threadIdx.x / 32;
    if (r >= n_out) return;
    const uint8_t* row = W + (size_t)r * row_bytes;
    const int64_t n_units = n_in / UNIT;
    float acc = 0.0f;
    for (int64_t u = lane; u < n_units; u += 32) {
        float w[UNIT];
        load_unit<T>(row, u, w);
        const float4* xv = reinterpret_cast<const float4*>(x + u * UNIT);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float4 a = xv[i];
            acc += w[4 * i] * a.x + w[4 * i + 1] * a.y + w[4 * i + 2] * a.z + w[4 * i + 3] * a.w;
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[r] = acc;
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

// Calls F.template operator()<T>() for the matrix's type.
template <typename F>
void dispatch(GgmlType type, F&& f) {
    switch (type) {
        case GgmlType::F32: f.template operator()<GgmlType::F32>(); break;
        case GgmlType::F16: f.template operator()<GgmlType::F16>(); break;
        case GgmlType::BF16: f.template operator()<GgmlType::BF16>(); break;
        case GgmlType::Q8_0: f.template operator()<GgmlType::Q8_0>(); break;
        case GgmlType::Q4_0: f.template operator()<GgmlType::Q4_0>(); break;
        case GgmlType::Q4_1: f.template operator()<GgmlType::Q4_1>(); break;
        case GgmlType::Q5_0: f.template operator()<GgmlType::Q5_0>(); break;
        case GgmlType::Q5_1: f.template operator()<GgmlType::Q5_1>(); break;
        case GgmlType::Q4_K: f.template operator()<GgmlType::Q4_K>(); break;
        case GgmlType::Q6_K: f.template operator()<GgmlType::Q6_K>(); break;
        default: throw Error(std::string("CUDA backend: no kernel for tensor type ") + type_traits(type).name);
    }
}

unsigned blocks_for(int64_t n, int per_block) { return (unsigned)((n + per_block - 1) / per_block); }

}  // namespace

bool matrix_type_supported(GgmlType type) {
    switch (type) {
        case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
        case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1:
        case GgmlType::Q4_K: case GgmlType::Q6_K:
            return true;
        default:
            return false;
    }
}

namespace {
struct MatvecLaunch {
    const DeviceMatrix& W; const float* x; float* y; const int* skip; cudaStream_t s;
    template <GgmlType T> void operator()() const {
        matvec_kernel<T><<<blocks_for(W.n_out, MATVEC_WARPS), 32 * MATVEC_WARPS, 0, s>>>(W.data, W.row_bytes, W.n_in, W.n_out, x, y, skip);
    }
};
struct DequantLaunch {
    const DeviceMatrix& W; int64_t row0, n_rows; __half* out; cudaStream_t s;
    template <GgmlType T> void operator()() const {
        dequant_f16_kernel<T><<<blocks_for(n_rows * (W.n_in / UNIT), 256), 256, 0, s>>>(W.data, W.row_bytes, W.n_in, row0, n_rows, out);
    }
};
struct EmbedLaunch {
    const DeviceMatrix& W; const int32_t* tokens; int n; float* out; cudaStream_t s;
    template <GgmlType T> void operator()() const {
        embed_kernel<T><<<blocks_for((int64_t)n * (W.n_in / UNIT), 256), 256, 0, s>>>(W.data, W.row_bytes, W.n_in, tokens, n, out);
    }
};
}  // namespace

void matvec(const DeviceMatrix& W, const float* x, float* y, const int* skip, cudaStream_t stream) {
    dispatch(W.type, MatvecLaunch{W, x, y, skip, stream});
    FFNSKIP_CUDA_LAUNCHED();
}

void dequantize_rows_f16(const DeviceMatrix& W, int64_t row0, int64_t n_rows, __half* out, cudaStream_t stream) {
    dispatch(W.type, DequantLaunch{W, row0, n_rows, out, stream});
    FFNSKIP_CUDA_LAUNCHED();
}

void embed_rows(const DeviceMatrix& W, const int32_t* tokens, int n, float* out, cudaStream_t stream) {
    dispatch(W.type, EmbedLaunch{W, tokens, n, out, stream});
    FFNSKIP_CUDA_LAUNCHED();
}

}  // namespace cuda
}  // namespace ffnskip
