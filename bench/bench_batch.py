"""Aggregate decode speed of batched decoding (BatchSession) against one Session.

    python bench/bench_batch.py [--model F.gguf] [--threads 2] [--batch 1 2 4 8]
                                [--tokens 64] [--reps 3] [--skip ffn_skip]
                                [--alignment none,vote] [--surrogates FILE] [--backend cuda]

For each batch size B, B different prompts join a BatchSession, then --tokens decode
steps run with all B sequences in every step (greedy tokens); aggregate tokens/s =
B * tokens / time of the steps. The baseline is one Session decoding the first prompt
token by token (eval of one token: the decode-step path). Every measurement runs once
per round, --reps rounds after one warm-up round; medians are printed as a markdown
table. Prompt processing is not timed.

With --skip POLICY every sequence also runs under that skip policy (its own schedule)
and the table adds its tokens/s, the share of FFN blocks the sequences skipped, and
the share of FFN weight bytes the batch did not read (BatchSession.stats(): with
alignment "none" an FFN is not read in a step only when every sequence skips it).
--alignment none,vote measures each skip_alignment (one column group each; "vote":
the majority of the rows' decisions applies to all rows, per step and layer).
--surrogates FILE: the skipped FFNs run that sidecar's surrogates.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import checkout  # noqa: E402

checkout.use()   # a built checkout wins over an installed ffnskip

import numpy as np  # noqa: E402

import ffnskip  # noqa: E402
from ffnskip.batch import BatchSession  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "The three laws of thermodynamics are",
    "Write a haiku about autumn leaves.",
    "import numpy as np\nx = np.",
    "The best way to learn a new language is",
    "Photosynthesis converts sunlight into",
]


def single_rate(model, prompt, n_tokens, threads, n_ctx, backend="cpu"):
    s = ffnskip.Session(model, n_ctx=n_ctx, n_threads=threads, backend=backend)
    logits = s.eval(prompt)
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        logits = s.eval([int(np.argmax(logits))])
    return n_tokens / (time.perf_counter() - t0)


def batch_run(model, prompts, n_tokens, threads, n_ctx, skip=None, alignment="none", backend="cpu"):
    """Aggregate tokens/s, share of FFNs skipped, share of FFN weight bytes not read."""
    b = BatchSession(model, n_seq=len(prompts), n_ctx=n_ctx, n_threads=threads, skip_alignment=alignment,
                     backend=backend, n_batch=max(512, len(prompts)))
    ids = [b.add_sequence(p, skip=skip) for p in prompts]
    last = [int(np.argmax(b.last_logits(s))) for s in ids]
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        logits = b.step(list(zip(ids, last)))
        last = [int(i) for i in logits.argmax(axis=1)]
    rate = len(prompts) * n_tokens / (time.perf_counter() - t0)
    masks = np.stack([np.asarray(b.skip_stats(s).masks, dtype=bool) for s in ids])   # (B, steps, n_layer)
    return rate, float(masks.mean()) if masks.size else 0.0, b.stats().ffn_read_saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, help="GGUF file (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=64, help="decode steps per measurement")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip", help="also measure every sequence under this skip policy (e.g. ffn_skip)")
    ap.add_argument("--alignment", default="none",
                    help="comma-separated skip_alignment values to measure with --skip (none, vote)")
    ap.add_argument("--surrogates", help="surrogate sidecar (GGUF) the skipped FFNs run, with --skip")
    ap.add_argument("--backend", default="cpu", help="cpu or cuda (the Session baseline runs there too)")
    args = ap.parse_args()
    alignments = [a.strip() for a in args.alignment.split(",") if a.strip()]
    from ffnskip import models

    path = args.model or models.default_model_path()
    model = ffnskip.Model(str(path))
    # Past the 8 prompts, each again with a number in front: every sequence its own text.
    texts = [PROMPTS[i % len(PROMPTS)] if i < len(PROMPTS) else f"{i}. {PROMPTS[i % len(PROMPTS)]}"
             for i in range(max(args.batch))]
    prompts = [model.tokenize(p) for p in texts]
    n_ctx = max(len(p) for p in prompts) + args.tokens + 8

    skip = None
    if args.skip:
        skip = ffnskip.skip_config(args.skip, model=model, record_masks=True)
        if args.surrogates:
            skip.surrogates = str(args.surrogates)
    # Every measurement once per round, rounds repeated: a change in the machine's load
    # then touches all of them alike rather than one batch size.
    be = args.backend
    runs = {"session": lambda: single_rate(model, prompts[0], args.tokens, args.threads, n_ctx, be)}
    for B in args.batch:
        runs[("full", B)] = lambda B=B: batch_run(model, prompts[:B], args.tokens, args.threads, n_ctx, None, "none", be)
        if skip is not None:
            for a in alignments:
                runs[(a, B)] = lambda B=B, a=a: batch_run(model, prompts[:B], args.tokens, args.threads, n_ctx, skip, a, be)
    results: dict = {key: [] for key in runs}
    for rnd in range(args.reps + 1):   # round 0 warms up
        for key, fn in runs.items():
            r = fn()
            if rnd > 0:
                results[key].append(r)

    def rate(key):
        return statistics.median(r if isinstance(r, float) else r[0] for r in results[key])

    base = rate("session")
    print(f"model: {pathlib.Path(path).name}, backend: {args.backend}, threads: {args.threads}, {args.tokens} decode "
          f"steps, median of {args.reps} rounds" + (f", surrogates: {pathlib.Path(args.surrogates).name}" if args.surrogates else "")
          + "\n")
    head = "| sequences | aggregate tok/s | per sequence tok/s | vs one Session |"
    rule = "|---:|---:|---:|---:|"
    if skip is not None:
        for a in alignments:
            head += f" {args.skip} {a} tok/s | skip gain | FFNs skipped | FFN bytes not read |"
            rule += "---:|---:|---:|---:|"
    print(head)
    print(rule)
    print(f"| Session (1) | {base:.1f} | {base:.1f} | 1.00x |" + (" | | | |" * len(alignments) if skip is not None else ""))
    for B in args.batch:
        full = rate(("full", B))
        row = f"| {B} | {full:.1f} | {full / B:.1f} | {full / base:.2f}x |"
        if skip is not None:
            for a in alignments:
                srate = rate((a, B))
                _, skipped, saved = results[(a, B)][0]
                row += f" {srate:.1f} | {srate / full:.2f}x | {skipped:.1%} | {saved:.1%} |"
        print(row)


if __name__ == "__main__":
    main()
