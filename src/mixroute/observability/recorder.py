"""Turns a finished request into a ``RequestRecord``: the feed, the per-request metrics and
the JSON request log all read this one record, so they cannot disagree."""

from __future__ import annotations

import time
from collections.abc import Mapping

from mixroute import headers as h
from mixroute.context import RequestContext
from mixroute.observability.feed import DecisionFeed, RequestRecord
from mixroute.observability.logs import RequestLogger
from mixroute.observability.metrics import Metrics

CLIENT_CLOSED = 499  # nginx's convention for a client that left before the answer

# Every error code a finished request can be counted under. Codes come from our own code
# (errors.py and its callers), plus the few the recorder derives below; anything else is
# counted as "other" so a new code can never grow the label set unnoticed.
ERROR_CODES = frozenset(
    {
        "invalid_request",
        "invalid_json",
        "missing_field",
        "request_too_large",
        "model_not_found",
        "auto_model_not_supported",
        "no_route",
        "no_healthy_endpoint",
        "no_decode_endpoint",
        "no_prefill_endpoint",
        "prefill_rejected",
        "prefill_without_kv_params",
        "upstream_error",
        "upstream_timeout",
        "upstream_stream_broken",
        "upstream_status_4xx",
        "upstream_status_5xx",
        "pii_blocked",
        "jailbreak_blocked",
        "invalid_api_key",
        "model_not_allowed",
        "rate_limit_exceeded",
        "queue_full",
        "queue_timeout",
        "gateway_shutting_down",
        "internal_error",
        "client_closed",
        "other",
    }
)


class RequestRecorder:
    """One per gateway process; every inference request passes through ``finish`` once."""

    def __init__(
        self, metrics: Metrics, feed: DecisionFeed, logger: RequestLogger | None = None
    ) -> None:
        self.metrics = metrics
        self.feed = feed
        self.logger = logger

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
        code = error_code(status, error, ctx, headers)
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
            error=code,
            tenant=ctx.tenant if ctx is not None else None,
            trace_id=ctx.trace.trace_id if ctx is not None else None,
        )
        self.feed.add(record)
        self._count(record, ctx)
        if self.logger is not None:
            self.logger.log(record, ctx)
        return record

    def _count(self, record: RequestRecord, ctx: RequestContext | None) -> None:
        # The model label only once the model is known to the config (choose_model sets the
        # header then): an unknown requested name is client text and must not become a label.
        known = ctx is not None and h.MODEL in ctx.response_headers
        self.metrics.requests_by_route.labels(
            record.model if known else "",
            record.route or "",
            record.category or "",
            f"{record.status // 100}xx",
        ).inc()
        if record.error is not None:
            self.metrics.request_errors.labels(record.error).inc()


def error_code(
    status: int, raised: str | None, ctx: RequestContext | None, headers: Mapping[str, str]
) -> str | None:
    """The bounded error code of a finished request, or None when it did not fail.

    A raised ``GatewayError`` names its code; the forwarder notes the code of a failure it
    answered without raising (``ctx.error_code``, which also marks a stream that broke after
    its 200); a guard's error-style refusal is ``<guard>_blocked``; a relayed upstream error
    status is ``upstream_status_4xx/5xx``.
    """
    code = raised or (ctx.error_code if ctx is not None else None)
    if code is None:
        if status == CLIENT_CLOSED:
            code = "client_closed"
        elif status >= 400:
            blocked = headers.get(h.BLOCKED)
            code = f"{blocked}_blocked" if blocked else f"upstream_status_{status // 100}xx"
        else:
            return None
    return code if code in ERROR_CODES else "other"
