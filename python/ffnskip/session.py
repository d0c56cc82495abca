"""The Python face of a native session: streaming, generation, chat."""
from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence, overload

import numpy as np

from . import _core, checks
from .skip import SkipSpec, skip_config, stats_dict


@dataclass
class Completion:
    """What one generate() call produced."""

    text: str
    tokens: list[int]
    prompt_tokens: list[int]
    finish_reason: str  # "length", "stop", "eos", "cancelled", "context_full"
    stats: dict[str, Any] = field(default_factory=dict)


_SAMPLING_FIELDS = (
    "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
    "frequency_penalty", "presence_penalty", "seed",
)
_GENERATE_FIELDS = ("max_tokens", "ignore_eos", "add_special", "parse_special")


def _stats_dict(stats: _core.Stats) -> dict[str, Any]:
    return {
        "n_prompt_tokens": stats.n_prompt_tokens,
        "n_cached_tokens": stats.n_cached_tokens,
        "n_generated": stats.n_generated,
        "prompt_seconds": stats.prompt_seconds,
        "decode_seconds": stats.decode_seconds,
        "prompt_tokens_per_second": stats.prompt_tokens_per_second,
        "decode_tokens_per_second": stats.decode_tokens_per_second,
        **stats_dict(stats.skip),
    }


def generate_params(model: _core.Model, kwargs: Mapping[str, Any]) -> _core.GenerateParams:
    """The native GenerateParams for generation keyword arguments (see Session.stream);
    TypeError/ValueError name a bad or unknown argument."""
    params = _core.GenerateParams()
    sampling = _core.SamplingParams()
    for key, value in kwargs.items():
        if key in _SAMPLING_FIELDS:
            if value is not None:
                checks.set_field(sampling, key, value, "generation argument")
        elif key in _GENERATE_FIELDS:
            if value is not None:
                checks.set_field(params, key, value, "generation argument")
        elif key == "stop":
            if value is not None:
                params.stop = checks.texts(value, "stop")
        elif key == "skip":
            params.use_session_skip = False
            params.skip = skip_config(value, model=model)
        else:
            raise TypeError(f"unknown generation argument {key!r}")
    if params.max_tokens is not None and params.max_tokens < -1:
        raise ValueError(f"max_tokens must be >= -1 (-1 = until the context is full), got {params.max_tokens}")
    params.sampling = sampling
    return params


def completion(result: _core.GenerateResult, text: str | None = None) -> Completion:
    """A Completion from a native result (``text``: what the caller received, when it
    differs from the result's)."""
    return Completion(result.text if text is None else text, list(result.tokens), list(result.prompt_tokens),
                      result.finish_reason, _stats_dict(result.stats))


_BUSY = ("Session is busy in another thread: a Session serves one thread at a time, and an "
         "unfinished stream holds it until it is exhausted, closed or dropped (use one Session per thread)")


