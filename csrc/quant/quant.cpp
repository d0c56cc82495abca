// Type table, row sizes, fp16/bf16 helpers and the run-time choice of dot kernels.
#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "quant/quant-impl.h"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define FFNSKIP_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#include <immintrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace ffnskip {

// ---- type table -----------------------------------------------------------------

static const TypeTraits k_f32 = {"F32", 1, 4, GgmlType::F32};
static const TypeTraits k_f16 = {"F16", 1, 2, GgmlType::F16};
static const TypeTraits k_bf16 = {"BF16", 1, 2, GgmlType::BF16};
static const TypeTraits k_q4_0 = {"Q4_0", QK4_0, sizeof(block_q4_0), GgmlType::Q8_0};
static const TypeTraits k_q4_1 = {"Q4_1", QK4_1, sizeof(block_q4_1), GgmlType::Q8_1};
static const TypeTraits k_q5_0 = {"Q5_0", QK5_0, sizeof(block_q5_0), GgmlType::Q8_0};
static const TypeTraits k_q5_1 = {"Q5_1", QK5_1, sizeof(block_q5_1), GgmlType::Q8_1};
static const TypeTraits k_q8_0 = {"Q8_0", QK8_0, sizeof(block_q8_0), GgmlType::Q8_0};
// Q8_1 and Q8_K are activation formats: ggml pairs Q8_1 with itself but has no kernel
// for either as a weight; ours pair both with themselves so every type has a dot product.
static const TypeTraits k_q8_1 = {"Q8_1", QK8_1, sizeof(block_q8_1), GgmlType::Q8_1};
static const TypeTraits k_q2_K = {"Q2_K", QK_K, sizeof(block_q2_K), GgmlType::Q8_K};
static const TypeTraits k_q3_K = {"Q3_K", QK_K, sizeof(block_q3_K), GgmlType::Q8_K};
static const TypeTraits k_q4_K = {"Q4_K", QK_K, sizeof(block_q4_K), GgmlType::Q8_K};
static const TypeTraits k_q5_K = {"Q5_K", QK_K, sizeof(block_q5_K), GgmlType::Q8_K};
static const TypeTraits k_q6_K = {"Q6_K", QK_K, sizeof(block_q6_K), GgmlType::Q8_K};
static const TypeTraits k_q8_K = {"Q8_K", QK_K, sizeof(block_q8_K), GgmlType::Q8_K};

static const TypeTraits* traits_or_null(uint32_t raw) {
    switch (raw) {
        case 0: return &k_f32;
        case 1: return &k_f16;
        case 2: return &k_q4_0;
        case 3: return &k_q4_1;
        case 6: return &k_q5_0;
        case 7: return &k_q5_1;
        case 8: return &k_q8_0;
        case 9: return &k_q8_1;
        case 10: return &k_q2_K;
        case 11: return &k_q3_K;
        case 12: return &k_q4_K;
        case 13: return &k_q5_K;
        case 14: return &k_q6_K;
        case 15: return &k_q8_K;
        case 30: return &k_bf16;
        default: return nullptr;
    }
}

bool type_is_supported(uint32_t raw) { return traits_or_null(raw) != nullptr; }

const char* type_name(uint32_t raw) {
    if (const TypeTraits* t = traits_or_null(raw)) return t->name;
    // ggml numbers this engine cannot load (4, 5 and 31..33, 36..38 were removed from ggml)
    static const char* const names[] = {
        nullptr, nullptr, nullptr, nullptr, "Q4_2", "Q4_3", nullptr, nullptr,          // 0-7
        nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,        // 8-15
        "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",  // 16-23
        "I8", "I16", "I32", "I64", "F64", "IQ1_M", nullptr, "Q4_0_4_4",                // 24-31
        "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8",          // 32-37
        "IQ4_NL_8_8", "MXFP4", "NVFP4", "Q1_0",                                         // 38-41
    };
    if (raw < sizeof(names) / sizeof(names[0]) && names[raw]) return names[raw];
    // "type N" for numbers ggml does not define; one buffer per thread keeps it reentrant
    thread_local char buf[32];
    std::snprintf(buf, sizeof(buf), "type %u", raw);
    return buf;
}

const TypeTraits& type_traits(GgmlType type) {
    const TypeTraits* t = traits_or_null(uint32_t(type));
    if (!t) throw std::invalid_argument("unsupported tensor type " + std::string(type_name(uint32_t(type))));
    return *t;
}

