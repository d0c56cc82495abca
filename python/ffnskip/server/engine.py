"""The serving engine: one Model, N Session slots, generations on worker threads.

A generation runs entirely on a worker thread (prefill and every decode step are
native calls that release the GIL), so the event loop stays free for other requests
and /health. The thread posts events to an asyncio.Queue: ("started",), ("piece",
text) ..., then ("done", Completion) or ("error", exception). Setting Job.cancel
stops the decode after the current token and hands the slot back.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pathlib
import threading
from typing import Any, Dict, Mapping, Optional, Sequence

from .. import _core
from ..session import Session
from ..skip import SkipSpec, config_dict, skip_config
from .metrics import Metrics
from .slots import Slot, SlotPool


class Job:
    """One generation in flight: its event queue and its cancel flag."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.finished = asyncio.Event()   # set when the slot is back in the pool

    def post(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop closed under us (shutdown)
            self.cancel.set()


class Engine:
    def __init__(self, model_path: str | os.PathLike[str], *, slots: int = 1, max_queue: int = 16,
                 n_ctx: int = 0, n_threads: int = 0, skip: SkipSpec = None,
                 model_name: Optional[str] = None) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model_path = os.fspath(model_path)
        self.model = _core.Model(self.model_path)
        self.model_id = model_name or pathlib.Path(self.model_path).name.removesuffix(".gguf")
        if n_threads <= 0:
            # Each slot's thread pool spins while it works: share the cores out.
            n_threads = max(1, (os.cpu_count() or 1) // slots)
        self.n_threads = n_threads
        self.skip = skip_config(skip)
        self.skip_fields = config_dict(self.skip)
        sessions = [Session(self.model, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, skip=self.skip)
                    for _ in range(slots)]
        self.n_ctx = sessions[0].n_ctx
        self.pool = SlotPool([Slot(i, s) for i, s in enumerate(sessions)], max_queue)
        self.metrics = Metrics()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="ffnskip-slot")

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    # ---- requests -> engine arguments ---------------------------------------------
    def request_skip(self, overrides: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        """The server's skip settings with a request's fields laid over them (None: the
        server's own, unchanged). Raises ValueError for settings the engine rejects."""
        if not overrides:
            return None
        fields = dict(self.skip_fields)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        skip_config(fields)   # validate now: errors become a 400 before a slot is taken
        return fields

    def tokenize(self, text: str, *, chat: bool = False) -> list[int]:
        # Completions are text (special-token texts stay text) with BOS as the model asks;
        # chat prompts come from ffnskip.chat.chat_tokens.
        return self.model.tokenize(text, not chat, chat)

    def gauges(self) -> Dict[str, float]:
        return {"queue_length": self.pool.queue_length, "slots_busy": self.pool.n_busy,
                "slots_total": self.pool.n_slots, "queue_limit": self.pool.max_queue}

    # ---- running ------------------------------------------------------------------
    def start(self, slot: Slot, prompt: Sequence[int], kwargs: Mapping[str, Any]) -> Job:
        """Run a generation on `slot` in a worker thread; the slot returns to the pool
        when it ends, fails or is cancelled."""
        loop = asyncio.get_running_loop()
        job = Job(loop)

        def release() -> None:
            self.pool.release(slot)
            job.finished.set()

        def finish(*event: Any) -> None:
            # The slot goes back before the request hears "done": a client that sends its
            # next request as soon as it has the answer must find the slot free.
            try:
                loop.call_soon_threadsafe(release)
            except RuntimeError:   # the loop closed under us (shutdown)
                pass
            job.post(*event)

        def work() -> None:
            session = slot.session
            cancelled = False
            pieces = None
            try:
                pieces = session.stream(list(prompt), **kwargs)   # prefill happens here
                job.post("started")
                for piece in pieces:
                    if job.cancel.is_set():
                        pieces.close()   # cancels the native generation
                        cancelled = True
                        break
                    job.post("piece", piece)
                pieces.close()   # the session is done with: nothing below touches it
                result = session.last_result
                if not cancelled and result is not None and result.finish_reason == "cancelled":
                    cancelled = True
                if result is not None:
                    self.metrics.count_generation(result.stats, cancelled)
            except BaseException as e:  # reported to the request, never kills the server
                try:
                    if pieces is not None:
                        pieces.close()
                except BaseException:
                    pass
                finish("error", e)
                return
            finish("done", result)

        self.executor.submit(work)
        return job
