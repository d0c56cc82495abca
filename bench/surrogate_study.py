"""Low-rank FFN surrogates against plain skipping, on held-out perplexity.

Fits rank-R surrogates for every FFN on WikiText-2 valid (one pass of the full model,
the first positions of each window left out), ranks the FFNs by single-ablation cost
on a held-out slice of valid (plain skip, and with surrogates), then measures WikiText-2
test perplexity (windows of 512 tokens from an empty cache, every token but a window's
first scored, as `ffnskip perplexity`) for:

- the k cheapest FFNs left out for every token (policy `layers`), plain and with
  surrogates, for k = 10/20/30% of the layers;
- the ffn_skip gate (threshold 0.95, 5 + 5 and 1 + 1 cold layers), plain and with
  surrogates.

    PYTHONPATH=python python3 bench/surrogate_study.py [MODEL] --rank 64 --data-dir tests/data/eval

Prints markdown; --json FILE keeps every number. Slow on 2 cores (about 15 minutes on
a quiet machine for SmolLM2-135M).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

import checkout

checkout.use()   # a built checkout, else the installed ffnskip

import ffnskip  # noqa: E402
from ffnskip import surrogate as sg  # noqa: E402
from ffnskip.models import resolve_model  # noqa: E402
from ffnskip.perplexity import perplexity  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="GGUF or registry name (default smollm2-135m)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--fit-tokens", type=int, default=16384, help="WikiText-2 valid tokens the surrogates see")
    ap.add_argument("--rank-tokens", type=int, default=1024, help="held-out valid tokens for the ablation ranking")
    ap.add_argument("--test-tokens", type=int, default=2040, help="scored WikiText-2 test tokens (fixed sets)")
    ap.add_argument("--gate-tokens", type=int, default=1020, help="scored test tokens for the gate (decode steps)")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--data-dir", default="tests/data/eval")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="surrogates.gguf", help="where the fitted surrogates are written")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    path = resolve_model(args.model)
    s = ffnskip.Session(path, n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads)
    n_layer, n_embd = int(s.model.hparams.n_layer), int(s.model.hparams.n_embd)
    wiki = pathlib.Path(args.data_dir) / "wikitext-2"
    valid = s.tokenize((wiki / "valid.txt").read_text(encoding="utf-8")[:40 * args.fit_tokens], add_special=False)
    test = s.tokenize((wiki / "test.txt").read_text(encoding="utf-8")[:40 * args.test_tokens], add_special=False)
    fitted, facts = sg.calibrate_surrogates(s, valid, rank=args.rank, tokens=args.fit_tokens, progress=True)
    sg.save(args.out, fitted, n_embd=n_embd, n_layer=n_layer, meta={"rank": args.rank, "text": "wikitext-2 valid"})
    sur = str(pathlib.Path(args.out).resolve())

    held = valid[args.fit_tokens:args.fit_tokens + args.rank_tokens]
    base = perplexity(s, held, skip="full")["ppl"]
    cost = [perplexity(s, held, skip={"policy": "layers", "layers": [l]})["ppl"] / base - 1 for l in range(n_layer)]
    cost_sur = [perplexity(s, held, skip={"policy": "layers", "layers": [l], "surrogates": sur})["ppl"] / base - 1
                for l in range(n_layer)]

    def ppl(tokens: int, **skip) -> dict:
        return perplexity(s, test, skip=skip or "full", max_tokens=tokens)

    full = ppl(args.test_tokens)["ppl"]
    rows = []
    for share in args.shares:
        k = int(round(share * n_layer))
        plain_set = sorted(int(l) for l in np.argsort(cost, kind="stable")[:k])
        sur_set = sorted(int(l) for l in np.argsort(cost_sur, kind="stable")[:k])
        rows.append({"what": f"{k} cheapest FFNs ({k / n_layer:.0%})", "set": plain_set, "sur_set": sur_set,
                     "plain": ppl(args.test_tokens, policy="layers", layers=plain_set)["ppl"] / full - 1,
                     "sur": ppl(args.test_tokens, policy="layers", layers=plain_set, surrogates=sur)["ppl"] / full - 1,
                     "sur_cheapest": ppl(args.test_tokens, policy="layers", layers=sur_set,
                                         surrogates=sur)["ppl"] / full - 1})
    full_gate = ppl(args.gate_tokens)["ppl"]
    for cold in (5, 1):
        spec = {"policy": "ffn_skip", "threshold": 0.95, "cold_start": cold, "cold_end": cold, "warmup": 8,
                "max_skip": 8}
        a, b = ppl(args.gate_tokens, **spec), ppl(args.gate_tokens, **spec, surrogates=sur)
        rows.append({"what": f"ffn_skip gate, cold {cold} + {cold}, {a['skip_ratio']:.1%} skipped",
                     "plain": a["ppl"] / full_gate - 1, "sur": b["ppl"] / full_gate - 1,
                     "ratio": a["skip_ratio"], "ratio_sur": b["skip_ratio"]})

    print(f"{pathlib.Path(path).name}: rank {args.rank} surrogates fitted on {facts['tokens']} WikiText-2 valid "
          f"tokens; test perplexity {full:.3f} ({args.test_tokens} tokens), {full_gate:.3f} ({args.gate_tokens} "
          f"tokens, the gate's baseline); {time.perf_counter() - t0:.0f} s\n")
    print("| FFNs left out | plain skip | surrogates (same set) | surrogates (cheapest with surrogates) |")
    print("|---|---|---|---|")
    for r in rows:
        extra = f"{100 * r['sur_cheapest']:+.1f}%" if "sur_cheapest" in r else "-"
        print(f"| {r['what']} | {100 * r['plain']:+.1f}% | {100 * r['sur']:+.1f}% | {extra} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "model": pathlib.Path(path).name, "rank": args.rank, "fit": facts, "full_ppl": full,
            "full_ppl_gate": full_gate, "ablation_cost": cost, "ablation_cost_surrogates": cost_sur, "rows": rows},
            indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
