"""Perplexity on WikiText-2 test, teacher-forced with the skip policy active exactly as
in generation (Session.score: the first ``warmup`` scored tokens run the full model,
then the policy decides per token)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..calibrate import split_windows
from .common import Accum, Cell, Progress, Settings


def windows(ids: Sequence[int], prompt: int, window: int, n_tokens: int) -> list[tuple[list[int], list[int]]]:
    """Consecutive (context, scored) windows from the start of ids covering n_tokens
    scored tokens; the last one may be shorter."""
    out = split_windows(ids, prompt, window, n_tokens)
    if sum(len(scored) for _, scored in out) < n_tokens:
        raise ValueError(f"the text has {len(ids)} tokens: too few for {n_tokens} scored tokens "
                         f"in windows of {prompt} + {window}")
    return out


def prepare(session: Any, text: str, settings: Settings) -> list[tuple[list[int], list[int]]]:
    n_windows = math.ceil(settings.ppl_tokens / settings.ppl_window)
    # tokenize only the head of the split: about 4 characters per token, with room
    head = text[:max(4096, 8 * n_windows * (settings.ppl_prompt + settings.ppl_window))]
    return windows(session.tokenize(head, add_special=False), settings.ppl_prompt, settings.ppl_window,
                   settings.ppl_tokens)


def run(session: Any, cells: Sequence[Cell], wins: Sequence[tuple[list[int], list[int]]],
        progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for cell in cells:
        nll, n, acc = 0.0, 0, Accum()
        for prompt, cont in wins:
            s, stats = session.score(prompt, cont, skip=cell.spec(len(cont)))
            nll += s
            n += len(cont)
            acc.add(stats)
        results[cell.key] = {"ppl": math.exp(nll / n), "nll": nll, "tokens": n, "windows": len(wins),
                             "_accum": acc}
        if progress:
            progress.step(f"ppl {cell.key}: {results[cell.key]['ppl']:.2f}")
    return results
