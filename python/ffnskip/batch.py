"""Batched decoding: several independent sequences, one forward pass per step.

>>> from ffnskip.batch import BatchSession
>>> b = BatchSession("model.gguf", n_seq=4, n_ctx=512)
>>> a = b.add_sequence(b.model.tokenize("The capital of France is"))
>>> logits = b.step([(a, int(b.last_logits(a).argmax()))])   # (1, n_vocab)

Each sequence has its own KV cache slot and position; sequences join (their prompt is
evaluated in their slot alone) and leave between steps. A sequence's logits equal those
of the same tokens decoded alone by :class:`ffnskip.Session`. Each sequence may have
its own FFN skip policy (not the whole-layer ones, shortgpt and skipdecode). CPU only.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import numpy.typing as npt

from . import _core
from .skip import SkipSpec, skip_config


class BatchSession:
    """``n_seq`` sequence slots of ``n_ctx`` KV cache rows each over one model."""

    def __init__(
        self,
        model: str | os.PathLike[str] | _core.Model,
        *,
        n_seq: int = 4,
        n_ctx: int = 0,
        n_threads: int = 0,
        n_threads_batch: int = 0,
        n_batch: int = 512,
    ) -> None:
        if not isinstance(model, _core.Model):
            from .models import resolve_model  # a path, or a registry name fetched once

            model = _core.Model(resolve_model(os.fspath(model)))
        self.model = model
        params = _core.BatchParams()
        params.n_seq = n_seq
        params.n_ctx = n_ctx
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        params.n_batch = n_batch
        self._native = _core.BatchSession(model, params)

    @property
    def n_seq(self) -> int:
        return self._native.n_seq

    @property
    def n_ctx(self) -> int:
        """KV cache rows of each sequence."""
        return self._native.n_ctx

    @property
    def n_active(self) -> int:
        return self._native.n_active

    def sequences(self) -> list[int]:
        """Ids of the sequences in the batch, oldest first."""
        return self._native.sequences()

    def add_sequence(self, prompt: Sequence[int], skip: SkipSpec = None) -> int:
        """Evaluate ``prompt`` in a free slot; returns the new sequence's id. ``skip``:
        the sequence's skip policy (as :func:`ffnskip.skip_config` takes it)."""
        return self._native.add_sequence(list(prompt), skip_config(skip, model=self.model))

    def join_sequence(self, prompt: Sequence[int], skip: SkipSpec = None) -> int:
        """Take a free slot for ``prompt`` without evaluating it: call :meth:`prefill`
        between steps until it returns 0, so a long prompt does not stall the others."""
        return self._native.join_sequence(list(prompt), skip_config(skip, model=self.model))

    def prefill(self, seq: int, max_tokens: int) -> int:
        """Evaluate up to ``max_tokens`` more of the sequence's prompt; returns how many
        are left (0: it can step, and last_logits holds its prompt's last logits)."""
        return self._native.prefill(seq, max_tokens)

    def skip_stats(self, seq: int) -> _core.SkipStats:
        """What the sequence's skip policy did over its decode steps so far."""
        return self._native.skip_stats(seq)

    def remove_sequence(self, seq: int) -> None:
        self._native.remove_sequence(seq)

    def n_past(self, seq: int) -> int:
        """Tokens in the sequence's KV cache."""
        return self._native.n_past(seq)

    def last_logits(self, seq: int) -> npt.NDArray[np.float32]:
        return self._native.last_logits(seq)

    def step(self, pairs: Sequence[tuple[int, int]]) -> npt.NDArray[np.float32]:
        """Append one token to each named sequence in one forward pass; row i of the
        result is the logits after pairs[i] = (seq, token)."""
        return self._native.step([(int(s), int(t)) for s, t in pairs])
