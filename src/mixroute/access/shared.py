"""Token buckets and in-flight counters shared by the worker processes of one
``mixroute serve --workers N``.

A key's ``rpm`` must mean requests per minute for the gateway, not per worker: with the
buckets in each process a key got N times its limit (the kernel spreads connections over the
workers). The supervisor makes one ``SharedBuckets`` before it forks; every worker then keeps
its buckets' levels in the same shared memory.

The store is a fixed open-addressing table of (tag, level, stamp) records in anonymous
shared memory, behind one process-shared lock. A bucket is found by its tag (a hash of the
key's identity, the bucket kind and its limit, so a reload that keeps a key's limits keeps
its level, in every worker); a bucket not found within ``PROBES`` slots replaces the least
recently used of them, which then starts again full, as a forgotten anonymous client does in
one process. ``time.monotonic`` is the system's monotonic clock, the same in every process.

The same goes for a model's ``max_in_flight``: ``SharedCounters`` holds each model's count of
requests upstream across the workers (access/admission.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import multiprocessing
from collections.abc import Callable
from multiprocessing.sharedctypes import RawArray
from typing import Any

log = logging.getLogger(__name__)

PROBES = 16
LOCK_TIMEOUT_S = 1.0
# 32768 records of 24 bytes (768 KiB): room for every key's two buckets and many anonymous
# client addresses; beyond that the least recently used bucket in a probe window is reused.
SHARED_BUCKET_SLOTS = 1 << 15
SHARED_COUNTER_SLOTS = 1024  # one per model with max_in_flight


class _Record(ctypes.Structure):
    _fields_ = (("tag", ctypes.c_uint64), ("level", ctypes.c_double), ("stamp", ctypes.c_double))


def bucket_tag(*parts: object) -> int:
    """A non-zero 64-bit tag for a bucket's identity (0 marks a free slot)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class SharedBuckets:
    """Bucket levels in memory shared across forked workers."""

    def __init__(self, slots: int) -> None:
        self._records: Any = RawArray(_Record, slots)
        self._slots = slots
        self._lock = multiprocessing.get_context("fork").Lock()
        self._stuck = False

    def bucket(self, tag: int, per_minute: int) -> SharedBucket:
        return SharedBucket(self, tag, per_minute)

    def update(
        self,
        tag: int,
        capacity: float,
        rate: float,
        now: float,
        change: Callable[[float], tuple[float, float]],
    ) -> float:
        """Refill the bucket ``tag`` to ``now``, apply ``change(level) -> (new level, result)``
        under the lock, and return the result.

        The lock is held for microseconds; a worker killed inside it (SIGKILL, the OOM
        killer) would leave it taken for good. Rather than stop every worker, the limits then
        stop limiting (result 0: admitted), and the log says so; later calls do not wait."""
        if self._stuck or not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            if not self._stuck:
                self._stuck = True  # in this worker: each worker finds out once
                log.error(
                    "the workers' shared rate-limit lock is stuck (a worker died holding it?): "
                    "rate limits are not enforced until the gateway restarts"
                )
            return 0.0
        try:
            record = self._find(tag, capacity, now)
            level = record.level
            if now > record.stamp:
                level = min(capacity, level + (now - record.stamp) * rate)
                record.stamp = now
            record.level, result = change(level)
            return float(result)
        finally:
            self._lock.release()

    def _find(self, tag: int, capacity: float, now: float) -> Any:
        records = self._records
        start = tag % self._slots
        oldest = None
        for step in range(min(PROBES, self._slots)):
            record = records[(start + step) % self._slots]
            if record.tag == tag:
                return record
            if record.tag == 0:
                oldest = record
                break
            if oldest is None or record.stamp < oldest.stamp:
                oldest = record
        assert oldest is not None
        oldest.tag, oldest.level, oldest.stamp = tag, capacity, now
        return oldest


class SharedBucket:
    """``TokenBucket``'s interface over one record of a ``SharedBuckets``."""

    __slots__ = ("_store", "_tag", "capacity", "rate")

    def __init__(self, store: SharedBuckets, tag: int, per_minute: int) -> None:
        self._store = store
        self._tag = tag
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0

    def try_take(self, amount: float, now: float) -> float:
        needed = min(amount, self.capacity)

        def change(level: float) -> tuple[float, float]:
            if level >= needed:
                return level - amount, 0.0
            return level, (needed - level) / self.rate

        return self._store.update(self._tag, self.capacity, self.rate, now, change)

    def take(self, amount: float, now: float) -> None:
        self._store.update(self._tag, self.capacity, self.rate, now, lambda lv: (lv - amount, 0.0))

    def level(self, now: float) -> float:
        return self._store.update(self._tag, self.capacity, self.rate, now, lambda lv: (lv, lv))


class _Counter(ctypes.Structure):
    _fields_ = (("tag", ctypes.c_uint64), ("value", ctypes.c_int64))


class SharedCounters:
    """Counts shared by the workers (the models' requests in flight, for ``max_in_flight``):
    a small table of (tag, value) in shared memory behind one lock (1024 models fit). Past
    that, or with a stuck lock, counters admit everything and the log says so once: a
    gateway that stops limiting is better than one that stops serving."""

    def __init__(self, slots: int) -> None:
        self._records: Any = RawArray(_Counter, slots)
        self._slots = slots
        self._lock = multiprocessing.get_context("fork").Lock()
        self._stuck = False
        self._full = False

    def counter(self, tag: int) -> SharedCounter:
        return SharedCounter(self, tag)

    def change(self, tag: int, delta: int, below: int | None) -> bool:
        """Add ``delta`` to the counter ``tag``, only if its value is below ``below`` when
        that is given; whether it was added. A stuck lock (see ``SharedBuckets.update``)
        or a full table says yes."""
        if self._stuck or not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            if not self._stuck:
                self._stuck = True
                log.error("the workers' shared in-flight lock is stuck: max_in_flight not enforced")
            return True
        try:
            record = self._find(tag)
            if record is None:
                return True
            if below is not None and record.value >= below:
                return False
            record.value += delta
            return True
        finally:
            self._lock.release()

    def value(self, tag: int) -> int:
        with self._lock:
            record = self._find(tag)
            return int(record.value) if record is not None else 0

    def _find(self, tag: int) -> Any:
        start = tag % self._slots
        for step in range(self._slots):
            record = self._records[(start + step) % self._slots]
            if record.tag == tag:
                return record
            if record.tag == 0:
                record.tag, record.value = tag, 0
                return record
        if not self._full:
            self._full = True
            log.error("the workers' shared in-flight table is full: max_in_flight not enforced")
        return None


class SharedCounter:
    """One counter of a ``SharedCounters``."""

    __slots__ = ("_store", "_tag")

    def __init__(self, store: SharedCounters, tag: int) -> None:
        self._store = store
        self._tag = tag

    def take_below(self, limit: int) -> bool:
        """One more, if fewer than ``limit`` are counted; whether it was taken."""
        return self._store.change(self._tag, 1, limit)

    def give_back(self) -> None:
        self._store.change(self._tag, -1, None)

    def value(self) -> int:
        return self._store.value(self._tag)


class SharedAccess:
    """What access control shares across the workers: the rate-limit buckets and the
    models' in-flight counts. Made by the supervisor before it forks."""

    def __init__(self) -> None:
        self.buckets = SharedBuckets(SHARED_BUCKET_SLOTS)
        self.counters = SharedCounters(SHARED_COUNTER_SLOTS)
