"""Speed of ffnskip next to llama.cpp (llama-cpp-python) on the same GGUF files,
prompts and thread counts, with the memory-bandwidth roofline of decoding.

    python bench/bench_speed.py [--reps 5] [--threads 1 2] [--models A.gguf ...]
                                [--markdown F.md] [--json F.json] [--plot F.png]

Each engine runs in its own worker process (bench/worker.py), so its load time and
peak RSS are its own. Per (file, threads): both workers load the file, run one
warm-up of each measurement, then the engines alternate A B A B for --reps rounds;
medians are reported. Without llama_cpp installed only ffnskip is measured.
See bench/README.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import checkout  # noqa: E402

checkout.use()   # a built checkout wins over an installed ffnskip

import report    # noqa: E402
import roofline  # noqa: E402

ENGINES = ("ffnskip", "llama.cpp")
DEFAULT_FORMATS = ("Q4_1", "Q8_0", "F16")
Q4_K_M_PARTS = REPO_ROOT / "tests" / "data" / "models" / "SmolLM2-135M-Instruct.Q4_K_M.parts"

# Plain English prose, repeated and cut to the exact prompt length in tokens.
PROMPT_TEXT = (
    "The history of the city begins with a small settlement on the river, where traders "
    "exchanged grain, salt and wool. Over the centuries the town grew into a market centre "
    "with a stone bridge, a cathedral and a university that drew students from distant "
    "countries. Its citizens argued about taxes, built canals, survived floods and fires, "
    "and wrote down what they saw in letters and chronicles that still survive today. "
)
DECODE_PROMPT = "Once upon a time, in a quiet village by the sea,"


# ---- model files ------------------------------------------------------------------

def bench_cache_dir() -> pathlib.Path:
    from ffnskip import models
    return models.cache_dir() / "bench"


def load_converter():
    """tests/gguf_convert.py (re-encodes a GGUF with the gguf package), imported by path."""
    path = REPO_ROOT / "tests" / "gguf_convert.py"
    spec = importlib.util.spec_from_file_location("gguf_convert", path)
    if spec is None or not path.is_file():
        raise RuntimeError(f"{path} not found: cannot make format variants")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def variant(src: pathlib.Path, fmt: str, cache: pathlib.Path) -> pathlib.Path:
    """src re-encoded as fmt, made once into the cache directory (atomically)."""
    stem = src.name[:-len(".gguf")] if src.name.endswith(".gguf") else src.name
    for known in ("Q4_1", "Q4_0", "Q8_0", "F16", "F32", "BF16"):
        if stem.endswith("." + known):
            stem = stem[:-len(known) - 1]
    dst = cache / f"{stem}.{fmt}.gguf"
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    cache.mkdir(parents=True, exist_ok=True)
    log(f"making {dst.name} from {src.name} (once; cached in {cache})")
    fd, tmp = tempfile.mkstemp(suffix=".gguf.part", dir=cache)
    os.close(fd)
    try:
        load_converter().convert(str(src), tmp, fmt)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def q4_k_m(base: pathlib.Path) -> pathlib.Path:
    """llama.cpp's Q4_K_M of the default model, rebuilt once as the tests do
    (tests/q4_k_m_model.py) and cached beside the Q4_1 file."""
    path = base.parent / "SmolLM2-135M-Instruct.Q4_K_M.gguf"
    if not path.is_file():
        spec = importlib.util.spec_from_file_location("q4_k_m_model", REPO_ROOT / "tests" / "q4_k_m_model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        log(f"Q4_K_M: rebuilding {path.name} from the Q4_1 model and {Q4_K_M_PARTS.name}")
        module.rebuild(base, Q4_K_M_PARTS, path)
    return path


def default_models(formats: list[str]) -> list[pathlib.Path]:
    from ffnskip import models
    base = models.default_model_path()
    out = []
    for fmt in formats:
        if fmt == "Q4_K_M":
            out.append(q4_k_m(base))
        elif fmt == "Q4_1":
            out.append(base)
        else:
            out.append(variant(base, fmt, bench_cache_dir()))
    return out


def resolve_models(names: list) -> list[pathlib.Path]:
    """--models entries: an existing file as given, a registry name (`ffnskip models`:
    qwen2.5-coder-1.5b, ...) as its cached GGUF, fetched once; anything else as given
    (main() reports it missing)."""
    out = []
    for m in names:
        text = os.fspath(m)
        if not os.path.lexists(text):
            from ffnskip import models
            if text in models.REGISTRY:
                out.append(pathlib.Path(models.model_path(text)))
                continue
        out.append(pathlib.Path(text))
    return out


# a weight type at the end of a file name: SmolLM2-135M-Instruct.Q4_1, qwen2.5-...-q4_k_m
_TYPE_IN_NAME = re.compile(r"(?:^|[.\-_])((?:I?Q\d(?:_[A-Z0-9]+)*)|F16|F32|BF16)$", re.IGNORECASE)


def format_name(path: pathlib.Path) -> str:
    """The file's weight type (Q4_1, Q4_K_M, F16, ...): from the end of its name, else
    from its general.file_type, else the name itself."""
    name = path.name[:-5] if path.name.endswith(".gguf") else path.name
    m = _TYPE_IN_NAME.search(name)
    if m:
        return m.group(1).upper()
    try:
        from gguf import GGUFReader, LlamaFileType
        field = GGUFReader(str(path)).fields["general.file_type"]
        ftype = LlamaFileType(int(field.parts[field.data[0]][0]))
        return ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except Exception:  # no gguf package, no such key, not a GGUF: the name says it
        return name


def warm_page_cache(path: pathlib.Path) -> None:
    """Read the file once so neither engine pays the disk for the other."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# ---- workers ----------------------------------------------------------------------

