"""The sweep: skip ratios x policies, every task on every cell, written as JSON, a
markdown table and PNG plots (metric vs requested ratio, one line per policy)."""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

from . import agreement, collapse, data, metrics, mtbench, perplexity, qa, summarize
from ..jsonfile import write_json_atomic
from .common import PROMPT_PRUNING, Accum, Cell, Progress, Settings

TASKS = ("ppl", "agreement", "qa", "summarize", "mtbench", "collapse")
PAPER_POLICIES = ("ffn_skip", "random", "static", "shortgpt", "skipdecode")
# Beyond the paper: the FFNs with the lowest single-ablation cost (fixed set), the
# cosine gate restricted to the cheapest FFNs, and the quality-budget calibration's
# ffn_skip setting and its cheapest-FFN alternative.
EXTRA_POLICIES = ("cheapest", "cheapest_gate", "budget")
# ffn_skip's defaults, for the cells that derive a budget from them
GATE_COLD, GATE_REFRESH = 5, 6
POLICIES = PAPER_POLICIES + EXTRA_POLICIES
# With a surrogate file, these also run as "<policy>+sur": the same left-out FFNs, each
# replaced by its low-rank surrogate.
SURROGATE_POLICIES = ("ffn_skip", "cheapest", "cheapest_gate")
RATIOS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40)
RESULT_FORMAT = "ffnskip-eval"
NEEDS_ROUGE = ("agreement", "summarize", "mtbench")


# ---- cells ------------------------------------------------------------------------
def make_cells(policies: Sequence[str], ratios: Sequence[float], *, n_layer: int, warmup: int,
               ranking: Sequence[int] | None = None, budget_profiles: Sequence[dict[str, Any]] = (),
               check_zero: bool = False, surrogates: str | None = None) -> list[Cell]:
    """The sweep's cells: the full model first, then each policy at each nonzero
    ratio (at ratio 0 too when check_zero, for the policies whose ratio-0 setting is
    not simply the full model), cells that leave prompts alone before those that
    prune them. ``ranking``: layers cheapest first (calibration's single-FFN ablation
    order) for shortgpt and cheapest; ``budget_profiles``: calibration profiles made
    with max_ppl_increase; ``surrogates``: a sidecar file, which adds a "+sur" twin of
    every cell of SURROGATE_POLICIES."""
    cells = [Cell("full", 0.0, {"policy": "full"})]
    for policy in policies:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
        if policy == "budget":
            for p in budget_profiles:
                budget = p["max_ppl_increase"]
                fs = dict(p["config"], warmup=warmup)
                cells.append(Cell("budget_ffn_skip", budget, fs, label=f"budget_ffn_skip@{budget:g}"))
                alt = p["layers_alternative"]["layers"]
                if alt:
                    cells.append(Cell("budget_layers", budget, {"policy": "layers", "layers": list(alt), "warmup": warmup},
                                      label=f"budget_layers@{budget:g}"))
            continue
        for r in ratios:
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"ratio {r} is outside [0, 1]")
            if policy in ("shortgpt", "cheapest"):
                k = int(round(r * n_layer))
                if k == 0:
                    continue   # nothing removed: the full model
                if ranking is None:
                    raise ValueError(f"policy {policy} needs the calibration's layer ranking")
                layers = sorted(int(l) for l in ranking[:k])
                pol = "shortgpt" if policy == "shortgpt" else "layers"
                cells.append(Cell(policy, r, {"policy": pol, "layers": layers, "warmup": warmup}))
            elif policy == "cheapest_gate":
                # ffn_skip at ratio r whose gate may only leave out the 2 x max_skip
                # cheapest non-cold FFNs (all of them once that is the whole region)
                max_skip = int(round(r * n_layer * GATE_REFRESH / (GATE_REFRESH - 1)))
                if max_skip == 0:
                    continue
                if ranking is None:
                    raise ValueError(f"policy {policy} needs the calibration's layer ranking")
                non_cold = [int(l) for l in ranking if GATE_COLD <= int(l) < n_layer - GATE_COLD]
                allowed = sorted(non_cold[:min(len(non_cold), 2 * max_skip)])
                cells.append(Cell(policy, r, {"policy": "ffn_skip", "target_ratio": r, "layers": allowed,
                                              "warmup": warmup, "seed": 0}))
            elif r > 0 or check_zero:
                cells.append(Cell(policy, r, {"policy": policy, "target_ratio": r, "warmup": warmup, "seed": 0}))
    if surrogates:
        cells += [Cell(c.name + "+sur", c.ratio, dict(c.config, surrogates=os.path.abspath(surrogates)))
                  for c in cells if c.name in SURROGATE_POLICIES]
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("repeated policy or ratio in the sweep")
    return [cells[0]] + [c for c in cells[1:] if not c.prunes_prompt] + [c for c in cells[1:] if c.prunes_prompt]


