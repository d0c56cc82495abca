"""One engine in its own process, driven by JSON lines, so that its load time and
peak RSS are its own and nothing of the other engine is resident.

    python worker.py ffnskip|llama.cpp

Requests (one JSON object per line on stdin), each answered by one JSON line:
    {"op": "load", "model": PATH, "threads": T, "n_ctx": N, "load_reps": K}
    {"op": "tokenize", "text": STR}                  -> {"ids": [...]}
    {"op": "prompt", "ids": [...]}           -> {"seconds": s, "cpu_seconds": c, "n": n}
    {"op": "decode", "ids": [...], "n": N}   -> {"seconds": s, "cpu_seconds": c, "n": N, "tokens": [...]}
    {"op": "rss"}                                    -> {"vm_hwm_kb": ..., "vm_rss_kb": ...}
    {"op": "quit"}
Errors come back as {"error": "..."}; the process stays usable when it can.

Both engines are timed the same way, from Python around the same calls: prompt =
one eval of all ids on an empty cache; decode = a short prompt, then N single-token
evals, each feeding back the argmax of the last logits (greedy, never stops at EOS).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np


def proc_status_kb(field: str) -> int:
    """A `VmXXX:` line of /proc/self/status in kB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    if field == "VmHWM":  # ru_maxrss is kB on Linux
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return 0


class FfnskipEngine:
    def __init__(self) -> None:
        import ffnskip
        self.ffnskip = ffnskip
        self.session = None

    def version(self) -> str:
        info = getattr(self.ffnskip, "build_info", None)
        text = str(info()) if callable(info) else ""
        return text if text.startswith("ffnskip") else f"ffnskip {self.ffnskip.__version__} {text}".strip()

    def load(self, model: str, threads: int, n_ctx: int) -> None:
        self.session = None
        self.session = self.ffnskip.Session(model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads)

    def tokenize(self, text: str) -> list[int]:
        return list(self.session.tokenize(text, add_special=True))

    def reset(self) -> None:
        self.session.reset()

    def eval_last(self, ids: list[int]) -> np.ndarray:
        return self.session.eval(ids)


class LlamaCppEngine:
    def __init__(self) -> None:
        import llama_cpp
        self.llama_cpp = llama_cpp
        self.llm = None

    def version(self) -> str:
        return f"llama-cpp-python {self.llama_cpp.__version__}"

    def load(self, model: str, threads: int, n_ctx: int) -> None:
        if self.llm is not None and hasattr(self.llm, "close"):
            self.llm.close()
        self.llm = None
        self.llm = self.llama_cpp.Llama(
            model_path=model, n_ctx=n_ctx, n_batch=512, n_threads=threads,
            n_threads_batch=threads, logits_all=False, verbose=False)

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True))

    def reset(self) -> None:
        # Llama.eval drops the cache beyond n_tokens before it appends
        self.llm.reset()

    def eval_last(self, ids: list[int]) -> np.ndarray:
        # Llama.scores is only filled with logits_all=True (which would compute the
        # logits of every prompt position): read the last row from the context instead.
        self.llm.eval(ids)
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()


ENGINES = {"ffnskip": FfnskipEngine, "llama.cpp": LlamaCppEngine}


def handle(engine, req: dict) -> dict:
    op = req["op"]
    if op == "load":
        times = []
        for _ in range(max(1, int(req.get("load_reps", 1)))):
            t0 = time.perf_counter()
            engine.load(req["model"], int(req["threads"]), int(req["n_ctx"]))
            times.append(time.perf_counter() - t0)
        return {"load_seconds": times, "version": engine.version()}
    if op == "tokenize":
        return {"ids": engine.tokenize(req["text"])}
    if op == "prompt":
        ids = [int(i) for i in req["ids"]]
        engine.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        engine.eval_last(ids)
        return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "n": len(ids)}
    if op == "decode":
        ids = [int(i) for i in req["ids"]]
        n = int(req["n"])
        engine.reset()
        logits = engine.eval_last(ids)
        tokens = []
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            tok = int(np.argmax(logits))
            tokens.append(tok)
            logits = engine.eval_last([tok])
        return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                "n": n, "tokens": tokens}
    if op == "rss":
        return {"vm_hwm_kb": proc_status_kb("VmHWM"), "vm_rss_kb": proc_status_kb("VmRSS")}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in ENGINES:
        sys.stderr.write(f"usage: worker.py {'|'.join(ENGINES)}\n")
        return 2
    # Answers go to a private copy of stdout; anything the engine prints lands on stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    base = {"vm_rss_kb": proc_status_kb("VmRSS")}  # interpreter + numpy, before the engine
    try:
        engine = ENGINES[sys.argv[1]]()
    except Exception as e:  # missing package: say so and stop
        proto.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        return 1
    base["vm_rss_import_kb"] = proc_status_kb("VmRSS")
    proto.write(json.dumps({"ready": True, **base}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        try:
            ans = handle(engine, req)
        except Exception as e:
            ans = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
        proto.write(json.dumps(ans) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
