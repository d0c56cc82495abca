"""Evaluation harness: perplexity, agreement with the full model, factoid QA,
summarization, MT-Bench answers and generation collapse, swept over skip ratios and
policies (``ffnskip eval`` on the command line).

>>> from ffnskip.eval import run_sweep
>>> results = run_sweep("model.gguf", "data", "eval-out", policies=["ffn_skip", "random"],
...                     ratios=[0, 0.25], limit=2)

Optional packages: rouge-score (ROUGE-L), matplotlib (plots), tqdm (progress bar):
``pip install 'ffnskip[eval]'``.
"""
from __future__ import annotations

from .common import Cell, Settings
from .sweep import PAPER_POLICIES, POLICIES, RATIOS, TASKS, make_cells, markdown_table, run_sweep

__all__ = ["Cell", "PAPER_POLICIES", "POLICIES", "RATIOS", "Settings", "TASKS", "make_cells", "markdown_table",
           "run_sweep"]