def check_extras(tasks: Sequence[str], plots: bool) -> None:
    """Fail before any work when an optional package the run needs is missing."""
    if any(t in NEEDS_ROUGE for t in tasks):
        metrics.require_rouge()
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError(f"plots need matplotlib: {metrics.EXTRA_HINT} (or pass --no-plots)") from None


# ---- the run ----------------------------------------------------------------------
def run_sweep(
    model: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tasks: Sequence[str] = TASKS,
    policies: Sequence[str] = PAPER_POLICIES,
    ratios: Sequence[float] = RATIOS,
    limit: int | None = None,
    threads: int = 0,
    settings: Settings | None = None,
    budgets: Sequence[float] = (0.1,),
    profile: str | os.PathLike[str] | None = None,
    check_zero: bool = False,
    update: bool = False,
    plots: bool = True,
    progress: bool = True,
    command: str | None = None,
    surrogates: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run the tasks on every cell; write results.json, results.md, plots/*.png and
    mtbench/*.jsonl under ``out``; return the results.

    The layer ranking (shortgpt, cheapest) and the budget cells come from calibration
    on the package's built-in text sample (never the evaluation text): one
    ``calibrate(max_ppl_increase=b)`` per budget, or ``profile`` (a saved calibration
    profile) for the ranking alone.

    ``update``: when ``out`` already holds results, run only ``tasks`` again on its
    cells (same skip settings, no new calibration) and keep its other tasks' results.
    """
    from ..calibrate import calibrate, sample_text
    from ..session import Session

    t0 = time.perf_counter()
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r} (known: {', '.join(TASKS)})")
    check_extras(tasks, plots)
    settings = (settings or Settings()).limited(limit)
    out = pathlib.Path(out)
    data_dir = pathlib.Path(data_dir)

    # load every data file first: a missing one fails before the model work starts
    texts: dict[str, Any] = {}
    if "ppl" in tasks:
        texts["test"] = data.load_wikitext(data.data_file(data_dir, "wikitext_test"))
    if "agreement" in tasks or "collapse" in tasks:
        texts["valid"] = data.load_wikitext(data.data_file(data_dir, "wikitext_valid"))
    if "qa" in tasks:
        texts["qa"] = data.load_freshqa(data.data_file(data_dir, "freshqa"))[:settings.qa_questions]
    if "summarize" in tasks:
        texts["cnndm"] = data.load_cnndm(data.data_file(data_dir, "cnndm"))
    if "mtbench" in tasks:
        texts["mtbench"] = mtbench.select(data.load_mtbench(data.data_file(data_dir, "mtbench")),
                                          settings.mtbench_questions)

    previous = None
    if update and (out / "results.json").is_file():
        with open(out / "results.json", encoding="utf-8") as f:
            previous = json.load(f)
        if previous.get("format") != RESULT_FORMAT:
            raise ValueError(f"{out / 'results.json'}: not an ffnskip eval result file")

    session = Session(model, n_ctx=settings.n_ctx, n_threads=threads, n_threads_batch=threads)
    n_layer = int(session.model.hparams.n_layer)
    model_path = pathlib.Path(session.model.path)
    model_name = model_path.name[:-5] if model_path.name.endswith(".gguf") else model_path.name

    # calibration: layer ranking and budget settings
    ranking = None
    calibration: dict[str, Any] = {}
    budget_profiles = []
    needs_rank = previous is None and any(p in ("shortgpt", "cheapest", "cheapest_gate") for p in policies)
    if "budget" in policies and previous is None:
        for b in budgets:
            if progress:
                print(f"ffnskip eval: calibrating with a {100 * b:g}% perplexity budget on the built-in text sample",
                      file=sys.stderr, flush=True)
            prof = calibrate(session, sample_text(), max_ppl_increase=b, tokens=128, held_out_tokens=96,
                             generate_tokens=96, prompt_tokens=32, max_evals=4, progress=progress)
            budget_profiles.append(prof)
        if budget_profiles:
            ranking = budget_profiles[0]["ablation"]["order"]
    if needs_rank and ranking is None:
        if profile is not None:
            with open(profile, encoding="utf-8") as f:
                ranking = json.load(f)["ablation"]["order"]
        else:
            if progress:
                print("ffnskip eval: calibrating (single-FFN ablation costs) on the built-in text sample",
                      file=sys.stderr, flush=True)
            prof = calibrate(session, sample_text(), target_ratio=0.25, tokens=128, held_out_tokens=96,
                             generate_tokens=96, prompt_tokens=32, progress=progress)
            ranking = prof["ablation"]["order"]
            calibration["ranking_profile"] = _profile_summary(prof)
    for prof in budget_profiles:
        calibration.setdefault("budgets", []).append(_profile_summary(prof))
    if ranking is not None:
        calibration["ranking"] = [int(l) for l in ranking]
        calibration["ranking_source"] = str(profile) if profile is not None and not budget_profiles else \
            "single-FFN ablation costs on the built-in text sample (calibrate)"

    if previous is not None:
        cells = [Cell(c["name"], c["ratio"], c["config"], label=c["key"]) for c in previous["cells"]]
        calibration = previous.get("calibration", {})
    else:
        cells = make_cells(policies, ratios, n_layer=n_layer, warmup=settings.warmup, ranking=ranking,
                           budget_profiles=budget_profiles, check_zero=check_zero,
                           surrogates=os.fspath(surrogates) if surrogates else None)

    # prepared inputs (tokenized once)
    inputs: dict[str, Any] = {}
    if "ppl" in tasks:
        inputs["ppl"] = perplexity.prepare(session, texts["test"], settings)
    if "agreement" in tasks:
        inputs["agreement"] = agreement.prepare(session, texts["valid"], settings)
    if "qa" in tasks:
        inputs["qa"] = texts["qa"]
    if "summarize" in tasks:
        inputs["summarize"] = summarize.prepare(session, texts["cnndm"], settings)
    if "mtbench" in tasks:
        inputs["mtbench"] = texts["mtbench"]
    if "collapse" in tasks:
        inputs["collapse"] = collapse.prepare(session, texts["valid"], settings)

    def units(task: str) -> int:
        items = inputs[task]
        if task == "ppl":
            return len(cells)
        if task == "summarize":
            return len(items) * sum(summarize._applies(c, settings) for c in cells)
        return len(items) * len(cells)

    results: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "version": 1,
        "command": command,
        "model": {"file": model_path.name, "name": model_name, "n_layer": n_layer, "file_size": int(session.model.file_size)},
        "threads": threads,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        "limit": limit,
        "tasks": list(tasks),
        "policies": list(policies),
        "ratios": list(ratios),
        "calibration": calibration,
        "cells": [{"key": c.key, "name": c.name, "ratio": c.ratio, "config": c.config} for c in cells],
        "results": {},
        "summary": {},
    }
    run_record = {"command": command, "tasks": list(tasks), "settings": results["settings"], "limit": limit}
    if previous is not None:
        kept = {t: r for t, r in previous["results"].items() if t not in tasks}
        results.update({k: previous[k] for k in ("policies", "ratios", "threads") if k in previous})
        results["tasks"] = [t for t in TASKS if t in kept or t in tasks]
        results["runs"] = previous.get("runs", [{k: previous.get(k) for k in ("command", "tasks", "settings", "limit")}])
        results["results"] = kept
        results["task_seconds"] = dict(previous.get("task_seconds", {}))
        results["summary"] = _summary(cells, kept)
    else:
        results["runs"] = []
    results["runs"].append(run_record)
    out.mkdir(parents=True, exist_ok=True)
    bar = Progress(sum(units(t) for t in tasks), enabled=progress, desc="eval", unit="run")
    task_seconds: dict[str, float] = results.get("task_seconds", {})
    try:
        for task in tasks:
            t1 = time.perf_counter()
            if task == "ppl":
                r = perplexity.run(session, cells, inputs["ppl"], bar)
            elif task == "agreement":
                r = agreement.run(session, cells, inputs["agreement"], settings, bar)
            elif task == "qa":
                r = qa.run(session, cells, inputs["qa"], settings, bar)
            elif task == "summarize":
                r = summarize.run(session, cells, inputs["summarize"], settings, bar)
            elif task == "mtbench":
                r = mtbench.run(session, cells, inputs["mtbench"], settings, model_name, out / "mtbench", bar)
            else:
                r = collapse.run(session, cells, inputs["collapse"], settings, bar)
            task_seconds[task] = time.perf_counter() - t1
            for res in r.values():
                res["skip"] = res.pop("_accum").summary()
            results["results"][task] = r
            results["summary"] = _summary(cells, results["results"])
            results["task_seconds"] = task_seconds
            results["seconds"] = time.perf_counter() - t0
            write_json(results, out / "results.json")   # after every task: a partial run keeps its results
    finally:
        bar.close()
    (out / "results.md").write_text(markdown_table(results), encoding="utf-8")
    if plots:
        from .plots import plot_results

        plot_results(results, out / "plots")
    return results


def rewrite_reports(results_json: str | os.PathLike[str], plots: bool = True) -> dict[str, Any]:
    """Write results.md and plots/ again from a results.json (e.g. of an interrupted run)."""
    path = pathlib.Path(results_json)
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    if results.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path}: not an ffnskip eval result file")
    (path.parent / "results.md").write_text(markdown_table(results), encoding="utf-8")
    if plots:
        from .plots import plot_results

        plot_results(results, path.parent / "plots")
    return results


def _profile_summary(p: dict[str, Any]) -> dict[str, Any]:
    keep = ("mode", "target_ratio", "max_ppl_increase", "tokens", "full_ppl", "cold_regions", "config",
            "layers_alternative", "ffn_skip", "seconds")
    out = {k: p[k] for k in keep if k in p}
    out["ablation_cost"] = p["ablation"]["cost"]
    out["cosine_mean"] = p["cosine_profile"]["mean"]
    return out


def _summary(cells: Sequence[Cell], by_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per cell: the achieved skip ratio over every decode step of every task run so
    far, and the decode speed over the generating tasks."""
    out = {}
    for cell in cells:
        total = Accum()
        for task, r in by_task.items():
            s = r.get(cell.key, {}).get("skip")
            if not s:
                continue
            a = Accum(ffn_total=s["ffn_total"], ffn_skipped=s["ffn_skipped"],
                      generated=s["generated_tokens"], decode_seconds=s["decode_seconds"])
            total.merge(a)
        s = total.summary()
        out[cell.key] = {"name": cell.name, "ratio": cell.ratio, "skip_ratio": s["skip_ratio"],
                         "decode_tokens_per_second": s["decode_tokens_per_second"],
                         "generated_tokens": s["generated_tokens"]}
    return out


def write_json(results: dict[str, Any], path: pathlib.Path) -> None:
    write_json_atomic(results, path, allow_nan=True)


# ---- the table --------------------------------------------------------------------
def _get(results: dict[str, Any], task: str, key: str, *path: str) -> Any:
    v: Any = results["results"].get(task, {}).get(key)
    for p in path:
        if not isinstance(v, dict):
            return None
        v = v.get(p)
    return v


def _fmt(v: Any, digits: int = 3, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if pct:
        return f"{100 * v:.1f}"
    return f"{v:.{digits}f}"


COLUMNS: list[tuple[str, str, str, tuple[str, ...], dict[str, Any]]] = [
    # header, task, description, path in the task's cell result, format
    ("ppl", "ppl", "WikiText-2 test perplexity", ("ppl",), {"digits": 2}),
    ("agree tok", "agreement", "token agreement with the full model", ("token_agreement",), {}),
    ("prefix", "agreement", "identical prefix (tokens)", ("identical_prefix",), {"digits": 1}),
    ("agree R-L", "agreement", "ROUGE-L against the full model's continuation", ("rouge_l",), {}),
    ("QA EM", "qa", "FreshQA exact match", ("exact_match",), {}),
    ("QA cont", "qa", "FreshQA answer alias contained", ("contains",), {}),
    ("sum R-L", "summarize", "CNN/DM ROUGE-L against the highlights", ("rouge_l_highlights",), {}),
    ("sum R-L full", "summarize", "CNN/DM ROUGE-L against the full model's summary", ("rouge_l_full",), {}),
    ("MT R-L full", "mtbench", "MT-Bench answers: ROUGE-L against the full model's", ("rouge_l_full",), {}),
    ("rep-4", "collapse", "repeated 4-gram rate of long generations", ("repeated_4gram_rate",), {}),
    ("dist-2", "collapse", "distinct-2 of long generations", ("distinct_2",), {}),
]


def markdown_table(results: dict[str, Any]) -> str:
    tasks = results["tasks"]
    cols = [c for c in COLUMNS if c[1] in tasks]
    lines = [f"# ffnskip eval: {results['model']['name']}", ""]
    commands = [r["command"] for r in results.get("runs", []) if r.get("command")] or \
        ([results["command"]] if results.get("command") else [])
    if commands:
        lines += ["Made by" + (" (the later commands re-ran the tasks they name):" if len(commands) > 1 else ":"),
                  "", "```", *commands, "```", ""]
    lines += ["`skip %` is the achieved share of FFN blocks skipped over every decode step of every task "
              "(measured, not requested); `tok/s` is the decode speed over the generating tasks.", ""]
    head = ["policy", "requested %", "skip %", "tok/s"] + [c[0] for c in cols]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * len(head)) + "|")
    for cell in results["cells"]:
        key = cell["key"]
        s = results["summary"].get(key, {})
        req = ("budget " + _fmt(cell["ratio"], pct=True) + "% ppl") if cell["name"].startswith("budget") else \
            _fmt(cell["ratio"], pct=True)
        row = [cell["name"], req, _fmt(s.get("skip_ratio"), pct=True), _fmt(s.get("decode_tokens_per_second"), 1)]
        for header, task, _, path, fmt in cols:
            row.append(_fmt(_get(results, task, key, *path), **fmt))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Columns:", ""]
    lines += [f"- `{c[0]}`: {c[2]}" for c in cols]
    if "summarize" in tasks:
        lines += ["", "Summarization by length bucket (ROUGE-L against the highlights / against the full model):", ""]
        lines.append("| policy | requested % | small | medium | large |")
        lines.append("|---|---|---|---|---|")
        for cell in results["cells"]:
            b = _get(results, "summarize", cell["key"], "buckets")
            if not b:
                continue
            row = [cell["name"], _fmt(cell["ratio"], pct=True)]
            for name in data.BUCKETS:
                x = b.get(name)
                row.append(f"{_fmt(x['rouge_l_highlights'])} / {_fmt(x['rouge_l_full'])}" if x else "–")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
