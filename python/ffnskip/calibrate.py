"""Calibration: measure where a model's FFN blocks are saturated and pick skip settings.

One calibration (``calibrate``) measures, on plain text:

1. the cosine profile: cos(residual after the FFN add, residual before it) of the
   full model, per decode step and layer (the paper's Figure 2), summarised per layer
   as mean and p10 / p50 / p90;
2. the cold regions: the leading and trailing runs of layers whose mean cosine is
   below ``cutoff = min(cold_cutoff, median(layer means) - cold_margin)``; their FFNs
   always run (cold_start / cold_end);
3. single-FFN ablation costs: held-out perplexity with only layer l's FFN skipped
   (policy "layers"), for every l, next to the full model's;
4. with ``target_ratio``: the threshold (0.95 first, lower ones only when 0.95 cannot
   reach the target) and max_skip whose skip ratio, predicted from the recorded
   cosines and the schedule's arithmetic, is nearest the target; then the ratio is
   measured by greedy generation on held-out prompts and max_skip corrected;
5. with ``max_ppl_increase``: the ffn_skip setting with the most measured skipping
   whose held-out perplexity stays within (1 + p) x the full model's, and, as an
   alternative, the "layers" policy made of the FFNs with the lowest ablation cost
   that fits the same budget.

Every number in the profile is measured with the engine itself; predictions are
labelled as such.
"""
from __future__ import annotations

import math
import os
import pathlib
import time
from typing import Any, Sequence

import numpy as np

from .profiles import (AUTO_BUDGET, auto_profile_config, auto_profile_path,  # noqa: F401 - public here too
                       beside_model_path, cached_profile_path, save_profile)
from .progress import Progress

PROFILE_FORMAT = "ffnskip-calibration"
PROFILE_VERSION = 1

PAPER_THRESHOLD = 0.95
# Tried in order when the paper's threshold cannot reach a target ratio.
LOWER_THRESHOLDS = (0.9, 0.85, 0.8, 0.7, 0.5, 0.0)
# Tried in order by the quality search: higher thresholds open the gate less often.
BUDGET_THRESHOLDS = (0.95, 0.97, 0.98, 0.99, 0.995)

COLD_CUTOFF = 0.9
COLD_MARGIN = 0.05

SAMPLE_TEXT = "data/calibration_sample.txt"


# ---- progress --------------------------------------------------------------------
# ---- text windows ----------------------------------------------------------------
def split_windows(ids: Sequence[int], prompt_len: int, cont_len: int, n_tokens: int,
                  min_scored: int = 1) -> list[tuple[list[int], list[int]]]:
    """Consecutive (prompt, continuation) windows from the start of ids until n_tokens
    continuation tokens are covered or the text ends (a window needs at least
    min_scored continuation tokens); the last one may be shorter."""
    out: list[tuple[list[int], list[int]]] = []
    pos, left = 0, n_tokens
    while left > 0 and pos + prompt_len + min_scored <= len(ids):
        take = min(cont_len, left, len(ids) - pos - prompt_len)
        out.append((list(ids[pos:pos + prompt_len]), list(ids[pos + prompt_len:pos + prompt_len + take])))
        left -= take
        pos += prompt_len + take
    return out


def _windows(ids: Sequence[int], prompt_len: int, cont_len: int, n_tokens: int, what: str) -> list[tuple[list[int], list[int]]]:
    """split_windows with at least 16 scored tokens per window. Raises ValueError when
    the text is too short for one window."""
    out = split_windows(ids, prompt_len, cont_len, n_tokens, min_scored=16)
    if not out:
        raise ValueError(f"the {what} text is too short: {len(ids)} tokens, need at least {prompt_len + 16} "
                         f"({prompt_len} prompt + 16 scored)")
    return out


