"""The serving engine: one Model; N slots = N sequences decoded together.

By default (batching) one scheduler thread drives a BatchGenerator: every step is one
forward pass for all the requests in flight (server/scheduler.py). Without batching
each slot is a Session of its own and a generation runs on a worker thread; a Session
reuses the cached prefix of its previous prompt, which a batch does not.

Either way the native calls release the GIL, so the event loop stays free for other
requests and /health. A generation posts events to an asyncio.Queue: ("started",),
("piece", text) ..., then ("done", Completion) or ("error", exception). Setting
Job.cancel stops it after the current token and hands the slot back.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pathlib
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from .. import _core
from ..batch import BatchGenerator
from ..session import Session
from ..skip import SkipSpec, config_dict, skip_config
from .metrics import Metrics
from .scheduler import Scheduler
from .slots import Slot, SlotPool


class Job:
    """One generation in flight: its event queue and its cancel flag."""

    def __init__(self, loop: asyncio.AbstractEventLoop, release: Callable[[], None]) -> None:
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.finished = asyncio.Event()   # set when the slot is back in the pool
        self._release = release

    def post(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop closed under us (shutdown)
            self.cancel.set()

    def finish(self, *event: Any) -> None:
        """The last event ("done" or "error"), from the generating thread. The slot goes
        back before the request hears it: a client that sends its next request as soon
        as it has the answer must find the slot free."""
        def release() -> None:
            self._release()
            self.finished.set()

        try:
            self.loop.call_soon_threadsafe(release)
        except RuntimeError:   # the loop closed under us (shutdown)
            pass
        self.post(*event)


class Engine:
    def __init__(self, model_path: str | os.PathLike[str], *, slots: int = 1, max_queue: int = 16,
                 n_ctx: int = 0, n_threads: int = 0, skip: SkipSpec = None,
                 model_name: Optional[str] = None, batching: bool = True,
                 prefill_chunk: int = 64, backend: str = "cpu", skip_alignment: str = "none") -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model_path = os.fspath(model_path)
        self.model = _core.Model(self.model_path)
        self.model_id = model_name or pathlib.Path(self.model_path).name.removesuffix(".gguf")
        self.batching = bool(batching)
        if skip_alignment != "none" and not self.batching:
            raise ValueError(f"skip_alignment={skip_alignment!r} needs batching (the slots' FFN decisions are "
                             "aligned within one batch)")
        if n_threads <= 0:
            # One batch uses every core; separate sessions each spin a pool: share them out.
            n_threads = max(1, (os.cpu_count() or 1) // (1 if self.batching else slots))
        self.n_threads = n_threads
        self.skip = skip_config(skip)
        self.skip_fields = config_dict(self.skip)
        self.metrics = Metrics()
        self.scheduler: Optional[Scheduler] = None
        self.executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        if self.batching:
            generator = BatchGenerator(self.model, n_seq=slots, n_ctx=n_ctx, n_threads=n_threads,
                                       n_prefill_chunk=prefill_chunk, skip=self.skip, backend=backend,
                                       skip_alignment=skip_alignment)
            self.n_ctx = generator.n_ctx
            self.pool = SlotPool([Slot(i, None) for i in range(slots)], max_queue)
            self.scheduler = Scheduler(generator, self.metrics)
        else:
            sessions = [Session(self.model, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, skip=self.skip,
                                backend=backend)
                        for _ in range(slots)]
            self.n_ctx = sessions[0].n_ctx
            self.pool = SlotPool([Slot(i, s) for i, s in enumerate(sessions)], max_queue)
            self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="ffnskip-slot")

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        if self.executor is not None:
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
        """Run a generation in `slot` (the batch, or the slot's own Session on a worker
        thread); the slot returns to the pool when it ends, fails or is cancelled."""
        job = Job(asyncio.get_running_loop(), lambda: self.pool.release(slot))
        if self.scheduler is not None:
            self.scheduler.submit(job, prompt, kwargs)
        else:
            assert self.executor is not None
            self.executor.submit(self._run_in_session, slot.session, job, list(prompt), kwargs)
        return job

    def _run_in_session(self, session: Session, job: Job, prompt: list, kwargs: Mapping[str, Any]) -> None:
        cancelled = False
        pieces = None
        try:
            pieces = session.stream(prompt, **kwargs)   # prefill happens here
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
            job.finish("error", e)
            return
        job.finish("done", result)
