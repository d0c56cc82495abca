"""Teacher-forced perplexity of a text file (`ffnskip perplexity`), with a skip policy
active exactly as in generation.

The text is cut into consecutive windows of ``ctx`` tokens, each evaluated from an
empty cache; every token of a window but its first is scored, given the tokens
before it in the window. So the first tokens of each window (little context) count
too, unlike llama-perplexity, which scores only the second half of each window.
"""
from __future__ import annotations

import math
from typing import Any, Sequence


def windows(ids: Sequence[int], ctx: int, max_tokens: int | None = None) -> list[list[int]]:
    """Consecutive windows of ``ctx`` tokens (the last may be shorter, at least 2),
    holding at most ``max_tokens`` scored tokens in all."""
    if ctx < 2:
        raise ValueError(f"ctx must be >= 2, got {ctx}")
    out: list[list[int]] = []
    scored = 0
    for start in range(0, len(ids), ctx):
        w = list(ids[start:start + ctx])
        if max_tokens is not None:
            w = w[:max_tokens - scored + 1]
        if len(w) < 2:
            break
        out.append(w)
        scored += len(w) - 1
        if max_tokens is not None and scored >= max_tokens:
            break
    return out


def perplexity(session: Any, ids: Sequence[int], *, ctx: int = 512, skip: Any = None,
               max_tokens: int | None = None) -> dict[str, Any]:
    """Perplexity of token ids under ``skip`` (None = the session's setting)."""
    wins = windows(ids, min(ctx, session.n_ctx), max_tokens)
    if not wins:
        raise ValueError(f"the text gives {len(ids)} tokens: at least 2 are needed")
    nll, n = 0.0, 0
    totals = {"ffn_total": 0, "ffn_skipped": 0, "ffn_total_after_warmup": 0, "ffn_skipped_after_warmup": 0,
              "surrogates_run": 0}
    for w in wins:
        s, stats = session.score(w[:1], w[1:], skip=skip)
        nll += s
        n += len(w) - 1
        for key in totals:
            totals[key] += int(stats[key])
    return {
        "ppl": math.exp(nll / n),
        "nll": nll,
        "tokens": n,
        "windows": len(wins),
        "ctx": min(ctx, session.n_ctx),
        "skip_ratio": totals["ffn_skipped"] / totals["ffn_total"] if totals["ffn_total"] else 0.0,
        "skip_ratio_after_warmup": (totals["ffn_skipped_after_warmup"] / totals["ffn_total_after_warmup"]
                                    if totals["ffn_total_after_warmup"] else 0.0),
        "surrogates_run": totals["surrogates_run"],
    }
