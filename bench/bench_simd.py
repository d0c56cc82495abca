"""ffnskip's CPU SIMD paths side by side: the same files, prompts and thread counts with
the kernels forced to each path by FFNSKIP_CPU_SIMD (default: avx2 and avx512).

    python bench/bench_simd.py [--levels avx2 avx512] [--formats Q4_1 Q8_0 F16 Q4_K_M]
                               [--threads 1 2] [--reps 3] [--markdown F.md]

One worker process per path (bench/worker.py, as bench_speed.py uses); per (file,
threads) both load the file, run one warm-up of each measurement, then the paths
alternate A B A B for --reps rounds; medians are reported, with each path's speed
relative to the first one.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_speed as bs  # noqa: E402


def run_config(path: pathlib.Path, threads: int, levels: list[str], args) -> dict:
    bs.warm_page_cache(path)
    workers = {}
    for lv in levels:
        env = bs.worker_env()
        env["FFNSKIP_CPU_SIMD"] = lv
        w = bs.Worker("ffnskip", env)
        r = w.hello if "error" in w.hello else w.request(op="load", model=str(path), threads=threads,
                                                          n_ctx=args.n_ctx, load_reps=1)
        if "error" in r:
            raise RuntimeError(f"{lv}: {r['error']}")
        if f"cpu simd: {lv}" not in r.get("version", ""):
            raise RuntimeError(f"{lv}: the worker runs {r.get('version')!r}")
        workers[lv] = w
    first = workers[levels[0]]
    prompt_ids = first.request(op="tokenize", text=bs.PROMPT_TEXT * (4 * args.prompt_tokens // 60 + 4))["ids"]
    prompt_ids = prompt_ids[:args.prompt_tokens]
    decode_ids = first.request(op="tokenize", text=bs.DECODE_PROMPT)["ids"]
    samples = {lv: {"prompt": [], "decode": [], "prompt_cpu": [], "decode_cpu": []} for lv in levels}
    tokens = {}

    def measure(lv: str, op: str) -> tuple[float, float]:
        w = workers[lv]
        r = (w.request(op="prompt", ids=prompt_ids) if op == "prompt" else
             w.request(op="decode", ids=decode_ids, n=args.decode_tokens))
        if "error" in r:
            raise RuntimeError(f"{lv} {op}: {r['error']}")
        if op == "decode":
            tokens[lv] = r["tokens"]
        # tokens per wall second, and per CPU second of the worker (less sensitive to other
        # processes taking the cores; on one thread the two agree on a quiet machine)
        return r["n"] / r["seconds"], r["n"] / r["cpu_seconds"]

    for lv in levels:
        for op in ("prompt", "decode"):
            measure(lv, op)
    for _ in range(args.reps):
        for op in ("decode", "prompt"):
            for lv in levels:
                wall, cpu = measure(lv, op)
                samples[lv][op].append(wall)
                samples[lv][op + "_cpu"].append(cpu)
    for w in workers.values():
        w.close()
    res = {"format": bs.format_name(path), "threads": threads, "levels": {}}
    for lv in levels:
        res["levels"][lv] = {op: bs.median(samples[lv][op]) for op in samples[lv]}
    ref = tokens[levels[0]]
    res["greedy_agree"] = {lv: next((i for i, (a, b) in enumerate(zip(ref, t)) if a != b), min(len(ref), len(t)))
                           for lv, t in tokens.items()}
    return res


def markdown(results: list[dict], levels: list[str], args) -> str:
    base = levels[0]
    head = "| format | threads | " + " | ".join(
        f"decode {lv} | prompt {lv}" for lv in levels) + " | " + " | ".join(
        f"{lv}/{base} decode | {lv}/{base} prompt" for lv in levels[1:]) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        v = r["levels"]
        cells = [r["format"], str(r["threads"])]
        for lv in levels:
            cells += [f"{v[lv]['decode']:.1f}", f"{v[lv]['prompt']:.1f}"]
        for lv in levels[1:]:
            cells += [f"{v[lv]['decode'] / v[base]['decode']:.2f}", f"{v[lv]['prompt'] / v[base]['prompt']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"tok/s, medians of {args.reps} alternating rounds; prompt {args.prompt_tokens} tokens, "
                 f"decode {args.decode_tokens} tokens.")
    lines.append("")
    lines.append("Per CPU second of the worker (tokens / CPU seconds; on a busy machine closer to what "
                 "the kernels do than wall time):")
    lines.append("")
    head = "| format | threads | " + " | ".join(f"{lv}/{base} decode | {lv}/{base} prompt" for lv in levels[1:]) + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        v = r["levels"]
        cells = [r["format"], str(r["threads"])]
        for lv in levels[1:]:
            cells += [f"{v[lv]['decode_cpu'] / v[base]['decode_cpu']:.2f}",
                      f"{v[lv]['prompt_cpu'] / v[base]['prompt_cpu']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", nargs="+", default=["avx2", "avx512"], choices=["scalar", "avx2", "avx512"])
    p.add_argument("--models", nargs="+", type=pathlib.Path)
    p.add_argument("--formats", nargs="+", default=["Q4_1", "Q8_0", "F16", "Q4_K_M"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--markdown", type=pathlib.Path)
    args = p.parse_args(argv)
    models = args.models or bs.default_models(args.formats)
    results = []
    for path in models:
        for t in args.threads:
            t0 = time.perf_counter()
            r = run_config(path, t, args.levels, args)
            results.append(r)
            cells = "  ".join(f"{lv}: decode {v['decode']:.1f} prompt {v['prompt']:.1f}" for lv, v in r["levels"].items())
            bs.log(f"{r['format']} x{t}: {cells}  greedy agree {r['greedy_agree']}  ({time.perf_counter() - t0:.0f} s)")
    text = markdown(results, args.levels, args)
    text += f"\nCPU: {bs.cpu_model()}, load average {os.getloadavg()[0]:.1f} at the end.\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