# ---- measurements ----------------------------------------------------------------
def _score(session: Any, windows: Sequence[tuple[list[int], list[int]]], spec: Any) -> dict[str, Any]:
    """Held-out perplexity of spec over the windows, and its skip ratios."""
    nll = 0.0
    n = 0
    skipped = total = skipped_after = total_after = 0
    for prompt, cont in windows:
        s, stats = session.score(prompt, cont, skip=spec)
        nll += s
        n += len(cont)
        skipped += stats["ffn_skipped"]
        total += stats["ffn_total"]
        skipped_after += stats["ffn_skipped_after_warmup"]
        total_after += stats["ffn_total_after_warmup"]
    return {
        "ppl": math.exp(nll / n),
        "nll": nll,
        "tokens": n,
        "skip_ratio": skipped / total if total else 0.0,
        "skip_ratio_after_warmup": skipped_after / total_after if total_after else 0.0,
    }


def _generate_ratio(session: Any, prompts: Sequence[list[int]], spec: Any, n_tokens: int) -> dict[str, Any]:
    """Greedy generation of n_tokens (spread over the prompts) with spec; the measured
    skip ratio over post-warm-up steps and over all steps."""
    room = min(session.n_ctx - len(p) for p in prompts)
    per_prompt = max(1, min(room, math.ceil(n_tokens / len(prompts))))
    skipped = total = skipped_after = total_after = generated = 0
    seconds = 0.0
    i = 0
    while generated < n_tokens:
        prompt = prompts[i % len(prompts)]
        i += 1
        c = session.generate(prompt, max_tokens=min(per_prompt, n_tokens - generated), temperature=0,
                             ignore_eos=True, skip=spec)
        s = c.stats
        if s["n_generated"] == 0:
            break
        generated += s["n_generated"]
        seconds += s["decode_seconds"]
        skipped += s["ffn_skipped"]
        total += s["ffn_total"]
        skipped_after += s["ffn_skipped_after_warmup"]
        total_after += s["ffn_total_after_warmup"]
    return {
        "generated_tokens": generated,
        "skip_ratio_after_warmup": skipped_after / total_after if total_after else 0.0,
        "skip_ratio": skipped / total if total else 0.0,
        "decode_tokens_per_second": generated / seconds if seconds > 0 else 0.0,
    }


def cosine_matrix(session: Any, windows: Sequence[tuple[list[int], list[int]]]) -> np.ndarray:
    """The full model's per-step, per-layer FFN cosines over the windows' continuations:
    shape (steps, n_layer)."""
    rows = []
    for prompt, cont in windows:
        _, stats = session.score(prompt, cont, skip={"policy": "full", "record_cosines": True})
        rows.append(np.asarray(stats["cosines"], dtype=np.float64))
    return np.concatenate(rows, axis=0)


def cosine_profile(cosines: np.ndarray) -> dict[str, list[float]]:
    """Per-layer mean and p10 / p50 / p90 of a (steps, n_layer) cosine matrix."""
    p10, p50, p90 = np.nanpercentile(cosines, [10, 50, 90], axis=0)
    return {
        "mean": [float(v) for v in np.nanmean(cosines, axis=0)],
        "p10": [float(v) for v in p10],
        "p50": [float(v) for v in p50],
        "p90": [float(v) for v in p90],
    }


def cold_regions(mean: Sequence[float], cold_cutoff: float = COLD_CUTOFF, cold_margin: float = COLD_MARGIN) -> dict[str, Any]:
    """Cold layers: the leading and the trailing run of layers whose mean cosine is
    below cutoff = min(cold_cutoff, median(mean) - cold_margin). A middle layer below
    the cutoff is reported but not made cold (the schedule has one contiguous warm
    region). At least one warm layer is always left."""
    m = np.asarray(mean, dtype=np.float64)
    n = len(m)
    cutoff = float(min(cold_cutoff, float(np.median(m)) - cold_margin))
    below = m < cutoff
    start = 0
    while start < n and below[start]:
        start += 1
    end = 0
    while end < n - start and below[n - 1 - end]:
        end += 1
    if start + end >= n:   # everything below the cutoff: keep the best layer warm
        best = int(np.argmax(m))
        start, end = best, n - 1 - best
    return {
        "rule": "leading and trailing runs of layers with mean cosine < min(cold_cutoff, median - cold_margin)",
        "cold_cutoff": cold_cutoff,
        "cold_margin": cold_margin,
        "cutoff": cutoff,
        "cold_start": int(start),
        "cold_end": int(end),
        "cold_layers": list(range(start)) + list(range(n - end, n)),
        "warm_layers_below_cutoff": [int(i) for i in np.nonzero(below)[0] if start <= i < n - end],
    }


