"""Batched decoding: several independent sequences, one forward pass per step.

>>> from ffnskip.batch import BatchSession
>>> b = BatchSession("model.gguf", n_seq=4, n_ctx=512)
>>> a = b.add_sequence(b.model.tokenize("The capital of France is"))
>>> logits = b.step([(a, int(b.last_logits(a).argmax()))])   # (1, n_vocab)

Each sequence has its own KV cache slot and position; sequences join (their prompt is
evaluated in their slot alone) and leave between steps. A sequence's logits equal those
of the same tokens decoded alone by :class:`ffnskip.Session`. Each sequence may have
its own FFN skip policy (not the whole-layer ones, shortgpt and skipdecode) and its own
FFN surrogates (``skip=dict(..., surrogates="sidecar.gguf")``, CPU only). On the CPU (default) or
the GPU (``backend="cuda"``, or ``"auto"``).

``skip_alignment="vote"`` makes the rows of a step agree: per layer the majority of the
sequences' skip decisions applies to all of them, so a skipped FFN's weights are not
read at all (with "none", the default, they are read unless every sequence skips it).
A sequence's output then depends on what it is batched with.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from . import _core
from .session import Completion, completion
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
        backend: str = "cpu",
        skip_alignment: str = "none",
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
        params.backend = backend
        params.skip_alignment = skip_alignment
        self._native = _core.BatchSession(model, params)   # ValueError for a bad skip_alignment

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

    @property
    def skip_alignment(self) -> str:
        """"none" (each sequence its own skip decisions) or "vote" (the majority's)."""
        return self._native.skip_alignment

    def stats(self) -> _core.BatchStats:
        """Weight bytes the decode steps so far read: ``ffn_bytes`` (every FFN, every
        step), ``ffn_bytes_read``, ``ffn_read_saved`` (the share not read) and
        ``surrogate_bytes_read``."""
        return self._native.stats()

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


class BatchGenerator:
    """Continuous batching: many generations, one forward pass per step for all of them.

    >>> from ffnskip.batch import BatchGenerator
    >>> g = BatchGenerator("model.gguf", n_seq=8)
    >>> replies = g.generate(["Paris is", "Rome is"], max_tokens=32, temperature=0)

    or, driving the rounds yourself (as the server does)::

        a = g.submit("Paris is", max_tokens=32)
        while g.n_active:
            for request, piece, finished in g.step():
                ...
        g.result(a)   # a Completion

    ``submit`` takes the keyword arguments of :meth:`ffnskip.Session.stream`
    (sampling, stop, max_tokens, skip, ...). Each round evaluates up to
    ``n_prefill_chunk`` tokens of the joining prompts (all of them when nothing is
    decoding), then one batched decode step. A request's tokens equal those of the same
    request generated alone by a Session with the same seed (with ``skip_alignment="none"``,
    the default; see :class:`BatchSession` for "vote"). Prompts are not cached
    between requests (a Session reuses its previous prompt's prefix). One thread at a
    time; CPU or GPU (``backend``).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | _core.Model,
        *,
        n_seq: int = 4,
        n_ctx: int = 0,
        n_threads: int = 0,
        n_threads_batch: int = 0,
        n_batch: int = 512,
        n_prefill_chunk: int = 64,
        skip: SkipSpec = None,
        backend: str = "cpu",
        skip_alignment: str = "none",
    ) -> None:
        from . import checks

        if not isinstance(model, _core.Model):
            from .models import resolve_model

            model = _core.Model(resolve_model(os.fspath(model)))
        self.model = model
        params = _core.BatchParams()
        for key, value in (("n_seq", n_seq), ("n_ctx", n_ctx), ("n_threads", n_threads),
                           ("n_threads_batch", n_threads_batch), ("n_batch", n_batch),
                           ("n_prefill_chunk", n_prefill_chunk), ("skip_alignment", skip_alignment),
                           ("backend", backend)):
            checks.set_field(params, key, value, "BatchGenerator")
        self._native = _core.BatchGenerator(model, params)
        self._native.skip_config = skip_config(skip, model=model)
        self._lock = threading.Lock()
        self._delivered: dict[int, list[str]] = {}

    @property
    def n_seq(self) -> int:
        return self._native.n_seq

    @property
    def n_ctx(self) -> int:
        """KV cache rows of each request."""
        return self._native.n_ctx

    @property
    def n_active(self) -> int:
        """Requests submitted and not finished."""
        return self._native.n_active

    def _native_call(self, fn: Any, *args: Any) -> Any:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("BatchGenerator is busy in another thread: one thread drives it")
        try:
            return fn(*args)
        finally:
            self._lock.release()

    def submit(self, prompt: str | Sequence[int], **kwargs: Any) -> int:
        """Add a request (text or token ids); returns its id. ValueError when every
        slot is taken (``n_seq``) or an argument is bad."""
        from . import checks
        from .session import generate_params

        params = generate_params(self.model, kwargs)
        if isinstance(prompt, str):
            tokens = self.model.tokenize(checks.text(prompt, "prompt"), params.add_special, params.parse_special)
        else:
            tokens = checks.tokens(prompt, "prompt", self.model.n_vocab)
        request = self._native_call(self._native.submit, tokens, params)
        self._delivered[request] = []
        return request

    def step(self) -> list[tuple[int, str, bool]]:
        """One round; returns (request, text piece, finished) for every request that
        produced a token in it."""
        out = []
        for request, piece, finished in self._native_call(self._native.step):
            text = piece.decode("utf-8", errors="replace")   # whole characters only
            if text:
                self._delivered[request].append(text)
            out.append((request, text, finished))
        return out

    def cancel(self, request: int) -> None:
        """Finish a request now (its result keeps the text already delivered)."""
        self._native_call(self._native.cancel, int(request))

    def result(self, request: int) -> Completion:
        """The Completion of a finished request, once (then the id is forgotten)."""
        r = self._native_call(self._native.take_result, int(request))
        delivered = "".join(self._delivered.pop(int(request), []))
        return completion(r, delivered if r.finish_reason == "cancelled" else None)

    def generate(self, prompts: Sequence[str | Sequence[int]], **kwargs: Any) -> list[Completion]:
        """Generate a reply to every prompt, ``n_seq`` at a time; replies in order."""
        waiting = list(enumerate(prompts))[::-1]
        ids: dict[int, int] = {}
        results: list[Completion | None] = [None] * len(waiting)
        while waiting or ids:
            while waiting and len(ids) < self.n_seq:
                index, prompt = waiting.pop()
                ids[self.submit(prompt, **kwargs)] = index
            for request, _, finished in self.step():
                if finished:
                    results[ids.pop(request)] = self.result(request)
        return [r for r in results if r is not None]
