"""Decode speed of the CUDA backend against the memory-bandwidth roofline.

Run on a machine with a GPU, from the repository root, after building with CUDA:

    pip install --no-build-isolation --no-deps . && python bench/bench_cuda.py --json results.json

For each of LLaMA-2-7B and -13B shapes and each of F16, Q8_0, Q4_K it writes a
random-weight GGUF (one model on disk at a time, deleted after use), then measures
decode tokens/s with skipping off, with 25% of FFNs left out by a fixed layer list
(policy "layers") and by the on-device gate (policy "ffn_skip", threshold -1 so the
gate opens at its first layer every step). It prints, per run:
  roofline   = bandwidth / weight bytes read per token  (tokens/s)
  fraction   = measured / roofline                      (targets: F16 13B >= 0.85, Q4_K >= 0.60)
  skip gain  = (speed-up - 1) / (ideal speed-up - 1), where ideal = bytes full / bytes skipped
               (target >= 0.9: the skip turns at least 90% of the weight bytes it saves into time)
The bandwidth is measured first (a device-to-device copy and a read-only reduction
through PyTorch or CuPy when one is installed; else --bandwidth), and the higher of the
two is the roofline's. With --variants each model's dense decode is also measured
with other decode settings (VARIANTS: one launch per matrix; 4 rows per warp; F16 rows
shared by a block's warps; 8-bit activations for Q4_K and Q8_0; programmatic dependent
launch; RMSNorm in the gate kernel; RoPE and the KV store in the Q/K/V products; the
FFN's RMSNorm in the gate/up product; FFNs as
bodies of conditional graph nodes, measured with skipping too; all but the first together
with the split decode attention and the tiled prompt attention, measured with skipping and
the prompt too), to show what each choice gains. With
--context N the dense decode is also measured after an N-token prompt, where the KV
cache read per step counts in the roofline.
Weights are random: speed does not depend on values. Quantized blocks are random bytes
with small fp16 scales, as the tests make K-quant blocks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np

import checkout  # noqa: E402

checkout.use()   # a built checkout, else the installed ffnskip

import ffnskip  # noqa: E402
from random_model import BLOCKS, N_VOCAB, SHAPES, write_model  # noqa: E402

# Launch variants measured on the dense model with --variants (environment of the session).
VARIANTS = {
    "unfused": {"FFNSKIP_CUDA_FUSE": "0"},
    "rows4": {"FFNSKIP_CUDA_MV_ROWS": "4"},
    "split": {"FFNSKIP_CUDA_MV_SPLIT": "1"},
    "q8x": {"FFNSKIP_CUDA_Q8X": "1"},
    "pdl": {"FFNSKIP_CUDA_PDL": "1"},
    "norm": {"FFNSKIP_CUDA_FUSE_NORM": "1"},
    "rope": {"FFNSKIP_CUDA_FUSE_ROPE": "1"},
    "ffnnorm": {"FFNSKIP_CUDA_FUSE_FFN_NORM": "1"},
    "graphif": {"FFNSKIP_CUDA_GRAPH_IF": "1"},
}
# Every setting but "unfused" together, with the split decode and tiled prompt attention.
VARIANTS["all"] = {k: v for name, env in VARIANTS.items() if name != "unfused" for k, v in env.items()}
VARIANTS["all"].update(FFNSKIP_CUDA_ATTN_SPLIT="1", FFNSKIP_CUDA_ATTN_TILED="1")
Q8X_TYPES = ("Q4_K", "Q8_0")   # the types that FFNSKIP_CUDA_Q8X changes
SKIP_VARIANTS = ("graphif", "all")   # also measured with FFNs left out (the others: dense only)


def bytes_per_token(shape, type_name, skipped_ffns=0):
    """Weight bytes one decode step reads: every matrix but the embedding table (one row)."""
    n_embd, n_layer, _, n_ff = shape
    if type_name == "F16":
        per_elem = 2.0
    else:
        size, per = BLOCKS[type_name][:2]
        per_elem = size / per
    attn = 4 * n_embd * n_embd * per_elem
    ffn = 3 * n_embd * n_ff * per_elem
    return n_layer * attn + (n_layer - skipped_ffns) * ffn + N_VOCAB * n_embd * per_elem


def kv_bytes_per_token(shape, n_keys):
    """F16 keys and values one decode step reads at a context of n_keys tokens."""
    n_embd, n_layer = shape[:2]
    return n_layer * n_keys * n_embd * 2 * 2


def measure_bandwidth(n_bytes=4 << 30):
    """Device memory bandwidth in bytes/s: max of copy (read + write) and read-only sum."""
    try:
        import torch
    except ImportError:
        return None, "no torch"
    if not torch.cuda.is_available():
        return None, "torch sees no GPU"
    x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    x.normal_()
    y = torch.empty_like(x)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(fn, reps=10):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        return float(np.median(times))

    copy = 2 * n_bytes / timed(lambda: y.copy_(x))
    read = n_bytes / timed(lambda: x.sum(dtype=torch.float32))
    del x, y
    torch.cuda.empty_cache()
    return max(copy, read), f"torch: copy {copy / 1e12:.2f} TB/s (read + write), read-only sum {read / 1e12:.2f} TB/s"


def decode_speed(session, n_tokens, skip, prompt=(1, 500, 2000, 7000)):
    session.reset()
    r = session.generate(list(prompt), max_tokens=n_tokens, temperature=0, ignore_eos=True, skip=skip)
    assert len(r.tokens) == n_tokens, len(r.tokens)
    return (r.stats["decode_tokens_per_second"], r.stats.get("skip_ratio_after_warmup", r.stats.get("skip_ratio")),
            r.stats["prompt_tokens_per_second"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/dev/shm/ffnskip-bench" if pathlib.Path("/dev/shm").is_dir() else "/tmp/ffnskip-bench",
                    help="folder for the GGUFs (one at a time; a RAM disk writes 26 GB in seconds)")
    ap.add_argument("--shapes", default="7b,13b")
    ap.add_argument("--types", default="F16,Q8_0,Q4_K")
    ap.add_argument("--tokens", type=int, default=128, help="decode steps per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per setting (median)")
    ap.add_argument("--bandwidth", type=float, default=4.8e12,
                    help="memory bandwidth in bytes/s when it cannot be measured (H200 datasheet: 4.8e12)")
    ap.add_argument("--variants", default="", help="also measure the dense model with these launch variants: "
                    + ", ".join(f"{k} ({' '.join(f'{a}={b}' for a, b in v.items())})" for k, v in VARIANTS.items()))
    ap.add_argument("--context", type=int, default=0,
                    help="also measure dense decode after a prompt of this many tokens (0: not)")
    ap.add_argument("--max-seconds", type=float, default=1e9, help="start no new model after this many seconds")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--markdown", help="also write a markdown table here")
    args = ap.parse_args()
    t_start = time.time()
    bw, how = measure_bandwidth()
    if bw is None:
        bw = args.bandwidth
        how = f"not measured ({how}); datasheet figure"
    args.bandwidth = bw
    print(f"# bandwidth {bw / 1e12:.2f} TB/s ({how})", flush=True)
    if "cuda" not in ffnskip.available_backends():
        sys.exit("this build of ffnskip has no CUDA backend")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        n_layer = shape[1]
        n_skip = math.ceil(0.25 * n_layer)
        middle = list(range((n_layer - n_skip) // 2, (n_layer - n_skip) // 2 + n_skip))
        for type_name in args.types.split(","):
            if time.time() - t_start > args.max_seconds:
                print(f"# {shape_name} {type_name}: skipped (--max-seconds)", flush=True)
                continue
            path = out / f"llama-{shape_name}-{type_name}.gguf"
            t0 = time.time()
            write_model(path, shape, type_name)
            print(f"# {path.name}: {path.stat().st_size / 2**30:.1f} GiB written in {time.time() - t0:.0f} s", flush=True)
            t0 = time.time()
            n_ctx = max(512, args.context + args.tokens + 8)
            session = ffnskip.Session(str(path), n_ctx=n_ctx, backend="cuda")
            print(f"# loaded and uploaded in {time.time() - t0:.1f} s", flush=True)
            settings = {
                "full": (None, 0),
                "layers25": (dict(policy="layers", layers=middle), n_skip),
                "gate25": (dict(policy="ffn_skip", threshold=-1.0, cold_start=middle[0], cold_end=n_layer - middle[-1] - 1,
                                warmup=0, refresh_every=0, max_skip=n_skip), n_skip),
            }
            results += measure(session, shape_name, shape, type_name, settings, args, "default")
            del session
            for variant in filter(None, args.variants.split(",")):
                env = VARIANTS[variant]
                if (variant == "q8x" and type_name not in Q8X_TYPES) or (variant == "split" and type_name != "F16"):
                    continue
                os.environ.update(env)
                try:
                    session = ffnskip.Session(str(path), n_ctx=n_ctx, backend="cuda")
                    measured = settings if variant in SKIP_VARIANTS else {"full": settings["full"]}
                    results += measure(session, shape_name, shape, type_name, measured, args, variant)
                    del session
                except ffnskip.FfnskipError as e:   # one setting failing does not end the run
                    print(f"# {shape_name} {type_name} {variant}: FAILED: {e}", flush=True)
                    results.append(dict(shape=shape_name, type=type_name, variant=variant, setting="error",
                                        tokens_per_s=float("nan"), roofline=float("nan"), fraction=float("nan"),
                                        skip_ratio=0.0, runs=[], error=str(e)))
                finally:
                    for k in env:
                        del os.environ[k]
            path.unlink()
            if args.json:   # after every model: a run cut short keeps what it measured
                pathlib.Path(args.json).write_text(json.dumps(dict(bandwidth=args.bandwidth, how=how, results=results), indent=1))
    if args.markdown:
        lines = [f"Bandwidth {args.bandwidth / 1e12:.2f} TB/s ({how}); decode of {args.tokens} tokens, median of "
                 f"{args.repeats}.", "",
                 "| shape | type | variant | setting | tok/s | vs default | roofline tok/s | fraction | speed-up | ideal | gain |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        default = {(r["shape"], r["type"], r["setting"]): r["tokens_per_s"] for r in results if r["variant"] == "default"}
        for r in results:
            sp = (f"{r['speedup']:.3f} | {r['ideal_speedup']:.3f} | {r['skip_gain']:.2f}" if "speedup" in r else " | | ")
            base = default.get((r["shape"], r["type"], r["setting"]))
            vs = f"{r['tokens_per_s'] / base:.3f}" if base and r["variant"] != "default" else ""
            lines.append(f"| {r['shape']} | {r['type']} | {r['variant']} | {r['setting']} | {r['tokens_per_s']:.1f} | "
                         f"{vs} | {r['roofline']:.1f} | {r['fraction']:.3f} | {sp} |")
        pathlib.Path(args.markdown).write_text("\n".join(lines) + "\n")


def prompt_speed(session, n_tokens=512, repeats=3):
    """Prompt processing tokens/s (cuBLAS GEMMs; quantized weights de-quantized to F16 tiles)."""
    ids = [int(t) for t in np.random.default_rng(1).integers(1000, N_VOCAB, n_tokens)]
    runs = []
    for _ in range(repeats):
        session.reset()
        r = session.generate(ids, max_tokens=1, temperature=0, ignore_eos=True)
        runs.append(r.stats["prompt_tokens_per_second"])
    return float(np.median(runs))


def measure(session, shape_name, shape, type_name, settings, args, launches):
    decode_speed(session, 8, None)   # warm-up: graph capture, clocks
    speeds, rows = {}, []
    if launches in ("default", "all"):
        pps = prompt_speed(session)
        rows.append(dict(shape=shape_name, type=type_name, variant=launches, setting="prompt512", tokens_per_s=pps,
                         roofline=float("nan"), fraction=float("nan"), skip_ratio=0.0, runs=[pps]))
        print(f"{shape_name:4} {type_name:5} {launches:7} prompt512 {pps:8.1f} tok/s", flush=True)
    for name, (skip, skipped) in settings.items():
        runs = [decode_speed(session, args.tokens, skip) for _ in range(args.repeats)]
        tps = float(np.median([r[0] for r in runs]))
        roof = args.bandwidth / bytes_per_token(shape, type_name, skipped)
        speeds[name] = tps
        row = dict(shape=shape_name, type=type_name, variant=launches, setting=name, tokens_per_s=tps, roofline=roof,
                   fraction=tps / roof, skip_ratio=runs[-1][1], runs=[r[0] for r in runs])
        if skipped:
            ideal = bytes_per_token(shape, type_name) / bytes_per_token(shape, type_name, skipped)
            row["speedup"] = tps / speeds["full"]
            row["ideal_speedup"] = ideal
            row["skip_gain"] = (row["speedup"] - 1) / (ideal - 1)
        rows.append(row)
        extra = (f"  speed-up {row['speedup']:.3f} of ideal {row['ideal_speedup']:.3f} (gain {row['skip_gain']:.2f})"
                 if skipped else "")
        print(f"{shape_name:4} {type_name:5} {launches:7} {name:9} {tps:8.1f} tok/s  roofline {roof:8.1f}  "
              f"fraction {tps / roof:.3f}  skip {row['skip_ratio']}{extra}", flush=True)
    if args.context and launches in ("default", "all"):
        # Dense decode after a long prompt: the roofline counts the KV cache read at the
        # middle position of the measured steps.
        prompt = [int(t) for t in np.random.default_rng(2).integers(1000, N_VOCAB, args.context)]
        measured = [decode_speed(session, args.tokens, None, prompt) for _ in range(args.repeats)]
        runs = [r[0] for r in measured]
        tps = float(np.median(runs))
        pps = float(np.median([r[2] for r in measured]))
        rows.append(dict(shape=shape_name, type=type_name, variant=launches, setting=f"prompt{args.context}",
                         tokens_per_s=pps, roofline=float("nan"), fraction=float("nan"), skip_ratio=0.0,
                         runs=[r[2] for r in measured]))
        print(f"{shape_name:4} {type_name:5} {launches:7} prompt{args.context} {pps:8.1f} tok/s", flush=True)
        step_bytes = bytes_per_token(shape, type_name) + kv_bytes_per_token(shape, args.context + args.tokens // 2)
        roof = args.bandwidth / step_bytes
        name = f"ctx{args.context}"
        rows.append(dict(shape=shape_name, type=type_name, variant=launches, setting=name, tokens_per_s=tps,
                         roofline=roof, fraction=tps / roof, skip_ratio=0.0, runs=runs))
        print(f"{shape_name:4} {type_name:5} {launches:7} {name:9} {tps:8.1f} tok/s  roofline {roof:8.1f}  "
              f"fraction {tps / roof:.3f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
