"""Summarization of CNN/DailyMail articles in the paper's three length buckets (small
<= 470 words < medium < 790 <= large), ROUGE-L against the highlights and against the
full model's summary.

Prompt (one user message in the model's chat template)::

    Summarize the following news article in three sentences.

    {article}

An article longer than ``summarize_max_article_tokens`` tokens is cut to that many
tokens (the result records it); buckets follow the whole article's word count.
"""
from __future__ import annotations

from typing import Any, Sequence

from . import metrics
from .common import Accum, Cell, Progress, Settings
from .data import BUCKETS, by_bucket

INSTRUCTION = "Summarize the following news article in three sentences.\n\n"


def prepare(session: Any, articles: Sequence[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """The chosen articles with their prompt text: the shortest ones of each bucket
    (short prompts keep the evaluation cheap), at most summarize_per_bucket each."""
    ordered = sorted(articles, key=lambda a: (a["words"], a["id"]))
    chosen = []
    for bucket, group in by_bucket(ordered, settings.summarize_per_bucket).items():
        for a in group:
            ids = session.tokenize(a["article"], add_special=False)
            truncated = len(ids) > settings.summarize_max_article_tokens
            body = session.detokenize(ids[:settings.summarize_max_article_tokens]) if truncated else a["article"]
            chosen.append({**a, "prompt": INSTRUCTION + body, "truncated": truncated, "article_tokens": len(ids)})
    return chosen


def _applies(cell: Cell, settings: Settings) -> bool:
    r = settings.summarize_pruning_ratios
    return not cell.prunes_prompt or r is None or any(abs(cell.ratio - x) < 1e-9 for x in r)


def run(session: Any, cells: Sequence[Cell], chosen: Sequence[dict[str, Any]], settings: Settings,
        progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    n = settings.summarize_tokens
    cells = [c for c in cells if _applies(c, settings)]
    texts: dict[str, list[str]] = {c.key: [] for c in cells}
    accs = {c.key: Accum() for c in cells}
    reference: list[str] = []
    for a in chosen:
        messages = [{"role": "user", "content": a["prompt"]}]
        ref_c = session.chat(messages, max_tokens=n, temperature=0, skip="full")
        ref = ref_c.text.strip()
        reference.append(ref)
        for cell in cells:
            if cell.name == "full":
                text, stats = ref, ref_c.stats
            else:
                c = session.chat(messages, max_tokens=n, temperature=0, skip=cell.spec(n))
                text, stats = c.text.strip(), c.stats
            texts[cell.key].append(text)
            accs[cell.key].add(stats)
            if progress:
                progress.step(f"summarize {cell.key}")
    results = {}
    for cell in cells:
        vs_ref = [metrics.rouge_l(a["highlights"], t) for a, t in zip(chosen, texts[cell.key])]
        vs_full = [metrics.rouge_l(r, t) for r, t in zip(reference, texts[cell.key])]
        per_bucket = {}
        for b in BUCKETS:
            idx = [i for i, a in enumerate(chosen) if a["bucket"] == b]
            if idx:
                per_bucket[b] = {"rouge_l_highlights": metrics.mean([vs_ref[i] for i in idx]),
                                 "rouge_l_full": metrics.mean([vs_full[i] for i in idx]), "articles": len(idx)}
        results[cell.key] = {
            "rouge_l_highlights": metrics.mean(vs_ref),
            "rouge_l_full": metrics.mean(vs_full),
            "buckets": per_bucket,
            "articles": [{"id": a["id"], "bucket": a["bucket"], "words": a["words"], "truncated": a["truncated"]}
                         for a in chosen],
            "summaries": texts[cell.key],
            "_accum": accs[cell.key],
        }
    return results