class Session:
    """A model plus a KV cache and a sampler.

    ``model`` is a GGUF path, a registry name (``ffnskip models``) or a loaded
    :class:`ffnskip.Model` (share one Model between sessions to load the weights
    once). A session serves one thread at a time: a call from a second thread while a
    call or an unfinished stream of the first is running raises
    ``RuntimeError("Session is busy in another thread ...")``. Use one Session per thread.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | _core.Model,
        *,
        n_ctx: int = 0,
        n_threads: int = 0,
        n_threads_batch: int = 0,
        n_batch: int = 512,
        skip: SkipSpec = None,
        backend: str = "cpu",
    ) -> None:
        if not isinstance(model, _core.Model):
            from .models import resolve_model  # a path, or a registry name fetched once

            model = _core.Model(resolve_model(os.fspath(model)))
        self.model = model
        params = _core.SessionParams()
        for key, value in (("n_ctx", n_ctx), ("n_threads", n_threads), ("n_threads_batch", n_threads_batch),
                           ("n_batch", n_batch)):
            checks.set_field(params, key, value, "Session")
        params.skip = skip_config(skip, model=self.model)
        params.backend = checks.text(backend, "backend")
        self._native = _core.Session(self.model, params)
        self.last_stats: dict[str, Any] = {}
        self.last_result: Completion | None = None
        self._generation = 0   # counts begun generations; a stream acts only on its own
        # Who holds the session: (thread id, generation, weak reference to its unfinished
        # stream or None while a plain call runs). The native calls release the GIL.
        self._holder: tuple[int, int, Any] | None = None
        self._holder_lock = threading.Lock()

    # ---- one thread at a time -------------------------------------------------------
    def _claim(self) -> int:
        """Start a new generation for this thread (ending its own unfinished stream);
        RuntimeError while another thread's call or live stream holds the session."""
        me = threading.get_ident()
        with self._holder_lock:
            holder = self._holder
            if holder is not None and holder[0] != me and (holder[2] is None or holder[2]() is not None):
                raise RuntimeError(_BUSY)
            self._generation += 1
            self._holder = (me, self._generation, None)
            return self._generation

    def _hold_for_stream(self, generation: int, stream: Iterator[str]) -> None:
        with self._holder_lock:
            if self._holder is not None and self._holder[1] == generation:
                self._holder = (self._holder[0], generation, weakref.ref(stream))

    def _release(self, generation: int) -> None:
        with self._holder_lock:
            if self._holder is not None and self._holder[1] == generation:
                self._holder = None

    def _call(self, fn: Any, *args: Any) -> Any:
        generation = self._claim()
        try:
            return fn(*args)
        finally:
            self._release(generation)

    # ---- tokens -----------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.model.tokenize(checks.text(text, "text"), add_special, parse_special)

    def detokenize(self, tokens: Sequence[int], render_special: bool = True) -> str:
        return self.model.detokenize(checks.tokens(tokens, "tokens", self.model.n_vocab), render_special)

    @property
    def backend(self) -> str:
        """The backend running this session: "cpu" or "cuda"."""
        return self._native.backend

    @property
    def n_ctx(self) -> int:
        return self._native.n_ctx

    @property
    def n_past(self) -> int:
        """Tokens held in the KV cache."""
        return self._native.n_past

    def reset(self) -> None:
        """Empty the KV cache."""
        self._call(self._native.reset)

    @property
    def skip(self) -> _core.SkipConfig:
        """The session's skip settings (used by calls that pass no ``skip=``)."""
        return self._native.skip_config

    @skip.setter
    def skip(self, spec: SkipSpec) -> None:
        config = skip_config(spec, model=self.model)
        self._call(setattr, self._native, "skip_config", config)

    def score(self, prompt: Sequence[int], continuation: Sequence[int], skip: SkipSpec = None) -> tuple[float, dict[str, Any]]:
        """Teacher-forced negative log-likelihood (sum, nats) of ``continuation`` after
        ``prompt`` with the skip policy active exactly as in generation; also the skip
        statistics. ``skip=None`` uses the session's setting."""
        n_vocab = self.model.n_vocab
        prompt_ids, continuation_ids = checks.tokens(prompt, "prompt", n_vocab), checks.tokens(continuation, "continuation", n_vocab)
        config = None if skip is None else skip_config(skip, model=self.model)
        generation = self._claim()
        try:
            if config is None:
                config = self._native.skip_config
            nll, stats = self._native.score_continuation(prompt_ids, continuation_ids, config)
        finally:
            self._release(generation)
        return nll, stats_dict(stats)

    def trace_ffn(self, tokens: Sequence[int], skip: SkipSpec = "full") -> dict[str, np.ndarray]:
        """Calibration: evaluate ``tokens`` as one prompt from an empty cache and return,
        per layer, the residual before the FFN (``h``), the FFN's input (``u`` =
        ffn_norm(h)) and what the block added (``f``), each (n_layer, n_tokens, n_embd).
        ``skip`` applies its position-independent part (a ``layers`` set, surrogates),
        so surrogates can be fitted one layer after another. CPU backend."""
        ids = checks.tokens(tokens, "tokens", self.model.n_vocab)
        config = skip_config(skip, model=self.model)
        generation = self._claim()
        try:
            return self._native.trace_ffn(ids, config)
        finally:
            self._release(generation)

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append tokens to the KV cache and return the logits of the last one
        (shape (n_vocab,)) or of every one (shape (len(tokens), n_vocab)). A single
        token takes the decode step's path, as generation does (on the GPU: the
        captured graph), so a decode loop of your own runs as fast as `generate`."""
        ids = checks.tokens(tokens, "tokens", self.model.n_vocab)
        return self._call(self._native.eval, ids, bool(all_logits))

    @property
    def logits(self) -> np.ndarray:
        """The logits of the last evaluated position (a copy)."""
        return self._native.last_logits

    # ---- generation ---------------------------------------------------------------
    def _params(self, kwargs: Mapping[str, Any]) -> _core.GenerateParams:
        return generate_params(self.model, kwargs)

    def _checked_prompt(self, prompt: Any) -> str | list[int]:
        if isinstance(prompt, str):
            return checks.text(prompt, "prompt")
        return checks.tokens(prompt, "prompt", self.model.n_vocab)

    def stream(self, prompt: str | Sequence[int], **kwargs: Any) -> Iterator[str]:
        """Generate text piece by piece. ``prompt`` is text or token ids.

        Keyword arguments: max_tokens (128), temperature (0.8; 0 = greedy), top_k (40),
        top_p (0.95), min_p (0.05), repeat_penalty (1.0), repeat_last_n (64),
        frequency_penalty, presence_penalty, seed (-1 = random), stop (str or list),
        ignore_eos, add_special, parse_special, skip (a policy name, a mapping of
        SkipConfig fields, a profile path or a SkipConfig, for this call only).
        Breaking out of the loop (or closing the generator) stops decoding. Starting
        another generation (stream, generate, chat, eval, reset) in the same thread ends
        an unfinished stream: it yields nothing more. From another thread it raises
        RuntimeError while the stream is alive (see the class docstring).
        """
        params = self._params(kwargs)
        prompt = self._checked_prompt(prompt)
        generation = self._claim()
        try:
            if isinstance(prompt, str):
                self._native.begin(prompt, params)
            else:
                self._native.begin_tokens(prompt, params)
        except BaseException:
            self._release(generation)
            raise
        stream = self._pieces(generation)
        self._hold_for_stream(generation, stream)
        return stream

    def _pieces(self, generation: int) -> Iterator[str]:
        # A stream left suspended must neither step nor cancel a later generation
        # when it is resumed or garbage-collected.
        native = self._native
        delivered: list[str] = []
        try:
            more = not native.finished
            while more and self._generation == generation:
                more, piece = native.step()
                if piece:
                    # Native pieces hold whole UTF-8 characters only.
                    text = piece.decode("utf-8", errors="replace")
                    delivered.append(text)
                    yield text
        finally:
            if self._generation == generation:
                try:
                    if not native.finished:
                        native.cancel()
                    self._record("".join(delivered))
                finally:
                    self._release(generation)

    def _record(self, delivered: str) -> Completion:
        r = self._native.result()
        # A cancelled generation's text is what the caller received: the native
        # result also holds text kept back as a possible stop-string start.
        self.last_result = completion(r, delivered if r.finish_reason == "cancelled" else None)
        self.last_stats = self.last_result.stats
        return self.last_result

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> Completion:
        """Generate to completion; same arguments as :meth:`stream`."""
        for _ in self.stream(prompt, **kwargs):
            pass
        assert self.last_result is not None
        return self.last_result

    # ---- chat -----------------------------------------------------------------------
    @overload
    def chat(self, messages: Sequence[Mapping[str, str]], *, stream: Literal[False] = ...,
             add_generation_prompt: bool = ..., **kwargs: Any) -> Completion: ...
    @overload
    def chat(self, messages: Sequence[Mapping[str, str]], *, stream: Literal[True],
             add_generation_prompt: bool = ..., **kwargs: Any) -> Iterator[str]: ...
    @overload
    def chat(self, messages: Sequence[Mapping[str, str]], *, stream: bool,
             add_generation_prompt: bool = ..., **kwargs: Any) -> Completion | Iterator[str]: ...

    def chat(self, messages: Sequence[Mapping[str, str]], *, stream: bool = False,
             add_generation_prompt: bool = True, **kwargs: Any) -> Completion | Iterator[str]:
        """Render ``messages`` with the model's chat template and generate the reply.

        The template's markup is tokenized with special tokens parsed, message contents
        as plain text (a content cannot forge a turn by spelling "<|im_end|>"). A
        template that fails, loops or grows without bound raises ValueError.
        """
        from .chat import chat_tokens

        add_special = kwargs.pop("add_special", False)
        kwargs.pop("parse_special", None)   # contents are text, the markup is special: always
        prompt = chat_tokens(self.model, messages, add_generation_prompt=add_generation_prompt,
                             add_special=bool(add_special))
        return self.stream(prompt, **kwargs) if stream else self.generate(prompt, **kwargs)
