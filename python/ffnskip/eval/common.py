"""What every task shares: the sweep's cells (a policy at a ratio), the task sizes,
skip statistics summed over many calls, and the progress display."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..progress import Progress  # noqa: F401  (the tasks take it from here)

# Policies whose removals also apply to prompt tokens: every call with them
# evaluates its prompt again (no reuse of a cached prefix).
PROMPT_PRUNING = ("shortgpt", "layers")


@dataclass
class Cell:
    """One point of the sweep: a name, the requested ratio and the skip settings
    (SkipConfig fields). skipdecode's layer budget grows over ``skipdecode_span``
    steps; spec() sets the span to a call's post-warm-up steps so that its mean over
    the call is the requested ratio."""

    name: str                  # "full", "ffn_skip", ..., "cheapest", "budget_ffn_skip"
    ratio: float               # requested share of FFNs (0 for full); for budget cells the budget
    config: dict[str, Any]
    label: str = ""

    def spec(self, decode_steps: int) -> dict[str, Any]:
        c = dict(self.config)
        if c.get("policy") == "skipdecode":
            c["skipdecode_span"] = max(1, decode_steps - int(c.get("warmup", 0)))
        return c

    @property
    def key(self) -> str:
        return self.label or (self.name if self.name == "full" else f"{self.name}@{self.ratio:g}")

    @property
    def prunes_prompt(self) -> bool:
        return self.config.get("policy") in PROMPT_PRUNING


@dataclass
class Settings:
    """Sizes of each task (a ``limit`` caps the item counts)."""

    warmup: int = 8                 # generated tokens that run the full model first
    n_ctx: int = 2048
    ppl_tokens: int = 256           # scored WikiText-2 test tokens
    ppl_prompt: int = 32            # context tokens before each scored window
    ppl_window: int = 128           # scored tokens per window
    agreement_prompts: int = 3
    agreement_prompt_tokens: int = 32
    agreement_tokens: int = 32
    qa_questions: int = 30
    qa_max_tokens: int = 10
    summarize_per_bucket: int = 1
    summarize_tokens: int = 48
    summarize_max_article_tokens: int = 1600
    summarize_pruning_ratios: tuple[float, ...] | None = None   # None = every ratio
    mtbench_questions: int = 2
    mtbench_tokens: int = 40        # per turn
    collapse_generations: int = 2
    collapse_prompt_tokens: int = 32
    collapse_tokens: int = 128

    def limited(self, limit: int | None) -> "Settings":
        if limit is None:
            return self
        import dataclasses

        s = dataclasses.replace(self)
        s.ppl_tokens = min(s.ppl_tokens, limit * s.ppl_window)
        for name in ("agreement_prompts", "qa_questions", "summarize_per_bucket", "mtbench_questions",
                     "collapse_generations"):
            setattr(s, name, min(getattr(s, name), limit))
        return s


@dataclass
class Accum:
    """Skip statistics and decode time summed over calls."""

    ffn_total: int = 0
    ffn_skipped: int = 0
    ffn_total_after_warmup: int = 0
    ffn_skipped_after_warmup: int = 0
    generated: int = 0
    decode_seconds: float = 0.0
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, stats: Mapping[str, Any]) -> None:
        self.calls += 1
        self.ffn_total += int(stats.get("ffn_total", 0))
        self.ffn_skipped += int(stats.get("ffn_skipped", 0))
        self.ffn_total_after_warmup += int(stats.get("ffn_total_after_warmup", 0))
        self.ffn_skipped_after_warmup += int(stats.get("ffn_skipped_after_warmup", 0))
        self.generated += int(stats.get("n_generated", 0))
        self.decode_seconds += float(stats.get("decode_seconds", 0.0))

    def merge(self, other: "Accum") -> None:
        for name in ("ffn_total", "ffn_skipped", "ffn_total_after_warmup", "ffn_skipped_after_warmup",
                     "generated", "decode_seconds", "calls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict[str, Any]:
        return {
            "skip_ratio": self.ffn_skipped / self.ffn_total if self.ffn_total else 0.0,
            "skip_ratio_after_warmup": (self.ffn_skipped_after_warmup / self.ffn_total_after_warmup
                                        if self.ffn_total_after_warmup else 0.0),
            "ffn_skipped": self.ffn_skipped,
            "ffn_total": self.ffn_total,
            "generated_tokens": self.generated,
            "decode_seconds": self.decode_seconds,
            "decode_tokens_per_second": self.generated / self.decode_seconds if self.decode_seconds > 0 else None,
        }

