"""Admission control: at most N requests of a model upstream at once, a bounded queue after.

Without it an overloaded model makes the gateway hold every waiting request (and its body)
in memory for as long as clients keep sending; with it the excess gets a fast 429 (queue
full) or a 503 (waited too long) and the memory in use is bounded by the queue size.

The queue is a heap ordered by priority (higher first), then arrival. A waiter is a future:
``release`` hands its slot straight to the best waiter, so the in-flight count never dips
below the limit while someone waits. A waiter that is cancelled (its client disconnected)
or times out leaves the heap at once; if the slot was handed to it in the same instant, it
gives the slot back, so no slot is ever lost.

With ``--workers N`` the count is the gateway's (``shared``: a counter in memory the workers
share, access/shared.py), so ``max_in_flight`` means the same as with one process. Each
worker keeps its own queue: a slot freed here goes to a waiter here first, and waiters poll
every ``SHARED_POLL_S`` for slots freed in other workers. ``max_queue`` and priorities are
per worker.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from mixroute.access.shared import SharedCounter

SHARED_POLL_S = 0.005


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` waiters already."""


class QueueTimeout(Exception):
    """A waiter was not admitted within the model's queue timeout."""


class AdmissionGate:
    def __init__(
        self,
        max_in_flight: int,
        max_queue: int,
        timeout_s: float,
        shared: SharedCounter | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.in_flight = 0  # this process's requests holding a slot
        self._shared = shared
        self._poller: asyncio.Task[None] | None = None
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def queued(self) -> int:
        return len(self._heap)

    def configure(self, max_in_flight: int, max_queue: int, timeout_s: float) -> None:
        """New limits from a reload; requests in flight and waiting keep their places."""
        self.max_in_flight, self.max_queue, self.timeout_s = max_in_flight, max_queue, timeout_s
        self._admit_waiters()

    def _take(self) -> bool:
        """Count one more in flight if the limit allows; whether it did."""
        if self._shared is None:
            if self.in_flight >= self.max_in_flight:
                return False
        elif not self._shared.take_below(self.max_in_flight):
            return False
        self.in_flight += 1
        return True

    def _give_back(self) -> None:
        self.in_flight -= 1
        if self._shared is not None:
            self._shared.give_back()

    def _admit_waiters(self) -> None:
        while self._heap and self._take():
            self._grant_next()

    async def acquire(self, priority: int = 0) -> None:
        """Wait for a slot; raises ``QueueFull`` or ``QueueTimeout``. Pair with ``release``."""
        if not self._heap and self._take():
            return
        if len(self._heap) >= self.max_queue:
            raise QueueFull
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (-priority, next(self._order), future)
        heapq.heappush(self._heap, entry)
        if self._shared is not None and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            async with asyncio.timeout(self.timeout_s):
                await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                # The slot arrived in the same instant: give it back, we will not use it.
                self.release()
            else:
                future.cancel()
                self._remove(entry)
            if isinstance(exc, TimeoutError):
                raise QueueTimeout from None
            raise

    def release(self) -> None:
        if self._heap:
            self._grant_next()
        else:
            self._give_back()

    def _grant_next(self) -> None:
        """Hand the slot held by the caller to the best waiter (the count stays)."""
        while self._heap:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                future.set_result(None)
                return
        self._give_back()

    async def _poll(self) -> None:
        """While this worker has waiters: take slots other workers have freed."""
        try:
            while self._heap:
                await asyncio.sleep(SHARED_POLL_S)
                self._admit_waiters()
        finally:
            self._poller = None

    def _remove(self, entry: tuple[int, int, asyncio.Future[None]]) -> None:
        try:
            self._heap.remove(entry)
        except ValueError:
            return
        heapq.heapify(self._heap)
