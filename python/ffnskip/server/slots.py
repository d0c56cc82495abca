"""Session slots and the bounded queue in front of them.

One Model is shared by N Sessions (slots); a request holds one slot from prefill to
its last token. Requests that find every slot busy wait in a FIFO queue of at most
`max_queue` entries; beyond that, acquire() raises QueueFull (HTTP 429). All methods
run on the event loop thread; worker threads hand slots back via call_soon_threadsafe.
"""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any, Deque, List


class QueueFull(Exception):
    pass


@dataclass
class Slot:
    index: int
    session: Any          # ffnskip.Session, used by one worker thread at a time


class SlotPool:
    def __init__(self, slots: List[Slot], max_queue: int) -> None:
        if not slots:
            raise ValueError("a server needs at least one slot")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.slots = slots
        self.max_queue = max_queue
        self._free: Deque[Slot] = collections.deque(slots)
        self._waiters: Deque[asyncio.Future] = collections.deque()

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def n_busy(self) -> int:
        return len(self.slots) - len(self._free)

    @property
    def queue_length(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> Slot:
        if self._free and not self._waiters:
            return self._free.popleft()
        if self.queue_length >= self.max_queue:
            raise QueueFull(f"all {self.n_slots} slots are busy and the queue is full "
                            f"({self.max_queue} waiting); retry later")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # A slot handed over just as the waiter was cancelled goes back.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def release(self, slot: Slot) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)
