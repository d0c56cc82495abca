"""PNG plots of a sweep: each metric against the requested skip ratio, one line per
policy (the full model is every line's point at ratio 0); budget cells are single
points at their measured skip ratio. matplotlib is imported only here."""
from __future__ import annotations

import os
import pathlib
from typing import Any

from .metrics import EXTRA_HINT

# (file, title, [(task, metric path, y label)])
FIGURES = [
    ("ppl.png", "WikiText-2 test perplexity (teacher-forced, skip active)",
     [("ppl", ("ppl",), "perplexity (log scale)")]),
    ("agreement.png", "Agreement with the full model (greedy continuations)",
     [("agreement", ("token_agreement",), "token agreement"),
      ("agreement", ("identical_prefix",), "identical prefix (tokens)"),
      ("agreement", ("rouge_l",), "ROUGE-L vs full")]),
    ("qa.png", "FreshQA (never-changing, short answers)",
     [("qa", ("exact_match",), "exact match"), ("qa", ("contains",), "alias contained")]),
    ("summarize.png", "CNN/DailyMail summarization",
     [("summarize", ("rouge_l_highlights",), "ROUGE-L vs highlights"),
      ("summarize", ("rouge_l_full",), "ROUGE-L vs full model")]),
    ("mtbench.png", "MT-Bench answers", [("mtbench", ("rouge_l_full",), "ROUGE-L vs full model")]),
    ("collapse.png", "Generation collapse (long greedy generations)",
     [("collapse", ("repeated_4gram_rate",), "repeated 4-gram rate"), ("collapse", ("distinct_2",), "distinct-2")]),
]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"plots need matplotlib: {EXTRA_HINT}") from None
    return plt


def _value(results: dict[str, Any], task: str, key: str, path: tuple[str, ...]) -> float | None:
    v: Any = results["results"].get(task, {}).get(key)
    for p in path:
        v = v.get(p) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) else None


def _lines(results: dict[str, Any], task: str, path: tuple[str, ...]) -> tuple[dict[str, list[tuple[float, float]]], list[tuple[str, float, float]]]:
    full = _value(results, task, "full", path)
    lines: dict[str, list[tuple[float, float]]] = {}
    points: list[tuple[str, float, float]] = []
    for cell in results["cells"]:
        if cell["name"] == "full":
            continue
        v = _value(results, task, cell["key"], path)
        if v is None:
            continue
        if cell["name"].startswith("budget"):
            x = results["summary"].get(cell["key"], {}).get("skip_ratio")
            if x is not None:
                points.append((cell["key"], 100 * x, v))
            continue
        line = lines.setdefault(cell["name"], [] if full is None else [(0.0, full)])
        line.append((100 * cell["ratio"], v))
    return lines, points


def plot_results(results: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[pathlib.Path]:
    plt = _pyplot()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    figures = list(FIGURES) + [("speed.png", "Achieved skip ratio and decode speed", [])]
    for name, title, panels in figures:
        if name == "speed.png":
            panels = [("_summary", ("skip_ratio",), "achieved skip % (all decode steps)"),
                      ("_summary", ("decode_tokens_per_second",), "decode tokens/s")]
        elif not any(t in results["results"] for t, _, _ in panels):
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
        for ax, (task, path, ylabel) in zip(axes[0], panels):
            if task == "_summary":
                view = {"results": {"_summary": results["summary"]}, "cells": results["cells"],
                        "summary": results["summary"]}
                lines, points = _lines(view, "_summary", path)
                scale = 100.0 if path == ("skip_ratio",) else 1.0
                lines = {k: [(x, y * scale) for x, y in v] for k, v in lines.items()}
                points = [(k, x, y * scale) for k, x, y in points]
            else:
                lines, points = _lines(results, task, path)
            for policy, pts in lines.items():
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=policy)
            for key, x, y in points:
                ax.scatter([x], [y], marker="*", s=80, label=key, zorder=3)
            if path == ("ppl",):
                ax.set_yscale("log")
            if path == ("skip_ratio",):
                ax.plot([0, 40], [0, 40], color="grey", linestyle=":", linewidth=1, label="requested")
            ax.set_xlabel("requested skip ratio (%)")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{title}\n{results['model']['name']}", fontsize=9)
        fig.tight_layout()
        path_out = out_dir / name
        fig.savefig(path_out, dpi=110)
        plt.close(fig)
        written.append(path_out)
    return written
