# CUDA backend. FFNSKIP_CUDA=AUTO builds it when nvcc and cuBLAS are found and otherwise
# builds CPU-only, printing why; ON stops with the reason; OFF never looks.
#
# cuBLAS comes from the CUDA toolkit, or from the nvidia-cublas wheel (CUDA 13 wheels:
# site-packages/nvidia/cu13/{include,lib}) located with the build's Python, or from
# -DFFNSKIP_CUBLAS_ROOT=<folder with include/ and lib/>. Only its headers are needed to
# build: the library is opened with dlopen when a CUDA session starts (csrc/cuda/
# cublas-dl.cpp), and the CUDA runtime is linked statically, so the Python module
# imports on machines without a GPU, a driver or CUDA libraries.
#
# Sets FFNSKIP_CUDA_ENABLED, FFNSKIP_CUDA_REASON and, when enabled,
# FFNSKIP_CUBLAS_INCLUDE_DIR and FFNSKIP_CUBLAS_LIBRARY_DIR.
set(FFNSKIP_CUDA_ENABLED OFF)
set(FFNSKIP_CUDA_REASON "FFNSKIP_CUDA=OFF")
set(FFNSKIP_CUBLAS_ROOT "" CACHE PATH "Folder holding cuBLAS include/ and lib/ (default: the toolkit, then the nvidia-cublas wheel)")

if(NOT FFNSKIP_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "FFNSKIP_CUDA must be AUTO, ON or OFF, not '${FFNSKIP_CUDA}'")
endif()

if(NOT FFNSKIP_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    set(FFNSKIP_CUDA_REASON "no CUDA compiler (nvcc) found")
  else()
    # The toolkit beside nvcc: <root>/bin/nvcc.
    get_filename_component(_ffnskip_nvcc "${CMAKE_CUDA_COMPILER}" REALPATH)
    get_filename_component(_ffnskip_cuda_bin "${_ffnskip_nvcc}" DIRECTORY)
    get_filename_component(_ffnskip_cuda_root "${_ffnskip_cuda_bin}" DIRECTORY)
    set(_ffnskip_cublas_roots)
    if(FFNSKIP_CUBLAS_ROOT)
      list(APPEND _ffnskip_cublas_roots "${FFNSKIP_CUBLAS_ROOT}")
    endif()
    list(APPEND _ffnskip_cublas_roots "${_ffnskip_cuda_root}" "${_ffnskip_cuda_root}/targets/x86_64-linux"
                                      "${_ffnskip_cuda_root}/targets/sbsa-linux")
    # The wheel, as the Python the module is built for sees it.
    set(_ffnskip_python "${Python_EXECUTABLE}")
    if(NOT _ffnskip_python)
      find_program(_ffnskip_python NAMES python3 python)
    endif()
    if(_ffnskip_python)
      execute_process(
        COMMAND "${_ffnskip_python}" -c
                "import importlib.util as u\ns = u.find_spec('nvidia.cu13')\nprint(list(s.submodule_search_locations)[0] if s else '')"
        OUTPUT_VARIABLE _ffnskip_wheel_root OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _ffnskip_rc)
      if(_ffnskip_rc EQUAL 0 AND _ffnskip_wheel_root)
        list(APPEND _ffnskip_cublas_roots "${_ffnskip_wheel_root}")
      endif()
    endif()
    foreach(_root IN LISTS _ffnskip_cublas_roots)
      if(EXISTS "${_root}/include/cublas_v2.h")
        foreach(_libdir lib64 lib)
          if(EXISTS "${_root}/${_libdir}/libcublas.so.13")
            set(FFNSKIP_CUBLAS_INCLUDE_DIR "${_root}/include")
            set(FFNSKIP_CUBLAS_LIBRARY_DIR "${_root}/${_libdir}")
            break()
          endif()
        endforeach()
      endif()
      if(FFNSKIP_CUBLAS_INCLUDE_DIR)
        break()
      endif()
    endforeach()
    if(NOT FFNSKIP_CUBLAS_INCLUDE_DIR)
      set(FFNSKIP_CUDA_REASON "nvcc found (${CMAKE_CUDA_COMPILER}) but not cuBLAS 13 (cublas_v2.h and libcublas.so.13) in the toolkit nor in the nvidia-cublas wheel of ${_ffnskip_python}; pip install nvidia-cublas==13.1.0.3 and build with --no-build-isolation, or pass -DFFNSKIP_CUBLAS_ROOT=<folder>")
    else()
      set(FFNSKIP_CUDA_ENABLED ON)
      set(FFNSKIP_CUDA_REASON "nvcc ${CMAKE_CUDA_COMPILER}, cuBLAS from ${FFNSKIP_CUBLAS_LIBRARY_DIR}")
    endif()
  endif()
  if(FFNSKIP_CUDA STREQUAL "ON" AND NOT FFNSKIP_CUDA_ENABLED)
    message(FATAL_ERROR "FFNSKIP_CUDA=ON but the CUDA backend cannot be built: ${FFNSKIP_CUDA_REASON}")
  endif()
endif()

if(FFNSKIP_CUDA_ENABLED)
  # Hopper machine code, A100 machine code, and Hopper PTX that newer GPUs compile at load.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
    set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  set(FFNSKIP_CUDA_REASON "${FFNSKIP_CUDA_REASON}; architectures ${CMAKE_CUDA_ARCHITECTURES}")
endif()
message(STATUS "CUDA backend: ${FFNSKIP_CUDA_ENABLED} (${FFNSKIP_CUDA_REASON})")

# Adds the CUDA backend to the engine library `target` (an object library of its own,
# so the C++ warning flags of ffnskip_apply_flags never reach nvcc).
function(ffnskip_add_cuda_backend target)
  file(GLOB _sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/csrc/cuda/*.cu ${PROJECT_SOURCE_DIR}/csrc/cuda/*.cpp)
  add_library(ffnskip_cuda OBJECT ${_sources})
  set_target_properties(ffnskip_cuda PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON POSITION_INDEPENDENT_CODE ON)
  target_include_directories(ffnskip_cuda PRIVATE ${PROJECT_SOURCE_DIR}/csrc ${PROJECT_SOURCE_DIR}/csrc/include
                             ${FFNSKIP_CUBLAS_INCLUDE_DIR} ${CUDAToolkit_INCLUDE_DIRS})
  target_compile_options(ffnskip_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall -Xcompiler=-Wno-unused-parameter>
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
  target_sources(${target} PRIVATE $<TARGET_OBJECTS:ffnskip_cuda>)
  target_compile_definitions(${target} PRIVATE FFNSKIP_HAVE_CUDA)
  # The static runtime (CMake's default for CUDA code); cuBLAS is not linked (dlopen).
  target_link_libraries(${target} PRIVATE CUDA::cudart_static ${CMAKE_DL_LIBS})
endfunction()
