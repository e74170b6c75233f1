"""Per-key rate limits: requests per minute and tokens per minute, as token buckets.

A bucket holds up to one minute's allowance and refills continuously, so a key may burst up
to its limit and then runs at the limit's rate. The tokens bucket is charged twice: the
prompt estimate before the request goes upstream, then the difference to the real usage
(prompt and completion tokens) when the answer ends; that second charge may take the bucket
below zero, and the next request then waits until it has refilled. ``retry-after`` is the
time until the bucket holds what the refused request needs, rounded up to whole seconds.
With ``--workers N`` the levels live in memory the workers share (access/shared.py), so a
limit holds for the whole gateway, not per worker.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mixroute.access.shared import SharedBuckets, bucket_tag


@dataclass(slots=True)
class Refusal:
    """Why a request may not go now and when it could."""

    kind: str  # "requests" or "tokens" (OpenAI's error types for rate limits)
    limit: int
    retry_after_s: int


class Bucket(Protocol):
    """A token bucket: this process's ``TokenBucket`` or a worker-shared ``SharedBucket``."""

    capacity: float
    rate: float

    def try_take(self, amount: float, now: float) -> float:
        """Take ``amount`` if the bucket holds it (at most its capacity is asked for) and
        return 0, or return the seconds until it will and take nothing."""
        ...

    def take(self, amount: float, now: float) -> None:
        """Charge ``amount`` unconditionally (the level may go negative)."""
        ...

    def level(self, now: float) -> float: ...


class TokenBucket:
    """``capacity`` units per minute, refilled continuously; the level may go negative."""

    __slots__ = ("_level", "_stamp", "capacity", "rate")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._level = self.capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
            self._stamp = now

    def try_take(self, amount: float, now: float) -> float:
        self._refill(now)
        needed = min(amount, self.capacity)
        if self._level >= needed:
            self._level -= amount
            return 0.0
        return (needed - self._level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self._level -= amount

    def level(self, now: float) -> float:
        self._refill(now)
        return self._level


class KeyLimiter:
    """The buckets of one key (or one anonymous client address); ``shared`` keeps their
    levels in memory shared by the workers (access/shared.py), under tags made from
    ``identity``."""

    __slots__ = ("requests", "rpm", "tokens", "tpm")

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        now: float,
        shared: SharedBuckets | None = None,
        identity: tuple[object, ...] = (),
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.requests = _bucket(rpm, now, shared, (*identity, "requests"))
        self.tokens = _bucket(tpm, now, shared, (*identity, "tokens"))

    def same_limits(self, rpm: int | None, tpm: int | None) -> bool:
        return self.rpm == rpm and self.tpm == tpm

    def admit_request(self, now: float) -> Refusal | None:
        bucket = self.requests
        if bucket is None:
            return None
        wait = bucket.try_take(1.0, now)
        if wait > 0:
            return Refusal("requests", int(bucket.capacity), _whole_seconds(wait))
        return None

    def admit_tokens(self, estimate: int, now: float) -> Refusal | None:
        bucket = self.tokens
        if bucket is None:
            return None
        wait = bucket.try_take(estimate, now)
        if wait > 0:
            return Refusal("tokens", int(bucket.capacity), _whole_seconds(wait))
        return None

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` response headers for what is left now: limit, remaining
        and the time until the bucket is full again (``reset``, e.g. ``1m30s``)."""
        out: dict[str, str] = {}
        now = time.monotonic()
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                level = bucket.level(now)
                out[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level)))
                until_full = max(0.0, bucket.capacity - level) / bucket.rate
                out[f"x-ratelimit-reset-{kind}"] = _duration(until_full)
        return out

    def usage_callback(self, estimate: int) -> Callable[[dict[str, Any]], None] | None:
        """What the forwarder calls when the answer's usage is known: charge the rest."""
        bucket = self.tokens
        if bucket is None:
            return None

        def on_usage(usage: dict[str, Any]) -> None:
            prompt = usage.get("prompt_tokens") or usage.get("input_tokens")
            completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
            prompt_n = prompt if isinstance(prompt, int) else estimate
            completion_n = completion if isinstance(completion, int) else 0
            bucket.take(prompt_n - estimate + completion_n, time.monotonic())

        return on_usage


def _bucket(
    per_minute: int | None, now: float, shared: SharedBuckets | None, identity: tuple[object, ...]
) -> Bucket | None:
    if not per_minute:
        return None
    if shared is None:
        return TokenBucket(per_minute, now)
    return shared.bucket(bucket_tag(*identity, per_minute), per_minute)


def _whole_seconds(wait: float) -> int:
    return max(1, math.ceil(wait - 1e-9))


def _duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: ``0s``, ``12s``, ``1m30s``."""
    whole = math.ceil(seconds - 1e-9)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class AddressLimiters:
    """Limiters of anonymous clients by address, bounded: the least recently seen is
    forgotten first (it then starts again with a full bucket)."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        max_clients: int,
        shared: SharedBuckets | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.max_clients = max_clients
        self._shared = shared
        self._table: OrderedDict[str, KeyLimiter] = OrderedDict()

    def same_limits(self, rpm: int | None, tpm: int | None, max_clients: int) -> bool:
        return (self.rpm, self.tpm, self.max_clients) == (rpm, tpm, max_clients)

    def get(self, address: str) -> KeyLimiter:
        table = self._table
        limiter = table.get(address)
        if limiter is None:
            identity = ("anonymous", address)
            limiter = KeyLimiter(self.rpm, self.tpm, time.monotonic(), self._shared, identity)
            table[address] = limiter
            if len(table) > self.max_clients:
                table.popitem(last=False)
        else:
            table.move_to_end(address)
        return limiter

    def __len__(self) -> int:
        return len(self._table)
