#!/usr/bin/env bash
# Runs the engine under AddressSanitizer + UndefinedBehaviorSanitizer:
#   1. configures build/sanitize with -DFFNSKIP_SANITIZE=ON (gcc unless CC/CXX say otherwise),
#   2. runs the C++ test binary (leak checking on),
#   3. installs the Python module from that build into build/sanitize/stage (the
#      developer module in python/ffnskip is left alone) and runs a pytest subset with
#      libasan preloaded, since python itself is not built with ASan.
# Usage: scripts/sanitize-tests.sh [pytest arguments]   (default: the bad-input tests)
# Any sanitizer report stops the run with a non-zero exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${FFNSKIP_SANITIZE_BUILD:-$root/build/sanitize}
stage=$build/stage
python=${PYTHON:-$(command -v python3)}
export CC=${CC:-gcc} CXX=${CXX:-g++}

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

# SKBUILD=ON makes the module an install() target instead of a file written into the
# source tree, so the sanitized module never replaces the developer one.
cmake -S "$root" -B "$build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFFNSKIP_SANITIZE=ON -DFFNSKIP_TESTS=ON -DFFNSKIP_PYTHON=ON -DSKBUILD=ON \
    -DFFNSKIP_CUDA=OFF \
    -DPython_EXECUTABLE="$python" \
    -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)"
cmake --build "$build"

rm -rf "$stage"
cmake --install "$build" --prefix "$stage" >/dev/null
cp "$root"/python/ffnskip/*.py "$stage/ffnskip/"
ls "$stage"/ffnskip/_core*.so >/dev/null

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Python's own allocations at exit look like leaks to LSan: leak checking is for the
# C++ binary only.
if [ -x "$build/ffnskip_tests" ]; then
    echo "== ffnskip_tests (ASan + UBSan + LSan)"
    # a tiny random-weight model, so the loading and generation checks run too
    "$python" -c "import sys; sys.path.insert(0, sys.argv[1]); import synthetic; synthetic.write_llama_gguf(sys.argv[2], n_ctx=64)" \
        "$root/tests" "$build/test-model.gguf"
    FFNSKIP_TEST_MODEL=$build/test-model.gguf ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$build/ffnskip_tests"
fi

# libasan must come first; libstdc++ too, since python does not load it and ASan
# resolves the real __cxa_throw when it starts (else the first C++ throw aborts).
libasan=$("$CXX" -print-file-name=libasan.so)
libstdcxx=$("$CXX" -print-file-name=libstdc++.so)
for lib in "$libasan" "$libstdcxx"; do
    if [ ! -e "$lib" ]; then
        echo "cannot find $lib for $CXX" >&2
        exit 1
    fi
done
echo "== pytest with $libasan and $libstdcxx preloaded"
if [ $# -eq 0 ]; then
    set -- "$root/tests/test_bad_input.py" -q
fi
cd "$root"
LD_PRELOAD="$libasan $libstdcxx" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0 \
PYTHONPATH=$stage${PYTHONPATH:+:$PYTHONPATH} \
    "$python" -m pytest -p no:cacheprovider "$@"
