"""Turns a finished request into a ``RequestRecord`` and hands it to the feed."""

from __future__ import annotations

import time
from collections.abc import Mapping

from mixroute import headers as h
from mixroute.context import RequestContext
from mixroute.observability.feed import DecisionFeed, RequestRecord
from mixroute.observability.metrics import Metrics

CLIENT_CLOSED = 499  # nginx's convention for a client that left before the answer


class RequestRecorder:
    """One per gateway process; every inference request passes through ``finish`` once."""

    def __init__(self, metrics: Metrics, feed: DecisionFeed) -> None:
        self.metrics = metrics
        self.feed = feed

    def finish(
        self,
        *,
        request_id: str,
        path: str,
        started: float,
        ctx: RequestContext | None,
        status: int,
        headers: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> RequestRecord:
        """``headers`` are the response's (a cache hit or refusal builds its own); by default
        the headers the request gathered on its way."""
        if headers is None:
            headers = ctx.response_headers if ctx is not None else {}
        decision = ctx.decision if ctx is not None else None
        guard = headers.get(h.BLOCKED) or headers.get(h.PII) or headers.get(h.FLAGGED)
        record = RequestRecord(
            seq=self.feed.next_seq(),
            request_id=request_id,
            time=time.time(),
            path=path,
            requested_model=ctx.requested_model if ctx is not None else "",
            model=ctx.model if ctx is not None else "",
            status=status,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
            stream=ctx.stream if ctx is not None else False,
            route=decision.route if decision is not None else None,
            category=decision.category if decision is not None else None,
            confidence=round(decision.confidence, 3) if decision is not None else None,
            endpoint=headers.get(h.ENDPOINT),
            attempts=int(headers.get(h.ATTEMPTS, "1")),
            cache=headers.get(h.CACHE),
            guard=guard,
            error=error,
            tenant=ctx.tenant if ctx is not None else None,
        )
        self.feed.add(record)
        return record
