"""Load test of `ffnskip serve` over loopback: tokens/s and p50/p95 latency at 1, 2, 4
and 8 concurrent streaming clients, with FFN skipping off and on, for the batching server
(all slots in one forward pass per step) and the session-per-slot server (--no-batching),
each against one client on a one-slot server with all cores.

    python3 bench/bench_server.py [--model M] [--slots 8] [--clients 1,2,4,8,16] [--requests 16]

Bounded: each level sends `--requests` requests (at least one per client) and stops
sending new ones after `--level-seconds`. Every request generates exactly
`--max-tokens` tokens (ignore_eos), greedy.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import threading
import time
from typing import Any, Dict, List

import httpx

import checkout

checkout.use()   # a built checkout, else the installed ffnskip

from ffnskip.server.process import ServerProcess  # noqa: E402

PROMPTS = [
    "The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
    "The three primary colors are", "Water boils at a temperature of", "My favourite fruit is",
    "In the year 1969, humans", "The quick brown fox",
]


def one_request(url: str, i: int, max_tokens: int, http: httpx.Client) -> Dict[str, Any]:
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    usage = None
    with http.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                usage = chunk["usage"]
    return {"latency": time.perf_counter() - t0, "ttft": first or 0.0, "usage": usage}


def run_level(url: str, clients: int, n_requests: int, max_tokens: int, level_seconds: float) -> Dict[str, Any]:
    n_requests = max(n_requests, clients)
    counter = iter(range(n_requests))
    lock = threading.Lock()
    deadline = time.perf_counter() + level_seconds
    results: List[Dict[str, Any]] = []

    def client_loop() -> None:
        with httpx.Client(timeout=300) as http:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                res = one_request(url, i, max_tokens, http)
                with lock:
                    results.append(res)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client_loop) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    lat = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results)
    tokens = sum(r["usage"]["completion_tokens"] for r in results)
    skipped = sum(r["usage"]["ffnskip"]["ffn_skipped"] for r in results)
    total = sum(r["usage"]["ffnskip"]["ffn_total"] for r in results)
    return {
        "clients": clients, "requests": len(results), "seconds": wall,
        "requests_per_s": len(results) / wall, "tokens_per_s": tokens / wall,
        "p50_s": _pct(lat, 50), "p95_s": _pct(lat, 95), "ttft_p50_s": _pct(ttft, 50),
        "per_stream_decode_tps": statistics.mean(r["usage"]["ffnskip"]["decode_tokens_per_second"] for r in results),
        "skip_ratio": skipped / total if total else 0.0,
    }


def _pct(sorted_values: List[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def serve_levels(model: str, server_args: List[str], levels: List[int], args: argparse.Namespace) -> List[Dict[str, Any]]:
    rows = []
    with ServerProcess(model, server_args) as server:
        with httpx.Client(timeout=300) as http:   # warm-up: page the weights in
            one_request(server.url, 0, 4, http)
        for clients in levels:
            rows.append(run_level(server.url, clients, args.requests, args.max_tokens, args.level_seconds))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="GGUF file or registry name (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--threads", type=int, default=0,
                   help="threads (0 = the server's default: all cores batched, cores / slots per session)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--clients", default="1,2,4,8")
    p.add_argument("--requests", type=int, default=16, help="requests per level (at least one per client)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--level-seconds", type=float, default=60.0, help="no new requests after this long")
    p.add_argument("--skip", default="full,ffn_skip", help="server skip settings to compare, comma-separated")
    p.add_argument("--modes", default="batching,no-batching",
                   help="server modes to compare: batching (one forward pass per step for all slots), "
                        "no-batching (a Session per slot)")
    p.add_argument("--no-baseline", action="store_true",
                   help="leave out the baseline: one client on a one-slot --no-batching server with all cores")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    model = args.model
    if not model:
        from ffnskip.models import default_model_path

        model = str(default_model_path())
    else:
        from ffnskip.models import resolve_model

        model = str(resolve_model(model))
    levels = [int(c) for c in args.clients.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("batching", "no-batching"):
            p.error(f"--modes: unknown mode {m!r} (batching, no-batching)")
    rows: List[Dict[str, Any]] = []
    baseline: Dict[str, float] = {}
    for skip in args.skip.split(","):
        common = ["--queue", "64", "--ctx", str(args.ctx), "--skip", skip]
        if not args.no_baseline:
            base = serve_levels(model, ["--slots", "1", "--no-batching"] + common, [1], args)[0]
            baseline[skip] = base["tokens_per_s"]
            rows.append({"skip": skip, "mode": "baseline", "slots": 1, **base})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for mode in modes:
            server_args = ["--slots", str(args.slots), f"--{mode}"] + common
            if args.threads:
                server_args += ["--threads", str(args.threads)]
            for row in serve_levels(model, server_args, levels, args):
                rows.append({"skip": skip, "mode": mode, "slots": args.slots, **row})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for r in rows:
        r["vs_baseline"] = r["tokens_per_s"] / baseline[r["skip"]] if r["skip"] in baseline else float("nan")
    print(f"\nmodel {os.path.basename(model)}, {os.cpu_count()} cores, {args.max_tokens} tokens per request "
          f"(streamed, greedy); baseline = one client on a one-slot --no-batching server with all cores\n")
    print("| skip | mode | slots | clients | requests | tok/s | x baseline | p50 latency s | p95 latency s | "
          "p50 first token s | decode tok/s per stream | FFN skip ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['skip']} | {r['mode']} | {r['slots']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
              f"{r['vs_baseline']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['ttft_p50_s']:.2f} | "
              f"{r['per_stream_decode_tps']:.1f} | {r['skip_ratio']:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
