#!/usr/bin/env bash
# Builds fuzz_gguf (libFuzzer + ASan + UBSan, clang) and runs a fixed number of
# executions from the seed corpus. Any finding (crash, sanitizer report, timeout,
# out-of-memory) or fewer executions than asked fails the run.
# Usage: tests/fuzz/run-libfuzzer.sh [RUNS]   (default 100000; CI runs the default)
# Environment: FUZZ_CXX / FUZZ_CC (default: the newest clang found), FUZZ_BUILD (build/fuzz).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-100000}
build=${FUZZ_BUILD:-$root/build/fuzz}
python=${PYTHON:-$(command -v python3)}

newest() {   # clang++, else the newest clang++-N
    local name
    for name in "$1" "$1"-{30..11}; do
        if command -v "$name" >/dev/null; then echo "$name"; return; fi
    done
}
cxx=${FUZZ_CXX:-$(newest clang++)}
cc=${FUZZ_CC:-$(newest clang)}
if [ -z "$cxx" ] || [ -z "$cc" ]; then
    echo "libFuzzer needs clang (e.g. apt-get install clang libclang-rt-14-dev); none found" >&2
    exit 1
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
CC=$cc CXX=$cxx cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFFNSKIP_FUZZ=ON -DFFNSKIP_PYTHON=OFF -DFFNSKIP_TESTS=OFF -DFFNSKIP_CUDA=OFF \
    "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" >/dev/null
cmake --build "$build" --target fuzz_gguf

work=$build/work
rm -rf "$work" "$build/artifacts"
mkdir -p "$work" "$build/artifacts"
# the seeds (a hand-made image with every value type, nested arrays, two tiny models)
# (the in-tree module when one is built there, else the installed package)
if compgen -G "$root/python/ffnskip/_core*.so" >/dev/null; then
    export PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
fi
"$python" "$root/tests/fuzz/atheris_gguf.py" --make-corpus "$work"

log=$build/fuzz.log
start=$(date +%s)
status=0
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1 \
    "$build/fuzz_gguf" -runs="$runs" -max_len=100000 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/" "$work" >"$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - start ))
tail -25 "$log"
done_runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
if [ "$status" -ne 0 ]; then
    echo "fuzz_gguf failed (exit $status); the input is in $build/artifacts/" >&2
    exit "$status"
fi
if [ -z "$done_runs" ] || [ "$done_runs" -lt "$runs" ]; then
    echo "fuzz_gguf ran ${done_runs:-0} executions, fewer than $runs" >&2
    exit 1
fi
echo "== fuzz_gguf: $done_runs executions in ${elapsed} s, no finding"
