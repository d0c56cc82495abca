# Compiler flags shared by every ffnskip target.
function(ffnskip_apply_flags target)
  if(MSVC)
    return()
  endif()
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter
                         $<$<CONFIG:Release>:-O3>)
  if(FFNSKIP_NATIVE)
    # AMX is listed by CPUID on some virtual machines that cannot run it.
    target_compile_options(${target} PRIVATE -march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
  endif()
  if(FFNSKIP_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# Files named *-avx2.cpp hold kernels compiled for AVX2+FMA+F16C, *-avx512.cpp for
# AVX-512 F/BW/VL/DQ + VNNI (and AVX2+FMA+F16C); they are only called after a run-time
# CPU check, so the rest of the library stays portable.
function(ffnskip_simd_sources target)
  get_target_property(sources ${target} SOURCES)
  foreach(src IN LISTS sources)
    if(src MATCHES "-avx2\\.cpp$")
      set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
    elseif(src MATCHES "-avx512\\.cpp$")
      set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mavx2;-mfma;-mf16c")
    endif()
    # Block formats (csrc/quant) round every float operation as written: the scalar
    # decoder is bit-exact against gguf's numpy one, and a contracted multiply-add (the
    # GNU default once FMA is enabled, e.g. -march=native) rounds once instead of twice.
    # SIMD kernels there still use FMA where they call it explicitly.
    if(NOT MSVC AND src MATCHES "/csrc/quant/[^/]*\\.cpp$")
      set_property(SOURCE ${src} APPEND PROPERTY COMPILE_OPTIONS "-ffp-contract=off")
    endif()
  endforeach()
endfunction()
