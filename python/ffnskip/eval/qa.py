"""Factoid QA: FreshQA's never-changing, true-premise, short-answer questions, greedy
answers scored by exact match and by containment against the answer aliases.

Prompt format (plain text, no chat template, no examples)::

    Question: {question}
    Answer:

The answer is generated greedily (``qa_max_tokens`` tokens); its first non-empty line,
stripped, is the prediction (the model often starts with a line break).
"""
from __future__ import annotations

from typing import Any, Sequence

from . import metrics
from .common import Accum, Cell, Progress, Settings

PROMPT = "Question: {question}\nAnswer:"


def prompt_for(question: str) -> str:
    return PROMPT.format(question=question)


def prediction(text: str) -> str:
    """The first non-empty line of a generated answer, stripped."""
    return next((line.strip() for line in text.split("\n") if line.strip()), "")


def run(session: Any, cells: Sequence[Cell], questions: Sequence[dict[str, Any]], settings: Settings,
        progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    n = settings.qa_max_tokens
    preds: dict[str, list[str]] = {c.key: [] for c in cells}
    accs = {c.key: Accum() for c in cells}
    for q in questions:
        prompt = prompt_for(q["question"])
        for cell in cells:
            c = session.generate(prompt, max_tokens=n, temperature=0, skip=cell.spec(n))
            preds[cell.key].append(prediction(c.text))
            accs[cell.key].add(c.stats)
            if progress:
                progress.step(f"qa {cell.key}")
    results = {}
    full = preds.get("full")
    for cell in cells:
        p = preds[cell.key]
        results[cell.key] = {
            "exact_match": metrics.mean([float(metrics.exact_match(a, q["answers"])) for a, q in zip(p, questions)]),
            "contains": metrics.mean([float(metrics.contains_answer(a, q["answers"])) for a, q in zip(p, questions)]),
            "same_as_full": (metrics.mean([float(a == b) for a, b in zip(p, full)]) if full is not None else None),
            "questions": len(questions),
            "predictions": p,
            "_accum": accs[cell.key],
        }
    return results