def predict_ratio(cosines: np.ndarray, threshold: float, max_skip: int, cold_start: int, cold_end: int,
                  refresh_every: int) -> float:
    """The post-warm-up skip ratio ffn_skip would reach if every step's cosines were the
    full model's: the gate opens at the first layer in [max(0, cold_start - 1),
    n_layer - cold_end - 2] whose cosine >= threshold and skips the next max_skip FFNs,
    cut before the cold end; refresh steps (1 in refresh_every) skip nothing."""
    steps, n_layer = cosines.shape
    first, last = max(0, cold_start - 1), n_layer - cold_end - 2
    stop = n_layer - cold_end - 1
    if steps == 0 or last < first or max_skip <= 0:
        return 0.0
    hit = cosines[:, first:last + 1] >= threshold
    fired = hit.any(axis=1)
    gate = first + np.argmax(hit, axis=1)
    n_skipped = np.where(fired, np.clip(np.minimum(gate + max_skip, stop) - gate, 0, None), 0)
    share = (refresh_every - 1) / refresh_every if refresh_every > 0 else 1.0
    return float(share * n_skipped.mean() / n_layer)


def _choose_for_target(cosines: np.ndarray, target: float, cold_start: int, cold_end: int,
                       refresh_every: int) -> tuple[float, int, float]:
    """(threshold, max_skip, predicted ratio) nearest the target: the paper's threshold
    first, lower thresholds only when it cannot come within 0.02 of the target."""
    n_layer = cosines.shape[1]
    non_cold = n_layer - cold_start - cold_end
    best: tuple[float, int, float] | None = None
    for t in (PAPER_THRESHOLD, *LOWER_THRESHOLDS):
        preds = [(abs(predict_ratio(cosines, t, k, cold_start, cold_end, refresh_every) - target), k)
                 for k in range(0, non_cold + 1)]
        err, k = min(preds)
        cand = (t, k, predict_ratio(cosines, t, k, cold_start, cold_end, refresh_every))
        if best is None or err < abs(best[2] - target) - 1e-9:
            best = cand
        if err <= 0.02:
            break
    assert best is not None
    return best


# ---- the calibration ---------------------------------------------------------------
def _open_session(model_or_session: Any, n_ctx: int, n_threads: int) -> Any:
    from .session import Session

    if isinstance(model_or_session, Session):
        return model_or_session
    return Session(model_or_session, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads)


def _model_facts(session: Any) -> dict[str, Any]:
    path = session.model.path
    facts: dict[str, Any] = {"path": os.path.abspath(path), "file_size": int(session.model.file_size),
                             "n_layer": int(session.model.hparams.n_layer)}
    try:
        facts["mtime_ns"] = os.stat(path).st_mtime_ns
    except OSError:
        pass
    return facts


def _split_text(text: str) -> tuple[str, str]:
    """Calibration text without a separate held-out text: first half / second half,
    cut at a line break (or a space) near the middle."""
    mid = len(text) // 2
    cut = text.rfind("\n", 0, mid)
    if cut < len(text) // 4:
        cut = text.rfind(" ", 0, mid)
    if cut <= 0:
        cut = mid
    return text[:cut], text[cut:]


