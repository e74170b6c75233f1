"""Traffic and latency over a recent window, computed from the decision feed.

The feed is bounded (its last few hundred records), so under heavy traffic the window holds
fewer seconds than asked for; ``covered_s`` says how many it really spans, and the page
shows it. These are dashboard numbers, for a glance: Prometheus (``/metrics``) is the
source of record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mixroute.observability.feed import RequestRecord


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when it is empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Tally:
    """Counts and latencies of one group of records (a model, an endpoint, a time bucket)."""

    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    guarded: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, record: RequestRecord) -> None:
        self.requests += 1
        if record.status >= 400 or record.error is not None:
            self.errors += 1
        if record.cache == "hit":
            self.cache_hits += 1
        if record.guard:
            self.guarded += 1
        self.latencies.append(record.latency_ms)

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        p50, p95 = percentile(ordered, 0.5), percentile(ordered, 0.95)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "cache_hits": self.cache_hits,
            "guarded": self.guarded,
            "rps": round(self.requests / seconds, 3) if seconds > 0 else 0.0,
            "p50_ms": None if p50 is None else round(p50, 2),
            "p95_ms": None if p95 is None else round(p95, 2),
        }


def window_stats(
    records: Iterable[RequestRecord], now: float, window_s: float, bucket_s: float
) -> dict[str, Any]:
    """Totals, per-model, per-endpoint and per-route tallies plus a time series, for the
    records that ended in the last ``window_s`` seconds."""
    start = now - window_s
    buckets = max(1, math.ceil(window_s / bucket_s))
    total = Tally()
    models: dict[str, Tally] = {}
    endpoints: dict[str, Tally] = {}
    routes: dict[str, int] = {}
    series = [Tally() for _ in range(buckets)]
    oldest: float | None = None
    for record in records:
        if record.time < start or record.time > now + 1:
            continue
        oldest = record.time if oldest is None else min(oldest, record.time)
        total.add(record)
        models.setdefault(record.model or record.requested_model or "?", Tally()).add(record)
        if record.endpoint:
            endpoints.setdefault(record.endpoint, Tally()).add(record)
        if record.route:
            routes[record.route] = routes.get(record.route, 0) + 1
        index = min(buckets - 1, max(0, int((record.time - start) // bucket_s)))
        series[index].add(record)
    points = [_point(start + i * bucket_s, b, bucket_s) for i, b in enumerate(series)]
    return {
        "seconds": window_s,
        "covered_s": round(now - oldest, 1) if oldest is not None else 0.0,
        "total": total.summary(window_s),
        "models": {name: t.summary(window_s) for name, t in models.items()},
        "endpoints": {name: t.summary(window_s) for name, t in endpoints.items()},
        "routes": dict(sorted(routes.items(), key=lambda item: -item[1])),
        "series": {"bucket_s": bucket_s, "start": round(start, 3), "points": points},
    }


def _point(t: float, tally: Tally, bucket_s: float) -> dict[str, Any]:
    summary = tally.summary(bucket_s)
    return {
        "t": round(t, 3),
        "requests": tally.requests,
        "errors": tally.errors,
        "p50_ms": summary["p50_ms"],
        "p95_ms": summary["p95_ms"],
    }
