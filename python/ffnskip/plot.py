"""Plots of a calibration profile (matplotlib, imported only when a plot is drawn)."""
from __future__ import annotations

import os
from typing import Any, Mapping


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")   # files only; no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'ffnskip[plot]' (or matplotlib)") from e
    return plt


def plot_profile(profile: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Two panels: the per-layer FFN cosine profile like the paper's Figure 2 (mean line,
    p10-p90 band, cold regions shaded) and the single-FFN ablation costs."""
    plt = _pyplot()
    cos = profile["cosine_profile"]
    n = len(cos["mean"])
    layers = list(range(n))
    cold = profile["cold_regions"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)

    ax1.fill_between(layers, cos["p10"], cos["p90"], color="tab:blue", alpha=0.25, label="p10-p90")
    ax1.plot(layers, cos["mean"], color="tab:blue", marker="o", markersize=3, label="mean")
    for lo, hi in ((0, cold["cold_start"]), (n - cold["cold_end"], n)):
        if hi > lo:
            ax1.axvspan(lo - 0.5, hi - 0.5, color="tab:red", alpha=0.15, lw=0)
            ax2.axvspan(lo - 0.5, hi - 0.5, color="tab:red", alpha=0.15, lw=0)
    ax1.axhline(cold["cutoff"], color="tab:red", ls=":", lw=1, label=f"cold cutoff {cold['cutoff']:.3f}")
    threshold = profile.get("config", {}).get("threshold")
    if threshold is not None:
        ax1.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax1.set_ylabel("cos(residual after FFN, before)")
    model = os.path.basename(profile.get("model", {}).get("path", "model"))
    ax1.set_title(f"{model}: FFN cosine over {profile['tokens']['calibration']} tokens (red: cold)")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.grid(alpha=0.3)

    costs = [100.0 * c for c in profile["ablation"]["cost"]]
    ax2.bar(layers, costs, color=["tab:red" if c > 0 else "tab:green" for c in costs])
    ax2.set_ylabel("held-out ppl increase (%)\nwith only this FFN skipped")
    ax2.set_xlabel("layer")
    ax2.set_yscale("symlog", linthresh=10)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)
