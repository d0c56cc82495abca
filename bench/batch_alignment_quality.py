"""Quality of aligned skip windows in a batch: teacher-forced perplexity of each sequence
of a batch of WikiText-2 windows, decoded with skip_alignment "none" and "vote",
against the same window scored alone by a Session (and the full model).

    PYTHONPATH=python python3 bench/batch_alignment_quality.py [--model F.gguf]
        [--data-dir tests/data/eval] [--batch 8] [--groups 1] [--ctx 256]
        [--skip ffn_skip] [--surrogates FILE] [--threads 2]

WikiText-2 test is cut into consecutive windows of --ctx tokens (as `ffnskip
perplexity`: each window from an empty cache, its first token the prompt, every other
token scored). Each group of --batch consecutive windows joins one BatchSession and is
teacher-forced one token per step for all rows; a lone Session scores each window with
Session.score (the same skip policy, its own decode steps). With "none" every
sequence must equal its lone run (the script checks the NLL to 1e-9 nats); with "vote" the
majority of the rows' FFN decisions applies to all rows. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import checkout  # noqa: E402

checkout.use()   # a built checkout wins over an installed ffnskip

import numpy as np  # noqa: E402

import ffnskip  # noqa: E402
from ffnskip.batch import BatchSession  # noqa: E402
from ffnskip.perplexity import windows  # noqa: E402


def token_nll(logits: np.ndarray, target: int) -> float:
    x = logits.astype(np.float64)
    m = x.max()
    return float(math.log(np.exp(x - m).sum()) - (x[target] - m))


def batch_nll(model, wins, skip, alignment, threads, ctx):
    """Per window: summed NLL of its tokens after the first, FFN share skipped and
    surrogates run; and the batch's share of FFN weight bytes not read."""
    b = BatchSession(model, n_seq=len(wins), n_ctx=ctx, n_threads=threads, skip_alignment=alignment)
    ids = [b.add_sequence(w[:1], skip=skip) for w in wins]
    nll = [token_nll(b.last_logits(s), w[1]) for s, w in zip(ids, wins)]
    longest = max(len(w) for w in wins)
    for i in range(1, longest - 1):
        rows = [(r, s) for r, (s, w) in enumerate(zip(ids, wins)) if i + 1 < len(w)]
        logits = b.step([(s, wins[r][i]) for r, s in rows])
        for k, (r, _) in enumerate(rows):
            nll[r] += token_nll(logits[k], wins[r][i + 1])
    stats = [b.skip_stats(s) for s in ids]
    return nll, [st.skip_ratio for st in stats], [st.surrogates_run for st in stats], b.stats().ffn_read_saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, help="GGUF file (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("tests/data/eval"))
    ap.add_argument("--batch", type=int, default=8, help="windows per batch")
    ap.add_argument("--groups", type=int, default=1, help="batches of consecutive windows")
    ap.add_argument("--ctx", type=int, default=256, help="tokens per window")
    ap.add_argument("--skip", default="ffn_skip", help="the skip policy of every sequence")
    ap.add_argument("--surrogates", help="surrogate sidecar the skipped FFNs run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from ffnskip import models

    path = args.model or models.default_model_path()
    model = ffnskip.Model(str(path))
    text = (args.data_dir / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    ids = model.tokenize(text, add_special=False)
    wins = windows(ids, args.ctx)[: args.batch * args.groups]
    skip = ffnskip.skip_config(args.skip, model=model)
    if args.surrogates:
        skip.surrogates = str(args.surrogates)
    lone_session = ffnskip.Session(model, n_ctx=args.ctx, n_threads=args.threads)

    t0 = time.perf_counter()
    full, lone, lone_skip, lone_sur = [], [], [], []
    for w in wins:
        full.append(lone_session.score(w[:1], w[1:], skip="full")[0])
        nll, st = lone_session.score(w[:1], w[1:], skip=skip)
        lone.append(nll)
        lone_skip.append(st["ffn_skipped"] / max(st["ffn_total"], 1))
        lone_sur.append(st["surrogates_run"])
    res = {}
    for alignment in ("none", "vote"):
        parts = [batch_nll(model, wins[g * args.batch:(g + 1) * args.batch], skip, alignment, args.threads, args.ctx)
                 for g in range(args.groups)]
        res[alignment] = (sum((p[0] for p in parts), []), sum((p[1] for p in parts), []),
                          sum((p[2] for p in parts), []), float(np.mean([p[3] for p in parts])))
    elapsed = time.perf_counter() - t0

    n_tok = [len(w) - 1 for w in wins]
    ppl = lambda nll, n: math.exp(nll / n)  # noqa: E731
    none_diff = max(abs(a - b) for a, b in zip(res["none"][0], lone))
    print(f"model: {pathlib.Path(path).name}, skip: {args.skip}"
          + (f" + surrogates {pathlib.Path(args.surrogates).name}" if args.surrogates else "")
          + f", {len(wins)} WikiText-2 test windows of {args.ctx} tokens in {args.groups} batch(es) of "
          f"{args.batch}, {elapsed:.0f} s\n")
    # The lone NLL is summed in C++ and the batch's here from the same logits (the
    # tests check those bit for bit): only the log-sum-exp code differs.
    print(f"none vs lone Session: max |NLL difference| per window {none_diff:.3g} nats "
          f"({'equal' if none_diff < 1e-9 else 'NOT EQUAL'}: C++ and numpy sums of the same logits)\n")
    print("| window | full ppl | lone Session ppl | batch none ppl | batch vote ppl | vote / lone | "
          "FFNs skipped lone | FFNs skipped vote |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(len(wins)):
        pl, pv = ppl(lone[i], n_tok[i]), ppl(res["vote"][0][i], n_tok[i])
        print(f"| {i} | {ppl(full[i], n_tok[i]):.2f} | {pl:.2f} | {ppl(res['none'][0][i], n_tok[i]):.2f} | "
              f"{pv:.2f} | {pv / pl:.3f} | {lone_skip[i]:.1%} | {res['vote'][1][i]:.1%} |")
    total = sum(n_tok)
    print("\n| setting | perplexity (all windows) | FFNs skipped | FFN bytes not read | surrogates run |")
    print("|---|---:|---:|---:|---:|")
    print(f"| full model | {ppl(sum(full), total):.3f} | 0% | 0% | 0 |")
    print(f"| lone Session | {ppl(sum(lone), total):.3f} | {np.mean(lone_skip):.1%} | (= skipped) | {sum(lone_sur)} |")
    for a in ("none", "vote"):
        nll, sk, sur, saved = res[a]
        print(f"| batch {a} | {ppl(sum(nll), total):.3f} | {np.mean(sk):.1%} | {saved:.1%} | {sum(sur)} |")


if __name__ == "__main__":
    main()
