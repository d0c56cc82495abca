"""Generation collapse (the paper's "token collapse"): long greedy generations from
held-out prompts, measured by the repeated 4-gram rate and distinct-1 / distinct-2
over the generated token ids."""
from __future__ import annotations

from typing import Any, Sequence

from . import metrics
from .common import Accum, Cell, Progress, Settings
from .data import wikitext_paragraphs


def prepare(session: Any, valid_text: str, settings: Settings) -> list[list[int]]:
    """Prompts from the last validation paragraphs (the agreement task uses the first)."""
    out = []
    for para in reversed(wikitext_paragraphs(valid_text)):
        ids = session.tokenize(para, add_special=False)
        if len(ids) >= settings.collapse_prompt_tokens:
            out.append(ids[:settings.collapse_prompt_tokens])
        if len(out) == settings.collapse_generations:
            break
    if len(out) < settings.collapse_generations:
        raise ValueError(f"WikiText-2 validation has only {len(out)} usable paragraphs")
    return out


def run(session: Any, cells: Sequence[Cell], prompts: Sequence[list[int]], settings: Settings,
        progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    n = settings.collapse_tokens
    gens: dict[str, list[list[int]]] = {c.key: [] for c in cells}
    accs = {c.key: Accum() for c in cells}
    for prompt in prompts:
        for cell in cells:
            c = session.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True, skip=cell.spec(n))
            gens[cell.key].append(list(c.tokens))
            accs[cell.key].add(c.stats)
            if progress:
                progress.step(f"collapse {cell.key}")
    results = {}
    for cell in cells:
        g = gens[cell.key]
        results[cell.key] = {
            "repeated_4gram_rate": metrics.mean([metrics.repeated_ngram_rate(t, 4) for t in g]),
            "distinct_1": metrics.mean([metrics.distinct_n(t, 1) for t in g]),
            "distinct_2": metrics.mean([metrics.distinct_n(t, 2) for t in g]),
            "generations": len(g),
            "tokens": n,
            "_accum": accs[cell.key],
        }
    return results
