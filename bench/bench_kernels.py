"""Decode and prompt-processing speed of the CPU backend, optionally next to llama.cpp.

For each model and thread count: decode tokens/s (greedy, after a short prompt) and
prompt tokens/s (one batch of --prompt tokens), the median of --runs runs. With
--llama-cpp, llama-cpp-python runs the same GGUF with the same thread count,
alternating with ours so that load changes hit both engines alike.

    python3 bench/bench_kernels.py MODEL.gguf [MODEL2.gguf ...] \
        --threads 1 2 --runs 5 [--llama-cpp]

Prints a markdown table and the load average before and after (the machine is shared:
compare numbers taken side by side only).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

import checkout

checkout.use()   # a built checkout, else the installed ffnskip

import ffnskip  # noqa: E402


def prompt_ids(n: int, n_vocab: int) -> list[int]:
    # a fixed, ordinary-looking id sequence (no special tokens at the low end)
    return [100 + (i * 7919) % (n_vocab - 200) for i in range(n)]


def ours_decode(session: ffnskip.Session, n_gen: int) -> float:
    session.reset()
    r = session.generate(prompt_ids(16, session.model.n_vocab), max_tokens=n_gen, temperature=0, ignore_eos=True)
    return r.stats["decode_tokens_per_second"]


def ours_prompt(session: ffnskip.Session, n_prompt: int) -> float:
    session.reset()
    ids = prompt_ids(n_prompt, session.model.n_vocab)
    t0 = time.perf_counter()
    session.eval(ids)
    return n_prompt / (time.perf_counter() - t0)


class LlamaCpp:
    def __init__(self, path: str, n_threads: int, n_ctx: int):
        import llama_cpp
        self.llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                                   n_batch=512, verbose=False)

    def decode(self, n_gen: int) -> float:
        self.llm.reset()
        ids = prompt_ids(16, self.llm.n_vocab())
        self.llm.eval(ids)
        tok = ids[-1]
        t0 = time.perf_counter()
        for _ in range(n_gen):
            self.llm.eval([tok])
            tok = int(self.llm.scores[self.llm.n_tokens - 1].argmax())
        return n_gen / (time.perf_counter() - t0)

    def prompt(self, n_prompt: int) -> float:
        self.llm.reset()
        ids = prompt_ids(n_prompt, self.llm.n_vocab())
        t0 = time.perf_counter()
        self.llm.eval(ids)
        return n_prompt / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gen", type=int, default=64, help="decoded tokens per run")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens per run (0 = skip)")
    ap.add_argument("--llama-cpp", action="store_true", help="also run llama-cpp-python on the same GGUF")
    args = ap.parse_args()

    load0 = os.getloadavg()
    rows = []
    for path in args.models:
        for nt in args.threads:
            n_ctx = max(args.prompt, 16 + args.gen) + 8
            ours = ffnskip.Session(path, n_ctx=n_ctx, n_threads=nt, n_batch=512)
            peer = LlamaCpp(path, nt, n_ctx) if args.llama_cpp else None
            dec, pp, pdec, ppp = [], [], [], []
            ours_decode(ours, 8)   # warm the page cache and the thread pool
            if peer:
                peer.decode(8)
            for _ in range(args.runs):
                dec.append(ours_decode(ours, args.gen))
                if peer:
                    pdec.append(peer.decode(args.gen))
                if args.prompt:
                    pp.append(ours_prompt(ours, args.prompt))
                    if peer:
                        ppp.append(peer.prompt(args.prompt))
            med = lambda xs: statistics.median(xs) if xs else float("nan")
            rows.append((pathlib.Path(path).name, nt, med(dec), med(pdec), med(pp), med(ppp)))
            del ours, peer
    load1 = os.getloadavg()

    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}; median of {args.runs} runs; "
          f"decode {args.gen} tokens, prompt {args.prompt} tokens\n")
    print("| model | threads | decode tok/s | llama.cpp decode | ratio | prompt tok/s | llama.cpp prompt | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, nt, d, pd, p, pp in rows:
        r1 = d / pd if pd == pd else float("nan")
        r2 = p / pp if pp == pp else float("nan")
        print(f"| {name} | {nt} | {d:.1f} | {pd:.1f} | {r1:.2f} | {p:.1f} | {pp:.1f} | {r2:.2f} |")


if __name__ == "__main__":
    main()
