"""Where a CUDA decode step spends its time, kernel by kernel.

Writes a LLaMA-2-13B-shaped GGUF with few layers (per-layer kernel times do not depend
on the layer count), runs a short prompt and a few decode steps with the kernels
launched one by one (FFNSKIP_CUDA_GRAPH=0), and is meant to run under Nsight Compute:

    ncu --clock-control none --metrics gpu__time_duration.sum --csv \\
        python bench/profile_cuda.py --type F16 > kernels.csv
    python bench/profile_cuda.py --summarize kernels.csv

--summarize groups the decode steps' kernels by name: launches, total and mean
microseconds, and the share of the step.
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import os
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def run(type_name: str, n_layer: int, steps: int, out: pathlib.Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import random_model

    import ffnskip

    os.environ["FFNSKIP_CUDA_GRAPH"] = "0"
    n_embd, _, n_head, n_ff = random_model.SHAPES["13b"]
    shape = (n_embd, n_layer, n_head, n_ff)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile-{type_name}.gguf"
    random_model.write_model(path, shape, type_name)
    s = ffnskip.Session(str(path), n_ctx=256, backend="cuda")
    s.generate([1, 500, 2000, 7000], max_tokens=steps, temperature=0, ignore_eos=True)
    path.unlink()


def short_name(name: str) -> str:
    name = name.replace("(anonymous namespace)::", "").replace("(ffnskip::GgmlType)", "T").replace("(int)", "")
    name = re.sub(r"\(.*$", "", name)   # drop the argument list
    return name.replace("ffnskip::cuda::", "").replace("void ", "")


def summarize(csv_path: str, prompt_kernels_re: str = "dequant|gemm|Kernel|to_f16|to_bf16|cublas|sm90") -> None:
    text = pathlib.Path(csv_path).read_text()
    start = text.find('"ID"')
    rows = list(csv.DictReader(io.StringIO(text[start:])))
    rows = [r for r in rows if r.get("Metric Name") == "gpu__time_duration.sum"]
    # The decode steps are what follows the last prompt kernel (cuBLAS / de-quantization).
    last_prompt = max((i for i, r in enumerate(rows) if re.search(prompt_kernels_re, r["Kernel Name"])), default=-1)
    decode = rows[last_prompt + 1:]
    unit = decode[0]["Metric Unit"] if decode else "ns"
    scale = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "nsecond": 1e-3, "ms": 1e3, "msecond": 1e3}.get(unit, 1e-3)
    by = collections.defaultdict(list)
    for r in decode:
        by[short_name(r["Kernel Name"])].append(float(r["Metric Value"].replace(",", "")) * scale)
    total = sum(sum(v) for v in by.values())
    steps = max(1, len([r for r in decode if "embed_kernel" in r["Kernel Name"]]))
    print(f"{len(decode)} decode kernels in {steps} steps, {total / steps:.1f} us per step (kernel time only)")
    print(f"{'kernel':60} {'launches/step':>13} {'us/step':>9} {'mean us':>8} {'share':>6}")
    for name, v in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        print(f"{name[:60]:60} {len(v) / steps:13.1f} {sum(v) / steps:9.1f} {sum(v) / len(v):8.2f} {sum(v) / total:6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--type", default="F16")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="/dev/shm/ffnskip-profile" if pathlib.Path("/dev/shm").is_dir() else "/tmp/ffnskip-profile")
    ap.add_argument("--summarize", metavar="CSV", help="summarize an ncu --csv output instead of running")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
    else:
        run(args.type, args.layers, args.steps, pathlib.Path(args.out))


if __name__ == "__main__":
    main()
