"""Does a skipped FFN turn into speed? Decode tokens/s with 0, 10, 25, 30 and 40% of the
FFN blocks left out (the `layers` policy: the same middle layers for every token) next
to the share of weight bytes a token no longer reads and the speed-up that share would
give if decode time were proportional to the bytes read.

    python3 bench/bench_skip.py [MODEL.gguf] --threads 1 --runs 5

With --surrogates FILE (from `ffnskip calibrate --surrogate-rank R`) every skipping
setting also runs with the left-out FFNs replaced by their surrogates, side by side.

All settings run in rounds (one run of each per round) so that load on a shared
machine hits them alike; the table shows medians. Prints markdown.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics

import checkout

checkout.use()   # a built checkout, else the installed ffnskip

import ffnskip  # noqa: E402
from ffnskip import models  # noqa: E402

FFN = ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")


def weight_bytes(path: str) -> tuple[int, dict[int, int]]:
    """Bytes of the matrices one decode step reads (every layer's attention and FFN
    plus the output matrix; the one embedding row is negligible), and each layer's
    FFN bytes."""
    tensors = ffnskip._core.gguf_inspect(path)["tensors"]
    names = {t["name"] for t in tensors}
    dense, ffn = 0, {}
    for t in tensors:
        name = t["name"]
        if name.startswith("blk.") and len(t["shape"]) == 2:
            dense += t["n_bytes"]
            if name.endswith(FFN):
                layer = int(name.split(".")[1])
                ffn[layer] = ffn.get(layer, 0) + t["n_bytes"]
        elif name == "output.weight" or (name == "token_embd.weight" and "output.weight" not in names):
            dense += t["n_bytes"]   # the logits read the whole matrix (tied: the embedding table)
    return dense, ffn


def middle_layers(n_layer: int, k: int) -> list[int]:
    """k layers spread over the middle (the first and last layers matter most)."""
    if k == 0:
        return []
    lo, hi = 2, n_layer - 2
    return sorted({lo + round(i * (hi - lo - 1) / max(1, k - 1)) for i in range(k)}) if k > 1 else [n_layer // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None,
                    help="GGUF file or registered model name (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gen", type=int, default=64, help="decoded tokens per run")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.10, 0.25, 0.30, 0.40],
                    help="FFN skip ratios (the dense run, 0, is always measured first: the speed-ups' base)")
    ap.add_argument("--surrogates", help="surrogate file: also time each setting with surrogates in place of the skipped FFNs")
    args = ap.parse_args()
    args.ratios = [0.0] + [r for r in args.ratios if r != 0.0]
    path = str(models.resolve_model(args.model)) if args.model else str(models.default_model_path())

    model = ffnskip.Model(path)
    n_layer = model.hparams.n_layer
    dense, ffn = weight_bytes(path)
    configs = []
    for r in args.ratios:
        layers = middle_layers(n_layer, round(r * n_layer))
        skipped = sum(ffn.get(l, 0) for l in layers)
        spec = {"policy": "layers", "layers": layers} if layers else None
        sur_spec = dict(spec, surrogates=args.surrogates) if spec and args.surrogates else None
        configs.append((r, layers, skipped / dense, dense / (dense - skipped), spec, sur_spec))

    session = ffnskip.Session(model, n_ctx=256, n_threads=args.threads)
    prompt = [100 + (i * 7919) % 40000 for i in range(16)]

    def run(spec) -> float:
        session.reset()
        res = session.generate(prompt, max_tokens=args.gen, temperature=0, ignore_eos=True, skip=spec)
        return res.stats["decode_tokens_per_second"]

    load0 = os.getloadavg()[0]
    for c in configs:   # warm-up
        run(c[4])
        if c[5]:
            run(c[5])
    speeds: list[list[float]] = [[] for _ in configs]
    sur_speeds: list[list[float]] = [[] for _ in configs]
    for _ in range(args.runs):
        for i, c in enumerate(configs):
            speeds[i].append(run(c[4]))
            if c[5]:
                sur_speeds[i].append(run(c[5]))
    load1 = os.getloadavg()[0]

    med = [statistics.median(s) for s in speeds]
    sur_med = [statistics.median(s) if s else float("nan") for s in sur_speeds]
    base = med[0] if args.ratios[0] == 0 else float("nan")
    print(f"{pathlib.Path(path).name}, {args.threads} thread(s), {args.gen} tokens per run, median of {args.runs} runs; "
          f"load average {load0:.2f} -> {load1:.2f}\n")
    sur_cols = " surrogates tok/s | surrogates / plain |" if args.surrogates else ""
    print("| FFNs skipped | layers | weight bytes not read | decode tok/s | speed-up | ideal speed-up | achieved / ideal |"
          + sur_cols)
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.surrogates else ""))
    for (r, layers, frac, ideal, *_), m, sm in zip(configs, med, sur_med):
        n_skip = len(layers)
        sp = m / base
        # the achieved share of the ideal gain (speed-up - 1 over ideal - 1); none for the dense run
        gain = f" (gain {(sp - 1) / (ideal - 1):.0%})" if ideal > 1 else ""
        extra = (f" {sm:.1f} | {sm / m:.3f} |" if layers else " - | - |") if args.surrogates else ""
        print(f"| {n_skip}/{n_layer} ({n_skip / n_layer:.0%}) | {','.join(map(str, layers)) or '-'} | {frac:.1%} | "
              f"{m:.1f} | {sp:.3f} | {ideal:.3f} | {sp / ideal:.3f}{gain} |{extra}")


if __name__ == "__main__":
    main()