size_t row_size(GgmlType type, int64_t n) {
    const TypeTraits& t = type_traits(type);
    if (n < 0 || n % t.block_size != 0) {
        throw std::invalid_argument(std::string("row of ") + std::to_string(n) + " elements is not a multiple of the " +
                                    t.name + " block size " + std::to_string(t.block_size));
    }
    return size_t(n / t.block_size) * t.type_size;
}

// ---- fp16 / bf16 ------------------------------------------------------------------

float fp16_to_fp32(uint16_t h) { return half_to_float(h); }
uint16_t fp32_to_fp16(float f) { return float_to_half(f); }
float bf16_to_fp32(uint16_t h) { return bf16_bits_to_float(h); }
uint16_t fp32_to_bf16(float f) { return float_to_bf16(f); }

// ---- run-time dispatch ----------------------------------------------------------------

// AVX2 kernels need AVX2, FMA and F16C from CPUID and the OS saving YMM state (XCR0
// bits 1 and 2): CPUID alone says what the chip has, not what the OS enabled.
static bool cpu_has_avx2() {
#if defined(FFNSKIP_X86)
#if defined(_MSC_VER)
    int r[4];
    __cpuid(r, 0);
    if (r[0] < 7) return false;
    __cpuid(r, 1);
    const unsigned ecx1 = unsigned(r[2]);
    if (!(ecx1 & (1u << 27)) || !(ecx1 & (1u << 28)) || !(ecx1 & (1u << 12)) || !(ecx1 & (1u << 29))) return false;
    if ((_xgetbv(0) & 0x6) != 0x6) return false;
    __cpuidex(r, 7, 0);
    return (unsigned(r[1]) & (1u << 5)) != 0;
#else
    unsigned eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid(1, eax, ebx, ecx, edx);
    const bool osxsave = ecx & (1u << 27), avx = ecx & (1u << 28);
    const bool fma = ecx & (1u << 12), f16c = ecx & (1u << 29);
    if (!osxsave || !avx || !fma || !f16c) return false;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0x6) != 0x6) return false;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    return (ebx & (1u << 5)) != 0;
#endif
#else
    return false;
#endif
}

struct Dispatch {
    QuantKernels ref;    // scalar reference
    QuantKernels best;   // best of this CPU, scalar where no SIMD version exists
    const char* level;
};

static const Dispatch& dispatch() {
    static const Dispatch d = [] {
        Dispatch r;
        quant_ref_kernels(&r.ref);
        r.best = r.ref;
        r.level = "scalar";
        if (cpu_has_avx2() && quant_avx2_kernels(&r.best)) r.level = "avx2";
        return r;
    }();
    return d;
}

static std::atomic<bool> g_force_scalar{false};

bool set_force_scalar(bool force) { return g_force_scalar.exchange(force); }

const char* simd_level() { return g_force_scalar.load(std::memory_order_relaxed) ? "scalar" : dispatch().level; }

static VecDotFn pick(const QuantKernels& k, GgmlType wtype) {
    const uint32_t i = uint32_t(wtype);
    if (i >= uint32_t(TYPE_TABLE_SIZE) || !k.vec_dot[i]) {
        throw std::invalid_argument("no dot product for tensor type " + std::string(type_name(i)));
    }
    return k.vec_dot[i];
}

VecDotFn vec_dot_fn(GgmlType wtype) {
    const Dispatch& d = dispatch();
    return pick(g_force_scalar.load(std::memory_order_relaxed) ? d.ref : d.best, wtype);
}

GemmFn gemm_fn(GgmlType wtype) {
    const uint32_t i = uint32_t(wtype);
    if (i >= uint32_t(TYPE_TABLE_SIZE) || g_force_scalar.load(std::memory_order_relaxed)) return nullptr;
    return dispatch().best.gemm[i];
}

void quantize_row(GgmlType type, const float* src, void* dst, int64_t n) {
    const uint32_t i = uint32_t(type);
    const QuantizeFn fn = i < uint32_t(TYPE_TABLE_SIZE) && !g_force_scalar.load(std::memory_order_relaxed)
                              ? dispatch().best.quantize[i] : nullptr;
    if (!fn) return quantize_row_reference(type, src, dst, n);
    row_size(type, n);   // checks n
    fn(src, dst, n);
}

// These two check n; the kernels from vec_dot_fn trust their caller.
float vec_dot(GgmlType wtype, int64_t n, const void* w, const void* a) {
    row_size(wtype, n);
    return vec_dot_fn(wtype)(n, w, a);
}

float vec_dot_reference(GgmlType wtype, int64_t n, const void* w, const void* a) {
    row_size(wtype, n);
    return pick(dispatch().ref, wtype)(n, w, a);
}

}  // namespace ffnskip