class Worker:
    """A worker.py process; request() sends one JSON line and reads one back."""

    def __init__(self, engine: str, env: dict) -> None:
        self.engine = engine
        self.errlog = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py"), engine], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.errlog, text=True, env=env, bufsize=1)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.errlog.seek(0)
            tail = self.errlog.read()[-800:].strip()
            return {"error": f"{self.engine} worker exited with status {code}" + (f": {tail}" if tail else "")}
        return json.loads(line)

    def request(self, **req) -> dict:
        if self.proc.poll() is not None:
            return {"error": f"{self.engine} worker is not running"}
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        self.errlog.close()


def worker_env() -> dict:
    env = checkout.env()
    # Both engines get exactly the threads they are asked for.
    for var in ("OMP_NUM_THREADS", "GOMP_CPU_AFFINITY", "OMP_PROC_BIND"):
        env.pop(var, None)
    return env


def llama_cpp_status() -> str | None:
    """None when llama_cpp is importable, else why not."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "the llama_cpp package (llama-cpp-python) is not installed"
    return None


# ---- one configuration --------------------------------------------------------------

def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def run_config(path: pathlib.Path, threads: int, engines: list[str], args, env: dict) -> dict:
    """All measurements of one (file, threads) pair, engines alternating."""
    warm_page_cache(path)
    res = {"model": str(path), "format": format_name(path), "threads": threads,
           "loadavg_start": os.getloadavg(), "engines": {}}
    workers: dict[str, Worker] = {}
    for eng in engines:
        w = Worker(eng, env)
        r = w.hello if "error" in w.hello else w.request(
            op="load", model=str(path), threads=threads, n_ctx=args.n_ctx, load_reps=args.load_reps)
        entry = {"samples": {"prompt_tps": [], "decode_tps": [], "cpu_busy": []}}
        if "error" in r:
            entry["error"] = r["error"]
            w.close()
        else:
            entry["load_seconds"] = r["load_seconds"]
            entry["version"] = r["version"]
            entry["base_rss_kb"] = w.hello.get("vm_rss_import_kb")
            workers[eng] = w
        res["engines"][eng] = entry

    # the same token ids for every engine, from the first one that loaded
    if workers:
        first = next(iter(workers.values()))
        ids = first.request(op="tokenize", text=PROMPT_TEXT * (4 * args.prompt_tokens // 60 + 4))
        dec = first.request(op="tokenize", text=DECODE_PROMPT)
        if "error" in ids or "error" in dec:
            err = ids.get("error") or dec.get("error")
            for eng in list(workers):
                res["engines"][eng]["error"] = f"tokenize: {err}"
                workers.pop(eng).close()
        else:
            prompt_ids = ids["ids"][:args.prompt_tokens]
            decode_ids = dec["ids"]
            res["prompt_tokens"] = len(prompt_ids)
            res["decode_tokens"] = args.decode_tokens
            def measure(eng: str, op: str) -> dict | None:
                w = workers[eng]
                r = (w.request(op="prompt", ids=prompt_ids) if op == "prompt" else
                     w.request(op="decode", ids=decode_ids, n=args.decode_tokens))
                entry = res["engines"][eng]
                if "error" in r:
                    entry["error"] = f"{op}: {r['error']}"
                    workers.pop(eng).close()
                    return None
                if op == "decode":
                    entry["tokens"] = r["tokens"]
                return r

            t0 = time.perf_counter()
            for eng in list(workers):  # one warm-up of each measurement
                for op in ("prompt", "decode"):
                    if eng in workers:
                        measure(eng, op)
            round_s = time.perf_counter() - t0
            reps = args.reps
            if args.config_budget_s and round_s > 0:
                reps = max(1, min(reps, int(args.config_budget_s / round_s)))
                if reps < args.reps:
                    log(f"  one round takes {round_s:.0f} s: {reps} round(s) instead of {args.reps} "
                        f"(--config-budget-s {args.config_budget_s:g})")
            res["reps"] = reps
            for _ in range(reps):  # A B A B
                for op in ("decode", "prompt"):
                    for eng in list(workers):
                        r = measure(eng, op)
                        if r is None:
                            continue
                        s = res["engines"][eng]["samples"]
                        s[f"{op}_tps"].append(r["n"] / r["seconds"])
                        # CPU time / (wall time x threads): below 1 = the engine waited for a core
                        s["cpu_busy"].append(r["cpu_seconds"] / (r["seconds"] * threads))
                        if args.verbose:
                            log(f"  {eng:9s} {op:6s} {r['n'] / r['seconds']:8.1f} tok/s")

    for eng, w in workers.items():
        rss = w.request(op="rss")
        res["engines"][eng]["peak_rss_kb"] = rss.get("vm_hwm_kb")
        w.close()
    for entry in res["engines"].values():
        s = entry["samples"]
        entry["prompt_tps"] = median(s["prompt_tps"])
        entry["decode_tps"] = median(s["decode_tps"])
        entry["load_s"] = median(entry.get("load_seconds", []))
        entry["cpu_busy"] = median(s["cpu_busy"])
    toks = [e.get("tokens") for e in res["engines"].values() if e.get("tokens")]
    if len(toks) == 2:  # greedy agreement: same tokens up to the first divergence
        n = next((i for i, (a, b) in enumerate(zip(*toks)) if a != b), min(map(len, toks)))
        res["greedy_agree"] = n
    res["loadavg_end"] = os.getloadavg()
    return res


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+",
                   help="GGUF files or registered model names (`ffnskip models`: qwen2.5-coder-1.5b, ...; "
                        "fetched once into the cache); default: SmolLM2-135M Q4_1 and --formats variants of it")
    p.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS) + ["Q4_K_M"],
                   help="variants of the default model: Q4_1 (as shipped), re-encodings made "
                        "with gguf (Q8_0, F16, F32, Q4_0, ...), Q4_K_M (llama.cpp's, rebuilt from tests/data). "
                        "Default: %(default)s")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, default=5, help="alternating rounds per configuration")
    p.add_argument("--decode-tokens", type=int, default=96)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--config-budget-s", type=float, default=0,
                   help="seconds per (file, threads) configuration: fewer rounds (at least 1) "
                        "when the warm-up round shows they would not fit; 0 = always --reps")
    p.add_argument("--load-reps", type=int, default=3, help="timed loads per worker (median reported)")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--no-bandwidth", action="store_true", help="skip the roofline measurement")
    p.add_argument("--bandwidth-mib", type=int, default=512)
    p.add_argument("--markdown", type=pathlib.Path)
    p.add_argument("--json", type=pathlib.Path)
    p.add_argument("--plot", type=pathlib.Path)
    p.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = p.parse_args(argv)
    if args.reps < 1 or args.decode_tokens < 1 or args.prompt_tokens < 1:
        p.error("--reps, --decode-tokens and --prompt-tokens must be >= 1")
    if args.n_ctx < max(args.prompt_tokens, 64 + args.decode_tokens):
        p.error("--n-ctx must hold the prompt and the decoded tokens")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    engines = list(args.engines)
    notes = []
    if "llama.cpp" in engines:
        why = llama_cpp_status()
        if why:
            msg = f"llama.cpp not measured: {why} (see bench/README.md); ffnskip only"
            log(msg)
            notes.append(msg)
            engines.remove("llama.cpp")
    models = resolve_models(args.models) if args.models else default_models(args.formats)
    for m in [m for m in models if not m.is_file()]:
        log(f"{m}: no such file; skipped")
    models = [m for m in models if m.is_file()]
    env = worker_env()

    t_start = time.time()
    cmd_args = sys.argv[1:] if argv is None else list(argv)
    meta = {"command": " ".join(["python", os.path.relpath(__file__)] + cmd_args),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
            "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg(), "reps": args.reps, "decode_tokens": args.decode_tokens,
            "prompt_tokens": args.prompt_tokens, "engines": engines, "notes": notes}

    bandwidth = {}
    if not args.no_bandwidth:
        for t in sorted(set(args.threads)):
            bw = roofline.read_bandwidth(t, mib=args.bandwidth_mib)
            bandwidth[t] = bw
            log(f"read bandwidth, {t} thread(s): best {bw['best'] / 1e9:.2f} GB/s, median {bw['median'] / 1e9:.2f} GB/s")
    bytes_per_tok = {}
    for m in models:
        try:
            bytes_per_tok[str(m)] = roofline.weight_bytes_per_token(str(m))
        except Exception as e:  # a file the gguf package cannot read: no roofline for it
            log(f"{m.name}: weight bytes unknown ({e})")

    results = []
    for m in models:
        for t in args.threads:
            log(f"{m.name}, {t} thread(s): {', '.join(engines)}; load average {os.getloadavg()[0]:.2f}")
            r = run_config(m, t, engines, args, env)
            wb = bytes_per_tok.get(str(m))
            if wb and t in bandwidth:
                r["weight_bytes_per_token"] = wb["total"]
                r["roofline_tps"] = bandwidth[t]["best"] / wb["total"]
            results.append(r)
            for eng, e in r["engines"].items():
                if "error" in e:
                    log(f"  {eng}: ERROR {e['error']}")
                else:
                    log(f"  {eng:9s} decode {e['decode_tps']:7.1f} tok/s  prompt {e['prompt_tps']:7.1f} tok/s")
    meta["loadavg_end"] = os.getloadavg()
    meta["seconds"] = round(time.time() - t_start, 1)

    data = {"meta": meta, "bandwidth": {str(k): v for k, v in bandwidth.items()},
            "weight_bytes": bytes_per_tok, "results": results}
    md = report.markdown(data)
    print(md)
    if args.markdown:
        args.markdown.write_text(md)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    if args.plot:
        report.plot(data, args.plot)
    return 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
