"""Decode speed after prompts of several lengths: two or more ffnskip builds (and
llama.cpp) side by side.

Each measurement is a fresh process: load the model, evaluate a prompt of N token ids
in one call, then time 32 single-token steps (fixed ids, no sampling). Rounds cycle
through the engines (A B C A B C ...) so that a change in machine load hits all of
them alike; the median of the rounds is reported. Compare builds only within one run.

    python3 bench/bench_context.py MODEL.gguf --builds BASE_CHECKOUT NEW_CHECKOUT \\
        --prompts 16 500 1500 --threads 1 2 --llama-cpp

A build is a checkout whose python/ holds a built ffnskip (python/ffnskip/_core*.so).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

STEPS = 32

FFNSKIP_CODE = """
import sys, time, ffnskip
model, n, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = ffnskip.Session(model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512)
ids = [100 + (i * 7919) % (s.model.n_vocab - 200) for i in range(n)]
s.eval(ids)
t = time.perf_counter()
for i in range(steps): s.eval([100 + i])
print(steps / (time.perf_counter() - t))
"""

LLAMA_CPP_CODE = """
import sys, time, llama_cpp
model, n, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads,
                      n_threads_batch=threads, verbose=False)
ids = [100 + (i * 7919) % (llm.n_vocab() - 200) for i in range(n)]
for i in range(0, n, 512): llm.eval(ids[i:i + 512])
t = time.perf_counter()
for i in range(steps): llm.eval([100 + i])
print(steps / (time.perf_counter() - t))
"""


def run_once(engine: str, model: str, n: int, threads: int) -> float:
    env = dict(os.environ)
    if engine == "llama.cpp":
        code = LLAMA_CPP_CODE
    else:
        code = FFNSKIP_CODE
        env["PYTHONPATH"] = os.path.join(engine, "python")
    out = subprocess.run([sys.executable, "-c", code, model, str(n), str(threads), str(STEPS)],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{engine} N={n} threads={threads} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--builds", nargs="+", default=["."], help="checkouts with a built python/ffnskip")
    ap.add_argument("--prompts", nargs="+", type=int, default=[16, 500, 1500])
    ap.add_argument("--threads", nargs="+", type=int, default=[1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama-cpp", action="store_true", help="also measure llama.cpp (llama-cpp-python)")
    args = ap.parse_args()

    engines = list(args.builds) + (["llama.cpp"] if args.llama_cpp else [])
    print(f"model {os.path.basename(args.model)}, {STEPS} decode steps after the prompt, "
          f"median of {args.rounds} fresh processes (tok/s)")
    print(f"{'threads':>7} {'prompt':>6}  " + "  ".join(f"{e[-24:]:>24}" for e in engines))
    for threads in args.threads:
        for n in args.prompts:
            res: dict[str, list[float]] = {e: [] for e in engines}
            for _ in range(args.rounds):
                for e in engines:
                    res[e].append(run_once(e, args.model, n, threads))
            cells = [f"{statistics.median(res[e]):6.1f} ({' '.join(f'{v:.1f}' for v in res[e])})" for e in engines]
            print(f"{threads:>7} {n:>6}  " + "  ".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
