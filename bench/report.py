"""Markdown tables and a bar chart from bench_speed.py's result dictionary."""
from __future__ import annotations

import pathlib
import sys


def _num(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _spread(entry: dict, key: str) -> str:
    xs = entry.get("samples", {}).get(key) or []
    med = entry.get(key)
    if med is None:
        return "-"
    if len(xs) < 2:
        return f"{med:.1f}"
    return f"{med:.1f} ({min(xs):.0f}-{max(xs):.0f})"


def _ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [
        f"Run {meta['date']} on {meta['cpu']} ({meta['cores']} cores), Python {meta['python']}; "
        f"{meta['seconds']} s.",
        f"Load average (1/5/15 min) at start {_loadavg(meta['loadavg_start'])}, "
        f"at end {_loadavg(meta['loadavg_end'])}.",
        f"Medians of {meta['reps']} alternating rounds (fewer where the rounds column says so) after one warm-up each; decode = "
        f"{meta['decode_tokens']} greedy tokens after a short prompt, prompt = one "
        f"{meta['prompt_tokens']}-token batch on an empty cache.",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    versions = sorted({e["version"] for r in data["results"] for e in r["engines"].values() if e.get("version")})
    if versions:
        lines += ["Engines: " + "; ".join(versions) + ".", ""]
    for note in meta.get("notes", []):
        lines += [f"**Note: {note}.**", ""]
    for t, bw in sorted(data.get("bandwidth", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"- Read bandwidth with {t} thread(s): {bw['best'] / 1e9:.2f} GB/s best, "
                     f"{bw['median'] / 1e9:.2f} GB/s median (numpy sum over {bw['array_mib']} MiB).")
    for path, wb in data.get("weight_bytes", {}).items():
        lines.append(f"- {pathlib.Path(path).name}: {wb['total'] / 1e6:.1f} MB of weights read per "
                     f"decoded token ({', '.join(wb['types'])}).")
    lines += [
        "",
        "| format | threads | rounds | engine | decode tok/s | prompt tok/s | load ms | peak RSS MiB "
        "| roofline tok/s | decode / roofline | CPU busy |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        roof = r.get("roofline_tps")
        for eng, e in r["engines"].items():
            if "error" in e and e.get("decode_tps") is None:
                lines.append(f"| {r['format']} | {r['threads']} | - | {eng} | error: {_cell(e['error'])} "
                             "| | | | | | |")
                continue
            load_ms = None if e.get("load_s") is None else 1000 * e["load_s"]
            rss = None if e.get("peak_rss_kb") is None else e["peak_rss_kb"] / 1024
            frac = None if roof is None or e.get("decode_tps") is None else 100 * e["decode_tps"] / roof
            lines.append(
                f"| {r['format']} | {r['threads']} | {len(e['samples']['decode_tps'])} | {eng} "
                f"| {_spread(e, 'decode_tps')} "
                f"| {_spread(e, 'prompt_tps')} | {_num(load_ms, '{:.0f}')} | {_num(rss, '{:.0f}')} "
                f"| {_num(roof, '{:.0f}')} | {_num(frac, '{:.0f}%')} "
                f"| {_num(None if e.get('cpu_busy') is None else 100 * e['cpu_busy'], '{:.0f}%')} |")
    lines += ["", "Columns: medians (min-max over the rounds); load = model open + session/context; "
              "peak RSS = worker VmHWM (interpreter and numpy included); roofline = read bandwidth / "
              "weight bytes per token; CPU busy = CPU time / (wall time x threads), low when the "
              "engine waited for a core."]
    pairs = [r for r in data["results"] if {"ffnskip", "llama.cpp"} <= set(r["engines"])]
    if pairs:
        lines += [
            "",
            "ffnskip / llama.cpp (above 1 = ffnskip faster for tok/s, larger for load time and RSS):",
            "",
            "| format | threads | decode | prompt | load time | peak RSS | greedy tokens equal |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in pairs:
            a, b = r["engines"]["ffnskip"], r["engines"]["llama.cpp"]
            agree = r.get("greedy_agree")
            agree_s = "-" if agree is None else f"{agree}/{r.get('decode_tokens')}"
            lines.append(
                f"| {r['format']} | {r['threads']} | {_ratio(a.get('decode_tps'), b.get('decode_tps'))} "
                f"| {_ratio(a.get('prompt_tps'), b.get('prompt_tps'))} "
                f"| {_ratio(a.get('load_s'), b.get('load_s'))} "
                f"| {_ratio(a.get('peak_rss_kb'), b.get('peak_rss_kb'))} | {agree_s} |")
    return "\n".join(lines) + "\n"


def _loadavg(la) -> str:
    return "/".join(f"{x:.2f}" for x in la)


def _cell(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= 120 else text[:117] + "..."


def plot(data: dict, path: pathlib.Path) -> bool:
    """Grouped bars of decode and prompt tokens/s; the decode roofline as a marker."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return False
    results = data["results"]
    engines = sorted({e for r in results for e in r["engines"]}, key=lambda e: (e != "ffnskip", e))
    labels = [f"{r['format']}\n{r['threads']} thr" for r in results]
    width = 0.8 / max(1, len(engines))
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 1.3 * len(results) + 2), 8))
    for ax, key, title in ((axes[0], "decode_tps", "decode tokens/s"),
                           (axes[1], "prompt_tps", "prompt tokens/s")):
        for k, eng in enumerate(engines):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(results))]
            ys = [r["engines"].get(eng, {}).get(key) or 0 for r in results]
            ax.bar(xs, ys, width, label=eng)
        if key == "decode_tps":
            roofs = [(i, r["roofline_tps"]) for i, r in enumerate(results) if r.get("roofline_tps")]
            if roofs:
                ax.hlines([y for _, y in roofs], [i - 0.45 for i, _ in roofs], [i + 0.45 for i, _ in roofs],
                          colors="black", linestyles="dashed", label="roofline (bandwidth / weight bytes)")
        ax.set_xticks(range(len(results)))
        ax.set_xticklabels(labels)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, 1.3 * max([ax.get_ylim()[1]] + [r.get("roofline_tps") or 0 for r in results]))
        ax.legend(fontsize="small", loc="upper left", ncol=3)
    meta = data["meta"]
    axes[0].set_title(f"{meta['cpu']}, {meta['cores']} cores; medians of up to {meta['reps']} rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
