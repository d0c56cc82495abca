"""Metrics: ROUGE-L (rouge-score), exact match, agreement with the full model,
distinct-n and repeated n-gram rate.

Definitions (also in docs/eval/README.md):

- ROUGE-L: F-measure of rouge-score's "rougeL" (longest common subsequence over the
  whole text, Porter stemming on), the usual choice for CNN/DailyMail.
- Exact match: the normalised answer equals a normalised alias. ``contains``: a
  normalised alias occurs in the normalised answer as a run of whole words.
  Normalisation (SQuAD's): lower case, punctuation removed, the articles a / an / the
  removed, whitespace collapsed.
- Agreement of a continuation with the full model's (token ids, same length asked):
  identical prefix = tokens before the first difference; token agreement = share of
  the full model's positions holding the same token.
- distinct-n: distinct n-grams / n-grams of one text. Repeated n-gram rate: share of
  a text's n-grams that already occurred earlier in it (= 1 - distinct-n of that
  text). Both are 0 for a text shorter than n.
"""
from __future__ import annotations

import re
import string
from typing import Any, Sequence

EXTRA_HINT = "pip install 'ffnskip[eval]'"


# ---- ROUGE-L ----------------------------------------------------------------------
_scorer: Any = None


def require_rouge() -> None:
    """Raise ImportError naming the extra when rouge-score is missing."""
    try:
        import rouge_score  # noqa: F401  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError(f"ROUGE-L needs the rouge-score package: {EXTRA_HINT}") from None


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure of prediction against reference (rouge-score, stemming on)."""
    global _scorer
    if _scorer is None:
        require_rouge()
        from rouge_score import rouge_scorer  # type: ignore[import-not-found]

        _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_scorer.score(reference, prediction)["rougeL"].fmeasure)


# ---- exact match ------------------------------------------------------------------
_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, aliases: Sequence[str]) -> bool:
    p = normalize_answer(prediction)
    return any(p == normalize_answer(a) for a in aliases)


def contains_answer(prediction: str, aliases: Sequence[str]) -> bool:
    p = f" {normalize_answer(prediction)} "
    return any(a and f" {a} " in p for a in (normalize_answer(x) for x in aliases))


# ---- agreement --------------------------------------------------------------------
def identical_prefix(reference: Sequence[int], other: Sequence[int]) -> int:
    n = 0
    for a, b in zip(reference, other):
        if a != b:
            break
        n += 1
    return n


def token_agreement(reference: Sequence[int], other: Sequence[int]) -> float:
    """Share of the reference's positions where other holds the same token."""
    if not reference:
        return 1.0
    return sum(a == b for a, b in zip(reference, other)) / len(reference)


# ---- collapse ---------------------------------------------------------------------
def ngrams(tokens: Sequence[Any], n: int) -> list[tuple[Any, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[Any], n: int) -> float:
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(tokens: Sequence[Any], n: int) -> float:
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    seen: set[tuple[Any, ...]] = set()
    repeated = 0
    for g in grams:
        if g in seen:
            repeated += 1
        else:
            seen.add(g)
    return repeated / len(grams)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
