#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, nvcc and cuBLAS: build the extension with the CUDA
# backend, run the GPU tests, a memory check of a few of them, and the decode benchmark.
# Logs and results go to OUT_DIR.
#
#   scripts/gpu-check.sh OUT_DIR [bench seconds]
#
# Environment: PYTHON (default python3), CUDA_ARCH (default 90-real), BENCH_ARGS (extra
# arguments for bench/bench_cuda.py), FFNSKIP_GPU_TEST_MODEL (a GGUF for the real-model
# test when SmolLM2 cannot be fetched), STEPS (default "tests bench profile memcheck":
# the build always runs; leave steps out to fit a short device lease), PROFILE_TYPES,
# TESTS_K (a pytest -k expression selecting the GPU tests, e.g. "surrogate"); "batch" in
# STEPS adds batched decoding's benchmark on a 13B-shaped F16 model (BATCH_ARGS).
set -u
out=${1:?usage: scripts/gpu-check.sh OUT_DIR [bench seconds]}
bench_seconds=${2:-300}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PATH=$PATH:/usr/local/cuda/bin
py=${PYTHON:-python3}
t0=$(date +%s)
stamp() { echo "## $(( $(date +%s) - t0 )) s: $*"; }

stamp "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1

stamp "build"
if ! { cmake -S . -B build/gpu -G Ninja -DFFNSKIP_CUDA=ON -DFFNSKIP_TESTS=OFF \
        -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90-real}" -DPython_EXECUTABLE="$(command -v "$py")" \
        -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" &&
       cmake --build build/gpu -j "$(nproc)"; } > "$out/build.log" 2>&1; then
    tail -60 "$out/build.log"
    exit 1
fi
grep -E "CUDA backend|cuBLAS" "$out/build.log"
export PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH}
"$py" -c "import ffnskip; print(ffnskip.build_info()); print(ffnskip.available_backends())"

want() { case " ${STEPS:-tests bench profile memcheck} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if want tests; then
stamp "GPU tests"
"$py" -m pytest tests/test_cuda.py tests/test_cuda_batch.py ${TESTS_K:+-k "$TESTS_K"} -v -rfEs -p no:cacheprovider --timeout=120 2>&1 | tee "$out/tests.log" | \
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error|assert" | head -80
fi

if want tests; then
stamp "decode graph with conditional FFN nodes"
# The captured step of a small model as Graphviz: each FFN after layer 0 should be an IF
# node whose body holds its kernels.
FFNSKIP_CUDA_GRAPH_IF=1 FFNSKIP_CUDA_GRAPH_DOT="$out/decode-graph-if.dot" "$py" - <<'PY' 2>&1 | tail -5
import sys
import numpy as np
sys.path.insert(0, "bench")
import ffnskip
from random_model import write_model
write_model("/tmp/ffnskip-graph.gguf", (256, 4, 4, 768), "F16")
s = ffnskip.Session("/tmp/ffnskip-graph.gguf", n_ctx=64, backend="cuda")
s.eval([1, 2, 3])
print("decode step logits finite:", bool(np.isfinite(s.eval([4])).all()))
PY
ls -l "$out/decode-graph-if.dot" 2>&1; grep -ci "conditional" "$out/decode-graph-if.dot" 2>&1
fi

if want batch; then
stamp "batched decoding, 13B shape, F16"
# Aggregate tok/s of 1-16 sequences in one BatchSession against one Session's decode
# (target: 16 streams >= 8x one), skipping off and on.
"$py" bench/random_model.py --shape 13b --type F16 /tmp/ffnskip-13b-f16.gguf > /dev/null 2>&1
"$py" bench/bench_batch.py --model /tmp/ffnskip-13b-f16.gguf --backend cuda --threads 1 \
    ${BATCH_ARGS:---batch 1 2 4 8 16 --tokens 32 --reps 2 --skip ffn_skip} 2>&1 | tee "$out/batch.md"
rm -f /tmp/ffnskip-13b-f16.gguf
fi

if want bench; then
stamp "bench"
"$py" bench/bench_cuda.py --max-seconds "$bench_seconds" --json "$out/bench.json" --markdown "$out/bench.md" \
    ${BENCH_ARGS:-} 2>&1
fi

if want profile; then
stamp "profile"
# Each entry: TYPE, or TYPE,VAR=VALUE[,VAR=VALUE] to profile with decode settings.
for spec in ${PROFILE_TYPES:-F16 Q4_K Q4_K,FFNSKIP_CUDA_Q8X=1,FFNSKIP_CUDA_MV_ROWS=4}; do
    t=${spec%%,*}
    settings=""
    [ "$spec" != "$t" ] && settings=${spec#*,}
    name=$(echo "$spec" | tr ',=' '-_')
    env ${settings//,/ } timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
        "$py" bench/profile_cuda.py --type "$t" > "$out/kernels-$name.csv" 2> "/tmp/profile-$name.err"
    echo "ncu $spec exit $?"
    "$py" bench/profile_cuda.py --summarize "$out/kernels-$name.csv" 2>&1 | head -20
done
fi

if want memcheck; then
stamp "memcheck"
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$py" -m pytest tests/test_cuda.py -q -x \
    -p no:cacheprovider -k "odd_shapes and F16 or odd_shapes and Q4_1 or greedy_tokens and ffn_skip or 8bit_activations" \
    > "$out/memcheck.log" 2>&1
echo "memcheck exit $?"; grep -E "ERROR SUMMARY|Invalid|passed|failed" "$out/memcheck.log" | head -20
fi
stamp "done"
