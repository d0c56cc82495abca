// Type table, row sizes, fp16/bf16 helpers and the run-time choice of dot kernels.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

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

float* scratch_floats(size_t n) {
    thread_local std::vector<float> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// ---- run-time dispatch ----------------------------------------------------------------

// SIMD kernels need the CPU to have the instructions (CPUID) and the OS to save the
// registers they use (XCR0, read with XGETBV): CPUID alone says what the chip has, not
// what the OS enabled. AVX2 kernels need AVX2, FMA and F16C and YMM state (XCR0 bits 1,
// 2); AVX-512 kernels add AVX512 F/BW/VL/DQ and VNNI and the opmask/ZMM state (bits 5-7).
struct CpuFeatures {
    bool avx2 = false;
    bool avx512 = false;
};

static CpuFeatures detect_cpu() {
    CpuFeatures f;
#if defined(FFNSKIP_X86)
    unsigned r1[4], r7[4];
    unsigned long long xcr0 = 0;
#if defined(_MSC_VER)
    int r[4];
    __cpuid(r, 0);
    if (r[0] < 7) return f;
    __cpuid(r, 1);
    for (int i = 0; i < 4; i++) r1[i] = unsigned(r[i]);
    __cpuidex(r, 7, 0);
    for (int i = 0; i < 4; i++) r7[i] = unsigned(r[i]);
    if (r1[2] & (1u << 27)) xcr0 = _xgetbv(0);
#else
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid(1, r1[0], r1[1], r1[2], r1[3]);
    __cpuid_count(7, 0, r7[0], r7[1], r7[2], r7[3]);
    if (r1[2] & (1u << 27)) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
    }
#endif
    const unsigned ecx1 = r1[2], ebx7 = r7[1], ecx7 = r7[2];
    const bool osxsave = ecx1 & (1u << 27), avx = ecx1 & (1u << 28);
    const bool fma = ecx1 & (1u << 12), f16c = ecx1 & (1u << 29);
    const bool ymm_state = osxsave && (xcr0 & 0x6) == 0x6;
    f.avx2 = avx && fma && f16c && ymm_state && (ebx7 & (1u << 5));
    const bool zmm_state = osxsave && (xcr0 & 0xe6) == 0xe6;
    const bool avx512f = ebx7 & (1u << 16), avx512dq = ebx7 & (1u << 17);
    const bool avx512bw = ebx7 & (1u << 30), avx512vl = ebx7 & (1u << 31);
    const bool avx512vnni = ecx7 & (1u << 11);
    f.avx512 = f.avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl && avx512vnni;
#endif
    return f;
}

// Levels in order of preference; a level's table holds its own kernels and, where it has
// none for a type, those of the level below.
enum SimdLevel : int { LEVEL_SCALAR = 0, LEVEL_AVX2 = 1, LEVEL_AVX512 = 2, N_LEVELS = 3 };
static const char* const k_level_names[N_LEVELS] = {"scalar", "avx2", "avx512"};

static int level_from_name(const char* name) {
    for (int i = 0; i < N_LEVELS; i++)
        if (std::strcmp(name, k_level_names[i]) == 0) return i;
    return -1;
}

struct Dispatch {
    QuantKernels kernels[N_LEVELS];
    int best = LEVEL_SCALAR;      // the best this CPU and build can run
    int initial = LEVEL_SCALAR;   // best, or lower when FFNSKIP_CPU_SIMD asks for it
};

static const Dispatch& dispatch() {
    static const Dispatch d = [] {
        Dispatch r;
        quant_ref_kernels(&r.kernels[LEVEL_SCALAR]);
        for (int i = 1; i < N_LEVELS; i++) r.kernels[i] = r.kernels[LEVEL_SCALAR];
        const CpuFeatures cpu = detect_cpu();
        if (cpu.avx2 && quant_avx2_kernels(&r.kernels[LEVEL_AVX2])) {
            r.best = LEVEL_AVX2;
            r.kernels[LEVEL_AVX512] = r.kernels[LEVEL_AVX2];
            if (cpu.avx512 && quant_avx512_kernels(&r.kernels[LEVEL_AVX512])) r.best = LEVEL_AVX512;
        }
        r.initial = r.best;
        // FFNSKIP_CPU_SIMD=scalar|avx2|avx512 picks a lower path for A/B comparisons; a
        // level this CPU cannot run is refused with a note (a crash on an illegal
        // instruction would be worse).
        if (const char* env = std::getenv("FFNSKIP_CPU_SIMD"); env && *env) {
            const int want = level_from_name(env);
            if (want < 0) {
                std::fprintf(stderr, "ffnskip: FFNSKIP_CPU_SIMD=%s is not one of scalar, avx2, avx512; using %s\n", env,
                             k_level_names[r.best]);
            } else if (want > r.best) {
                std::fprintf(stderr, "ffnskip: FFNSKIP_CPU_SIMD=%s: this CPU or build cannot run it; using %s\n", env,
                             k_level_names[r.best]);
            } else {
                r.initial = want;
            }
        }
        return r;
    }();
    return d;
}

// The level in use; -1 until first asked (then dispatch().initial).
static std::atomic<int> g_level{-1};

static int current_level() {
    int l = g_level.load(std::memory_order_relaxed);
    if (l < 0) {
        int expected = -1;
        g_level.compare_exchange_strong(expected, dispatch().initial);
        l = g_level.load(std::memory_order_relaxed);
    }
    return l;
}

bool set_force_scalar(bool force) {
    const int prev = g_level.exchange(force ? int(LEVEL_SCALAR) : dispatch().initial);
    return (prev < 0 ? dispatch().initial : prev) == LEVEL_SCALAR;
}

const char* set_simd_level(const char* name) {
    const int want = level_from_name(name);
    if (want < 0) {
        throw std::invalid_argument(std::string("unknown SIMD level '") + name + "' (scalar, avx2 or avx512)");
    }
    if (want > dispatch().best) {
        throw std::invalid_argument(std::string("SIMD level ") + name + " is not supported by this CPU or build (best: " +
                                    k_level_names[dispatch().best] + ")");
    }
    const int prev = g_level.exchange(want);
    return k_level_names[prev < 0 ? dispatch().initial : prev];
}

std::vector<std::string> simd_levels() {
    std::vector<std::string> out;
    for (int i = 0; i <= dispatch().best; i++) out.push_back(k_level_names[i]);
    return out;
}

const char* simd_level() { return k_level_names[current_level()]; }

static const QuantKernels& current_kernels() { return dispatch().kernels[current_level()]; }

static VecDotFn pick(const QuantKernels& k, GgmlType wtype) {
    const uint32_t i = uint32_t(wtype);
    if (i >= uint32_t(TYPE_TABLE_SIZE) || !k.vec_dot[i]) {
        throw std::invalid_argument("no dot product for tensor type " + std::string(type_name(i)));
    }
    return k.vec_dot[i];
}

VecDotFn vec_dot_fn(GgmlType wtype) { return pick(current_kernels(), wtype); }

GemmFn gemm_fn(GgmlType wtype) {
    const uint32_t i = uint32_t(wtype);
    if (i >= uint32_t(TYPE_TABLE_SIZE)) return nullptr;
    return current_kernels().gemm[i];
}

void quantize_row(GgmlType type, const float* src, void* dst, int64_t n) {
    const uint32_t i = uint32_t(type);
    const QuantizeFn fn = i < uint32_t(TYPE_TABLE_SIZE) ? current_kernels().quantize[i] : nullptr;
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
    return pick(dispatch().kernels[LEVEL_SCALAR], wtype)(n, w, a);
}

}  // namespace ffnskip
