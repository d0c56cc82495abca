"""Loaders for the evaluation data files (WikiText-2, MT-Bench, CNN/DailyMail, FreshQA).

Each loader takes the file's path and raises FileNotFoundError (naming the file and
what it should hold) or ValueError (naming what is wrong in it).
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
import re
from typing import Any

# Paths below a data folder (``--data-dir``) laid out as the shared data's README says.
DEFAULT_FILES = {
    "wikitext_test": "wikitext-2/test.txt",
    "wikitext_valid": "wikitext-2/valid.txt",
    "mtbench": "mt-bench/question.jsonl",
    "cnndm": "cnn-dailymail/sample100.csv",
    "freshqa": "freshqa/FreshQA_v12182024.csv",
}

# The paper's article length buckets (words): small <= 470 < medium < 790 <= large.
SMALL_MAX_WORDS = 470
LARGE_MIN_WORDS = 790
BUCKETS = ("small", "medium", "large")


def _open(path: str | os.PathLike[str], what: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p} (see the data README for where it comes from)")
    return p


def data_file(data_dir: str | os.PathLike[str], name: str) -> pathlib.Path:
    """The path of one of DEFAULT_FILES below data_dir (not checked)."""
    return pathlib.Path(data_dir) / DEFAULT_FILES[name]


# ---- WikiText-2 -------------------------------------------------------------------
_WIKI_MARKERS = re.compile(r" @([-.,])@ ")


def load_wikitext(path: str | os.PathLike[str]) -> str:
    """The text of a WikiText-2 split (tokenized release). The " @-@ ", " @,@ " and
    " @.@ " markers become "-", "," and "."; everything else (including "<unk>") is
    kept as it is."""
    p = _open(path, "WikiText-2 split")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{p}: the WikiText-2 file is empty")
    return _WIKI_MARKERS.sub(r"\1", text)


def wikitext_paragraphs(text: str, min_words: int = 40) -> list[str]:
    """Body paragraphs of WikiText (one per line), headings (" = Title = ") and short
    lines left out."""
    out = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.startswith("="):
            continue
        if len(line.split()) >= min_words:
            out.append(line)
    return out


# ---- MT-Bench ---------------------------------------------------------------------
def load_mtbench(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """MT-Bench questions: dicts with question_id (int), category and turns (2 strings)."""
    p = _open(path, "MT-Bench question file (question.jsonl)")
    out = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{n}: not valid JSON: {e}") from None
            if not isinstance(q, dict) or not isinstance(q.get("question_id"), int) or \
                    not isinstance(q.get("turns"), list) or not q["turns"] or \
                    not all(isinstance(t, str) for t in q["turns"]):
                raise ValueError(f"{p}:{n}: an MT-Bench question needs an integer question_id and a list of turns")
            out.append({"question_id": q["question_id"], "category": q.get("category", ""), "turns": q["turns"]})
    if not out:
        raise ValueError(f"{p}: no questions")
    return out


# ---- CNN/DailyMail ----------------------------------------------------------------
def length_bucket(words: int) -> str:
    """The paper's bucket of an article of `words` words."""
    if words <= SMALL_MAX_WORDS:
        return "small"
    if words >= LARGE_MIN_WORDS:
        return "large"
    return "medium"


def load_cnndm(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """CNN/DailyMail articles: dicts with id, article, highlights, words (whitespace
    words of the article) and bucket."""
    p = _open(path, "CNN/DailyMail sample (CSV with article and highlights columns)")
    csv.field_size_limit(1 << 24)
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"article", "highlights"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{p}: missing column(s) {', '.join(sorted(missing))} (have {reader.fieldnames})")
        out = []
        for n, row in enumerate(reader):
            article, highlights = (row["article"] or "").strip(), (row["highlights"] or "").strip()
            if not article or not highlights:
                raise ValueError(f"{p}: row {n + 1} has an empty article or highlights")
            words = len(article.split())
            out.append({"id": row.get("id") or str(n), "article": article, "highlights": highlights,
                        "words": words, "bucket": length_bucket(words)})
    if not out:
        raise ValueError(f"{p}: no articles")
    return out


def by_bucket(articles: list[dict[str, Any]], per_bucket: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Articles grouped by bucket in file order, at most per_bucket each."""
    out: dict[str, list[dict[str, Any]]] = {b: [] for b in BUCKETS}
    for a in articles:
        group = out[a["bucket"]]
        if per_bucket is None or len(group) < per_bucket:
            group.append(a)
    return out


# ---- FreshQA ----------------------------------------------------------------------
SHORT_ANSWER_WORDS = 3


def load_freshqa(path: str | os.PathLike[str], short_answer_words: int = SHORT_ANSWER_WORDS) -> list[dict[str, Any]]:
    """FreshQA questions that are never-changing, have a true premise and a short
    answer (some alias of at most `short_answer_words` words): dicts with id,
    question and answers (the aliases)."""
    p = _open(path, "FreshQA CSV")
    with open(p, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    # The release starts with a warning line and a blank line before the header.
    header_at = next((i for i, r in enumerate(rows[:10]) if r and r[0] == "id" and "question" in r), None)
    if header_at is None:
        raise ValueError(f"{p}: no header row with 'id' and 'question' in the first 10 lines")
    header = rows[header_at]
    need = {"question", "false_premise", "fact_type", "answer_0"}
    if need - set(header):
        raise ValueError(f"{p}: missing column(s) {', '.join(sorted(need - set(header)))}")
    answer_cols = [c for c in header if re.fullmatch(r"answer_\d+", c)]
    out = []
    for r in rows[header_at + 1:]:
        if not any(r):
            continue
        row = dict(zip(header, r))
        if row.get("fact_type") != "never-changing" or row.get("false_premise", "").upper() != "FALSE":
            continue
        answers = [row[c].strip() for c in answer_cols if row.get(c, "").strip()]
        if not answers or min(len(a.split()) for a in answers) > short_answer_words:
            continue
        out.append({"id": row.get("id", ""), "question": row["question"].strip(), "answers": answers})
    if not out:
        raise ValueError(f"{p}: no never-changing, true-premise, short-answer questions")
    return out