def calibrate(
    model_or_session: Any,
    text: str,
    *,
    held_out: str | None = None,
    target_ratio: float | None = None,
    max_ppl_increase: float | None = None,
    tokens: int = 256,
    held_out_tokens: int = 256,
    generate_tokens: int = 256,
    prompt_tokens: int = 64,
    window: int = 256,
    refresh_every: int = 6,
    warmup: int = -1,
    cold_cutoff: float = COLD_CUTOFF,
    cold_margin: float = COLD_MARGIN,
    max_evals: int = 10,
    n_ctx: int = 512,
    n_threads: int = 0,
    progress: bool = False,
    surrogates: str | None = None,
    policy: str = "ffn_skip",
) -> dict[str, Any]:
    """Calibrate skip settings for a model on plain text; returns the profile (a
    JSON-ready dict whose "config" object is a SkipConfig's fields).

    ``model_or_session``: a GGUF path, a loaded Model or a Session (its n_ctx must hold
    prompt_tokens + window + 1 and prompt_tokens + generate_tokens). ``text``: the
    calibration text (cosine profile); ``held_out``: a different text for perplexities
    and generation (default: the second half of ``text``, the first half calibrates).
    Give at most one of ``target_ratio`` (share of FFNs skipped after the warm-up;
    default 0.25 when neither is given) and ``max_ppl_increase`` (e.g. 0.02 = at most 2%
    above the full model's held-out perplexity).
    ``surrogates``: a sidecar of fitted FFN surrogates (``ffnskip.surrogate``); every
    setting is then searched and measured with them running in place of the left-out
    FFNs (the ablation costs too), and the chosen settings are also measured without.
    ``policy``: which result becomes the profile's config: "ffn_skip" (the gated
    window) or "layers" (a fixed set of the cheapest FFNs).
    """
    if policy not in ("ffn_skip", "layers"):
        raise ValueError(f"policy must be 'ffn_skip' or 'layers', got {policy!r}")
    with_sur: dict[str, Any] = {"surrogates": os.path.abspath(surrogates)} if surrogates else {}
    if target_ratio is not None and max_ppl_increase is not None:
        raise ValueError("give target_ratio or max_ppl_increase, not both")
    if target_ratio is None and max_ppl_increase is None:
        target_ratio = 0.25
    if target_ratio is not None and not 0.0 <= target_ratio <= 1.0:
        raise ValueError(f"target_ratio must be in [0, 1], got {target_ratio}")
    if max_ppl_increase is not None and not max_ppl_increase >= 0.0:
        raise ValueError(f"max_ppl_increase must be >= 0, got {max_ppl_increase}")
    for name, value in (("tokens", tokens), ("held_out_tokens", held_out_tokens), ("window", window)):
        if value < 16:
            raise ValueError(f"{name} must be >= 16, got {value}")
    if generate_tokens < 1 or prompt_tokens < 1:
        raise ValueError("generate_tokens and prompt_tokens must be >= 1")
    if held_out is None:
        text, held_out = _split_text(text)

    t0 = time.perf_counter()
    need_ctx = prompt_tokens + max(window, generate_tokens) + 1
    session = _open_session(model_or_session, max(n_ctx, need_ctx), n_threads)
    if session.n_ctx < prompt_tokens + 17:
        raise ValueError(f"the session's context ({session.n_ctx}) is too small: need at least "
                         f"prompt_tokens + 17 = {prompt_tokens + 17}")
    window = min(window, session.n_ctx - prompt_tokens - 1)   # a given session's context may be shorter
    n_layer = int(session.model.hparams.n_layer)
    cal_windows = _windows(session.tokenize(text), prompt_tokens, window, tokens, "calibration")
    held_windows = _windows(session.tokenize(held_out), prompt_tokens, window, held_out_tokens, "held-out")
    gen_prompts = [p for p, _ in held_windows]

    bar = Progress(enabled=progress, desc="calibrate", unit="pass")
    try:
        # 1. cosine profile of the full model
        cosines = cosine_matrix(session, cal_windows)
        bar.step(f"cosine profile over {cosines.shape[0]} tokens")
        profile_stats = cosine_profile(cosines)

        # 2. cold regions
        cold = cold_regions(profile_stats["mean"], cold_cutoff, cold_margin)
        cs, ce = cold["cold_start"], cold["cold_end"]

        # 3. full model and single-FFN ablations (batched passes)
        full = _score(session, held_windows, "full")
        bar.step(f"full model ppl {full['ppl']:.3f}")
        ablation_ppl = []
        for layer in range(n_layer):
            ablation_ppl.append(_score(session, held_windows, {"policy": "layers", "layers": [layer], **with_sur})["ppl"])
            bar.step(f"ablation of FFN {layer}")
        costs = [p / full["ppl"] - 1.0 for p in ablation_ppl]

        base = {"policy": "ffn_skip", "cold_start": cs, "cold_end": ce, "warmup": warmup,
                "refresh_every": refresh_every, **with_sur}

        def measure_ffn_skip(threshold: float, max_skip: int, generate: bool) -> dict[str, Any]:
            spec = {**base, "threshold": threshold, "max_skip": max_skip}
            m = _score(session, held_windows, spec)
            out = {"threshold": threshold, "max_skip": max_skip, "ppl": m["ppl"],
                   "ppl_increase": m["ppl"] / full["ppl"] - 1.0,
                   "score_skip_ratio_after_warmup": m["skip_ratio_after_warmup"],
                   "predicted_ratio": predict_ratio(cosines, threshold, max_skip, cs, ce, refresh_every)}
            bar.step(f"ffn_skip t={threshold} k={max_skip}: ppl {m['ppl']:.3f}")
            return add_generation(out) if generate else out

        def add_generation(out: dict[str, Any]) -> dict[str, Any]:
            spec = {**base, "threshold": out["threshold"], "max_skip": out["max_skip"]}
            g = _generate_ratio(session, gen_prompts, spec, generate_tokens)
            out.update({"measured_ratio": g["skip_ratio_after_warmup"], "measured_ratio_all_steps": g["skip_ratio"],
                        "generated_tokens": g["generated_tokens"],
                        "decode_tokens_per_second": g["decode_tokens_per_second"]})
            bar.step(f"generated {g['generated_tokens']} tokens: ratio {g['skip_ratio_after_warmup']:.3f}")
            return out

        def measure_layers(layers: Sequence[int]) -> dict[str, Any]:
            layers = sorted(int(l) for l in layers)
            if not layers:
                return {"layers": [], "ppl": full["ppl"], "ppl_increase": 0.0, "measured_ratio": 0.0}
            m = _score(session, held_windows, {"policy": "layers", "layers": layers, **with_sur})
            bar.step(f"layers {layers}: ppl {m['ppl']:.3f}")
            return {"layers": layers, "ppl": m["ppl"], "ppl_increase": m["ppl"] / full["ppl"] - 1.0,
                    "measured_ratio": m["skip_ratio"]}

        by_cost = [int(i) for i in np.argsort(costs, kind="stable")]
        search: list[dict[str, Any]] = []
        if target_ratio is not None:
            # 4. target ratio: predict from the cosines, then measure and correct max_skip
            threshold, max_skip, _ = _choose_for_target(cosines, target_ratio, cs, ce, refresh_every)
            non_cold = n_layer - cs - ce
            tried: dict[int, dict[str, Any]] = {}
            k = max_skip
            for _ in range(3):
                tried[k] = measure_ffn_skip(threshold, k, generate=True)
                search.append(tried[k])
                err = tried[k]["measured_ratio"] - target_ratio
                if abs(err) <= 0.02:
                    break
                nxt = k + (1 if err < 0 else -1)
                if nxt < 0 or nxt > non_cold or nxt in tried:
                    break
                k = nxt
            chosen = min(tried.values(), key=lambda r: (abs(r["measured_ratio"] - target_ratio), r["max_skip"]))
            n_fixed = int(round(target_ratio * n_layer))
            alternative = measure_layers(by_cost[:n_fixed])
            alternative["rule"] = f"the {n_fixed} FFNs with the lowest single-ablation cost (round(target x n_layer))"
        else:
            # 5. quality budget: the most measured skipping within (1 + p) x full
            assert max_ppl_increase is not None
            limit = full["ppl"] * (1.0 + max_ppl_increase)
            evals = 0
            fits: list[dict[str, Any]] = []
            non_cold = n_layer - cs - ce
            for threshold in BUDGET_THRESHOLDS:
                if evals >= max_evals:
                    break
                k_fail = None
                for k in range(1, non_cold + 1):
                    if evals >= max_evals:
                        break
                    if predict_ratio(cosines, threshold, k, cs, ce, refresh_every) <= 0.0:
                        break
                    r = measure_ffn_skip(threshold, k, generate=False)
                    evals += 1
                    search.append(r)
                    if r["ppl"] <= limit:
                        fits.append(r)
                    else:
                        k_fail = k
                        break
                if k_fail is None or k_fail > 1:
                    # a setting that fits with max_skip >= 1 (or nothing left to raise):
                    # higher thresholds only skip less
                    if fits:
                        break
            if fits:
                best = max(fits, key=lambda r: (r["score_skip_ratio_after_warmup"], -r["ppl"]))
                chosen = add_generation(dict(best))
            else:
                chosen = measure_ffn_skip(PAPER_THRESHOLD, 0, generate=True)
                chosen["note"] = "no ffn_skip setting with max_skip >= 1 met the budget: nothing is skipped"
            # the cheapest FFNs (by ablation cost), added one by one while the budget holds
            layers: list[int] = []
            alternative = measure_layers([])
            for layer in by_cost:
                if costs[layer] > max_ppl_increase:
                    break
                trial = measure_layers(layers + [layer])
                if trial["ppl"] > limit:
                    break
                layers.append(layer)
                alternative = trial
            alternative["rule"] = "cheapest FFNs by single-ablation cost, added while held-out ppl <= (1 + p) x full"
        if with_sur:
            # The same settings with plain skipping, for the side-by-side.
            plain = {k: v for k, v in base.items() if k != "surrogates"}
            m = _score(session, held_windows, {**plain, "threshold": chosen["threshold"], "max_skip": chosen["max_skip"]})
            chosen["ppl_without_surrogates"] = m["ppl"]
            chosen["ppl_increase_without_surrogates"] = m["ppl"] / full["ppl"] - 1.0
            if alternative["layers"]:
                m = _score(session, held_windows, {"policy": "layers", "layers": alternative["layers"]})
            else:
                m = full
            alternative["ppl_without_surrogates"] = m["ppl"]
            alternative["ppl_increase_without_surrogates"] = m["ppl"] / full["ppl"] - 1.0
            bar.step("the chosen settings without surrogates")
    finally:
        bar.close()

    config = {**base, "threshold": chosen["threshold"], "max_skip": chosen["max_skip"],
              "target_ratio": target_ratio if target_ratio is not None else chosen["measured_ratio"]}
    alternative["config"] = {"policy": "layers", "layers": alternative["layers"], "warmup": warmup,
                             "refresh_every": refresh_every, **with_sur}
    if policy == "layers":
        config = dict(alternative["config"])
    return {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "model": _model_facts(session),
        "n_layer": n_layer,
        "mode": "target_ratio" if target_ratio is not None else "max_ppl_increase",
        "policy": policy,
        "surrogates": with_sur.get("surrogates"),
        "target_ratio": target_ratio,
        "max_ppl_increase": max_ppl_increase,
        "tokens": {
            "calibration": int(cosines.shape[0]),
            "held_out": int(full["tokens"]),
            "prompt": prompt_tokens,
            "window": window,
            "generated": int(chosen.get("generated_tokens", 0)),
        },
        "n_ctx": session.n_ctx,
        "cosine_profile": profile_stats,
        "cold_regions": cold,
        "full_ppl": full["ppl"],
        "ablation": {"ppl": ablation_ppl, "cost": costs, "order": by_cost},
        "ffn_skip": {**chosen, "ppl_full": full["ppl"]},
        "search": search,
        "layers_alternative": alternative,
        "seconds": time.perf_counter() - t0,
        "config": config,
    }


# ---- the built-in text sample ----------------------------------------------------
def sample_text() -> str:
    """The built-in calibration sample (about 5.6 KB of plain English prose written for
    this package and placed in the public domain)."""
    return (pathlib.Path(__file__).resolve().parent / SAMPLE_TEXT).read_text(encoding="utf-8")
