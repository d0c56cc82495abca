"""MT-Bench: two-turn answers generated with the model's chat template (greedy), saved
as JSONL in FastChat's answer format (one file per model id, as FastChat's
``data/mt_bench/model_answer/{model_id}.jsonl``) so that any judge can score them
later. No judge runs here; the table reports answer lengths and ROUGE-L against the
full model's answers."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Any, Sequence

from . import metrics
from .common import Accum, Cell, Progress, Settings


def select(questions: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """n questions spread over the categories: the first of each category in turn."""
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for q in questions:
        by_cat.setdefault(q["category"], []).append(q)
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < n and any(depth < len(g) for g in by_cat.values()):
        for g in by_cat.values():
            if depth < len(g) and len(out) < n:
                out.append(g[depth])
        depth += 1
    return out


def answer_record(question_id: int, model_id: str, turns: Sequence[str], tstamp: float | None = None) -> dict[str, Any]:
    """One line of FastChat's answer file."""
    digest = hashlib.sha1(f"{model_id}|{question_id}".encode()).hexdigest()[:22]
    return {
        "question_id": question_id,
        "answer_id": digest,
        "model_id": model_id,
        "choices": [{"index": 0, "turns": list(turns)}],
        "tstamp": time.time() if tstamp is None else tstamp,
    }


def write_answers(path: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def model_id(model_name: str, cell: Cell) -> str:
    return model_name if cell.name == "full" else f"{model_name}+{cell.key}"


def run(session: Any, cells: Sequence[Cell], questions: Sequence[dict[str, Any]], settings: Settings,
        model_name: str, out_dir: str | os.PathLike[str] | None = None,
        progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    n = settings.mtbench_tokens
    answers: dict[str, list[list[str]]] = {c.key: [] for c in cells}
    lengths: dict[str, list[int]] = {c.key: [] for c in cells}
    accs = {c.key: Accum() for c in cells}
    for q in questions:   # question-major: the first turn's prompt is shared by the cells
        for cell in cells:
            messages: list[dict[str, str]] = []
            turns = []
            for user in q["turns"]:
                messages.append({"role": "user", "content": user})
                c = session.chat(messages, max_tokens=n, temperature=0, skip=cell.spec(n))
                text = c.text.strip()
                messages.append({"role": "assistant", "content": text})
                turns.append(text)
                lengths[cell.key].append(len(c.tokens))
                accs[cell.key].add(c.stats)
            answers[cell.key].append(turns)
            if progress:
                progress.step(f"mtbench {cell.key}")
    results = {}
    full = answers.get("full")
    for cell in cells:
        mid = model_id(model_name, cell)
        records = [answer_record(q["question_id"], mid, t) for q, t in zip(questions, answers[cell.key])]
        path = None
        if out_dir is not None:
            path = pathlib.Path(out_dir) / f"{mid}.jsonl"
            write_answers(path, records)
        r = {"model_id": mid, "questions": len(questions), "answer_file": path.name if path else None,
             "mean_answer_tokens": metrics.mean(lengths[cell.key]), "_accum": accs[cell.key]}
        if full is not None:
            r["rouge_l_full"] = metrics.mean([metrics.rouge_l(a, b) for fa, ca in zip(full, answers[cell.key])
                                              for a, b in zip(fa, ca)])
        results[cell.key] = r
    return results
