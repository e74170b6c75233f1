"""Per-key rate limits: requests per minute and tokens per minute, as token buckets.

A bucket holds up to one minute's allowance and refills continuously, so a key may burst up
to its limit and then runs at the limit's rate. The tokens bucket is charged twice: the
prompt estimate before the request goes upstream, then the difference to the real usage
(prompt and completion tokens) when the answer ends; that second charge may take the bucket
below zero, and the next request then waits until it has refilled. ``retry-after`` is the
time until the bucket holds what the refused request needs, rounded up to whole seconds.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Refusal:
    """Why a request may not go now and when it could."""

    kind: str  # "requests" or "tokens" (OpenAI's error types for rate limits)
    limit: int
    retry_after_s: int


class TokenBucket:
    """``capacity`` units per minute, refilled continuously; the level may go negative."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (at most the capacity) is available; 0: now."""
        self.refill(now)
        needed = min(amount, self.capacity)
        if self.level >= needed:
            return 0.0
        return (needed - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def until_full(self) -> float:
        """Seconds until the bucket is full again (as of its last refill)."""
        return max(0.0, self.capacity - self.level) / self.rate


class KeyLimiter:
    """The buckets of one key (or one anonymous client address)."""

    __slots__ = ("requests", "rpm", "tokens", "tpm")

    def __init__(self, rpm: int | None, tpm: int | None, now: float) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.requests = TokenBucket(rpm, now) if rpm else None
        self.tokens = TokenBucket(tpm, now) if tpm else None

    def same_limits(self, rpm: int | None, tpm: int | None) -> bool:
        return self.rpm == rpm and self.tpm == tpm

    def admit_request(self, now: float) -> Refusal | None:
        bucket = self.requests
        if bucket is None:
            return None
        wait = bucket.wait_for(1.0, now)
        if wait > 0:
            return Refusal("requests", int(bucket.capacity), _whole_seconds(wait))
        bucket.take(1.0)
        return None

    def admit_tokens(self, estimate: int, now: float) -> Refusal | None:
        bucket = self.tokens
        if bucket is None:
            return None
        wait = bucket.wait_for(estimate, now)
        if wait > 0:
            return Refusal("tokens", int(bucket.capacity), _whole_seconds(wait))
        bucket.take(estimate)
        return None

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` response headers for what is left now: limit, remaining
        and the time until the bucket is full again (``reset``, e.g. ``1m30s``)."""
        out: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
                out[f"x-ratelimit-reset-{kind}"] = _duration(bucket.until_full())
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
            bucket.take(prompt_n - estimate + completion_n)

        return on_usage


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

    def __init__(self, rpm: int | None, tpm: int | None, max_clients: int) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.max_clients = max_clients
        self._table: OrderedDict[str, KeyLimiter] = OrderedDict()

    def same_limits(self, rpm: int | None, tpm: int | None, max_clients: int) -> bool:
        return (self.rpm, self.tpm, self.max_clients) == (rpm, tpm, max_clients)

    def get(self, address: str) -> KeyLimiter:
        table = self._table
        limiter = table.get(address)
        if limiter is None:
            limiter = KeyLimiter(self.rpm, self.tpm, time.monotonic())
            table[address] = limiter
            if len(table) > self.max_clients:
                table.popitem(last=False)
        else:
            table.move_to_end(address)
        return limiter

    def __len__(self) -> int:
        return len(self._table)
