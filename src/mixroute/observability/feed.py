"""What happened to each request, as one record, and a bounded feed of the recent ones.

The record is built once when a request ends (answered, refused, cached or failed) and is
what the dashboard's live feed shows and the JSON request log writes. It holds decisions and
timings only: never prompt text, answers or header values a client supplied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    seq: int
    request_id: str
    time: float  # wall clock (time.time()) when the request ended
    path: str
    requested_model: str
    model: str
    status: int
    latency_ms: float
    stream: bool
    route: str | None = None
    category: str | None = None
    confidence: float | None = None
    endpoint: str | None = None
    attempts: int = 1
    cache: str | None = None  # hit / miss, as in x-mixroute-cache
    guard: str | None = None  # what a guard did (blocked:..., pii: ..., flagged:...)
    error: str | None = None  # the OpenAI error code when the request failed
    tenant: str | None = None
    trace_id: str | None = None  # when the request was traced and sampled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DecisionFeed:
    """The last ``capacity`` request records, newest last; readers poll with ``after``."""

    def __init__(self, capacity: int = 500, sequence: Callable[[], int] | None = None) -> None:
        """``sequence``: where the seqs come from when several workers number one feed
        (observability/workers.py); by default this feed counts on its own."""
        self._records: deque[RequestRecord] = deque(maxlen=capacity)
        self._next_seq = 1
        self._sequence = sequence

    def next_seq(self) -> int:
        if self._sequence is not None:
            return self._sequence()
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)

    def recent(self, after: int = 0, limit: int = 100) -> list[RequestRecord]:
        """Records with ``seq > after``, at most ``limit`` of the newest."""
        newer = [r for r in self._records if r.seq > after]
        return newer[-limit:] if limit > 0 else []

    def __len__(self) -> int:
        return len(self._records)
