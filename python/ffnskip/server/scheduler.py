"""The batch scheduler: one thread drives a BatchGenerator for every request in flight.

Requests arrive from the event loop (submit); the thread adds them to the batch between
rounds, runs one round (prompt chunks of the joining requests, then one forward pass for
every generating one: the native call releases the GIL), and posts each request's text
to its Job. A Job whose cancel flag is set leaves the batch at the next round.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Deque, Dict, Mapping, Sequence, Tuple

from ..batch import BatchGenerator
from .metrics import Metrics


class Scheduler:
    def __init__(self, generator: BatchGenerator, metrics: Metrics) -> None:
        self.generator = generator
        self.metrics = metrics
        self._inbox: Deque[Tuple[Any, Sequence[int], Mapping[str, Any]]] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._jobs: Dict[int, Any] = {}   # request id -> Job; touched by the thread only
        self._thread = threading.Thread(target=self._run, name="ffnskip-batch", daemon=True)
        self._thread.start()

    def submit(self, job: Any, prompt: Sequence[int], kwargs: Mapping[str, Any]) -> None:
        with self._wake:
            self._inbox.append((job, list(prompt), dict(kwargs)))
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    # ---- the scheduler thread ----------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._inbox and not self._jobs:
                    self._wake.wait()
                if self._stopping:
                    break
                joining = list(self._inbox)
                self._inbox.clear()
            try:
                self._round(joining)
            except BaseException as e:   # never leave a request waiting forever
                self._fail_all(e)
        self._fail_all(RuntimeError("the server is shutting down"))

    def _round(self, joining: list) -> None:
        g = self.generator
        for job, prompt, kwargs in joining:
            if job.cancel.is_set():
                job.finish("error", RuntimeError("cancelled before it started"))
                continue
            try:
                request = g.submit(prompt, **kwargs)
            except BaseException as e:   # bad arguments: the request's 400
                job.finish("error", e)
                continue
            self._jobs[request] = job
            job.post("started")
        for request, job in list(self._jobs.items()):
            if job.cancel.is_set():
                g.cancel(request)
                self._done(request, cancelled=True)
        if not self._jobs:
            return
        updates = g.step()
        if updates:
            self.metrics.count_batch_step(len(updates))
        for request, piece, finished in updates:
            job = self._jobs[request]
            if piece:
                job.post("piece", piece)
            if finished:
                self._done(request)

    def _done(self, request: int, cancelled: bool = False) -> None:
        job = self._jobs.pop(request)
        result = self.generator.result(request)
        self.metrics.count_generation(result.stats, cancelled or result.finish_reason == "cancelled")
        job.finish("done", result)

    def _fail_all(self, error: BaseException) -> None:
        for request, job in list(self._jobs.items()):
            try:
                self.generator.cancel(request)
                self.generator.result(request)
            except BaseException:
                pass
            job.finish("error", error)
        self._jobs.clear()
        with self._wake:
            joining = list(self._inbox)
            self._inbox.clear()
        for job, _, _ in joining:
            job.finish("error", error)
