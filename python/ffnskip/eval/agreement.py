"""Agreement with the full model: greedy continuations of held-out prompts (WikiText-2
validation paragraphs), compared token by token and by ROUGE-L with the full model's."""
from __future__ import annotations

from typing import Any, Sequence

from . import metrics
from .common import Accum, Cell, Progress, Settings
from .data import wikitext_paragraphs


def prepare(session: Any, valid_text: str, settings: Settings) -> list[list[int]]:
    """Prompts: the first agreement_prompt_tokens tokens of the first validation paragraphs."""
    out = []
    for para in wikitext_paragraphs(valid_text):
        ids = session.tokenize(para, add_special=False)
        if len(ids) >= settings.agreement_prompt_tokens:
            out.append(ids[:settings.agreement_prompt_tokens])
        if len(out) == settings.agreement_prompts:
            break
    if len(out) < settings.agreement_prompts:
        raise ValueError(f"WikiText-2 validation has only {len(out)} usable paragraphs")
    return out


def run(session: Any, cells: Sequence[Cell], prompts: Sequence[list[int]], settings: Settings,
        progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    n = settings.agreement_tokens
    outs: dict[str, list[Any]] = {c.key: [] for c in cells}
    accs = {c.key: Accum() for c in cells}
    reference: list[Any] = []
    for prompt in prompts:   # prompt-major: cells that leave the prompt alone reuse its cache
        ref = session.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True, skip="full")
        reference.append(ref)
        for cell in cells:
            c = ref if cell.name == "full" else session.generate(
                prompt, max_tokens=n, temperature=0, ignore_eos=True, skip=cell.spec(n))
            outs[cell.key].append(c)
            accs[cell.key].add(c.stats)
            if progress:
                progress.step(f"agreement {cell.key}")
    results = {}
    for cell in cells:
        prefix = [metrics.identical_prefix(r.tokens, c.tokens) for r, c in zip(reference, outs[cell.key])]
        results[cell.key] = {
            "identical_prefix": metrics.mean(prefix),
            "identical_prefix_share": metrics.mean([p / max(1, len(r.tokens)) for p, r in zip(prefix, reference)]),
            "fully_identical": metrics.mean([float(p == len(r.tokens)) for p, r in zip(prefix, reference)]),
            "token_agreement": metrics.mean([metrics.token_agreement(r.tokens, c.tokens)
                                             for r, c in zip(reference, outs[cell.key])]),
            "rouge_l": metrics.mean([metrics.rouge_l(r.text, c.text) for r, c in zip(reference, outs[cell.key])]),
            "tokens": n,
            "prompts": len(prompts),
            "_accum": accs[cell.key],
        }
    return results
