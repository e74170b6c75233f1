"""OpenTelemetry tracing: one trace per inference request, one span per stage.

OpenTelemetry is an optional dependency (``pip install 'mixroute[tracing]'``), so nothing
here imports it at module import: ``build_tracing`` imports it when tracing is enabled, and
falls back to the no-op when it is missing (with a warning: observability must never keep the
gateway from serving).

Two objects, so the request path never asks "is tracing on?":

- ``Tracing`` (one per gateway) starts a request's trace: ``begin`` returns a
  ``RequestTrace``. The base classes are the no-op: ``begin`` returns the shared ``NO_TRACE``,
  whose ``span`` returns one shared, stateless null span that is its own context manager. A
  stage then costs a method call and an empty ``with`` (about 0.15 µs).
- ``_OtelTracing`` owns a ``TracerProvider`` built for this gateway (never the global one:
  two gateways in one process, as in the tests, export to their own processors) and is shut
  down by ``Gateway.stop``.

Stage spans nest through OpenTelemetry's context (a contextvar, per asyncio task): the root
span is attached in ``begin`` and detached in ``finish``, which run in the same handler task.
No attribute carries prompt text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from mixroute import headers as h

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import Span

    from mixroute.context import RequestContext
    from mixroute.observability.config import TracingConfig

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "mixroute"
# W3C trace context: replaced (never duplicated) on the way upstream when tracing is on.
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# Root span attributes read from the response's explain headers at the end of the request.
_ROOT_FROM_HEADERS = (
    (h.MODEL, "mixroute.model"),
    (h.ROUTE, "mixroute.route"),
    (h.CATEGORY, "mixroute.category"),
    (h.ENDPOINT, "mixroute.endpoint"),
    (h.CACHE, "mixroute.cache"),
    (h.ATTEMPTS, "mixroute.attempts"),
    (h.BLOCKED, "mixroute.guard.blocked"),
)


class SpanHandle(Protocol):
    """What a stage may do with its span; OpenTelemetry's ``Span`` and the null span fit."""

    def is_recording(self) -> bool: ...

    def set_attribute(self, key: str, value: Any) -> None: ...


class _NullSpan:
    """The span, and its own context manager, when nothing is traced: stateless and shared."""

    __slots__ = ()

    def __enter__(self) -> _NullSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        return None


_NULL_SPAN = _NullSpan()


class RequestTrace:
    """One request's trace. This base is the no-op every untraced request shares."""

    __slots__ = ()

    def span(self, name: str, *, client: bool = False) -> AbstractContextManager[SpanHandle]:
        """A child of the current span for one stage (``client``: a call out of the process)."""
        return _NULL_SPAN

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id (32 hex digits) of a sampled trace, for the request log."""
        return None

    def first_byte(self) -> None:
        """The upstream's status line and headers arrived (a span from the attempt's start)."""

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Put this trace's ``traceparent``/``tracestate`` into upstream request headers."""

    def finish(
        self,
        status: int,
        ctx: RequestContext | None,
        headers: Mapping[str, str] | None,
        error: str | None,
    ) -> None:
        """Describe the request on its root span and end it (``status`` 0: not answered
        here; the Envoy layout forwards the request and the trace goes on upstream)."""


NO_TRACE = RequestTrace()


class Tracing:
    """A gateway's tracing. This base is the no-op: tracing disabled or not installed."""

    def begin(
        self, method: str, path: str, headers: Mapping[str, str], request_id: str
    ) -> RequestTrace:
        """Start a request's trace, continuing the client's ``traceparent`` if it sent one."""
        return NO_TRACE

    async def shutdown(self) -> None:
        """Flush what is queued and stop exporting."""


NO_TRACING = Tracing()


def build_tracing(config: TracingConfig, processor: SpanProcessor | None = None) -> Tracing:
    """The gateway's tracing from config; ``processor`` replaces the OTLP batch exporter
    (tests pass a ``SimpleSpanProcessor`` over an in-memory exporter)."""
    if not config.enabled:
        return NO_TRACING
    try:
        return _OtelTracing(config, processor)
    except ImportError as exc:
        log.warning(
            "observability.tracing.enabled is true but OpenTelemetry is not installed (%s): "
            "running without tracing. Install it with: pip install 'mixroute[tracing]'",
            exc,
        )
        return NO_TRACING


class _OtelTracing(Tracing):
    """Tracing through an OpenTelemetry ``TracerProvider`` owned by this gateway."""

    def __init__(self, config: TracingConfig, processor: SpanProcessor | None) -> None:
        # Imported here, not at module import: the package is optional.
        from opentelemetry import context as otel_context
        from opentelemetry import trace as otel_trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=config.headers)
            processor = BatchSpanProcessor(exporter)
        self._provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create({"service.name": config.service_name}),
            shutdown_on_exit=False,  # Gateway.stop shuts it down; no atexit hook per gateway
        )
        self._provider.add_span_processor(processor)
        self.tracer = self._provider.get_tracer(INSTRUMENTATION_NAME)
        self.propagator = TraceContextTextMapPropagator()
        self.attach = otel_context.attach
        self.detach = otel_context.detach
        self.set_span_in_context = otel_trace.set_span_in_context
        self.current_span = otel_trace.get_current_span
        self.kind = otel_trace.SpanKind
        self.status = otel_trace.Status
        self.error = otel_trace.StatusCode.ERROR

    def begin(
        self, method: str, path: str, headers: Mapping[str, str], request_id: str
    ) -> RequestTrace:
        return _LiveTrace(self, method, path, headers, request_id)

    async def shutdown(self) -> None:
        # The batch processor's last export is a blocking HTTP call: keep it off the loop.
        await asyncio.to_thread(self._provider.shutdown)


class _LiveTrace(RequestTrace):
    """A request traced by OpenTelemetry: the root (server) span, attached as current."""

    __slots__ = ("_otel", "_root", "_token")

    def __init__(
        self,
        otel: _OtelTracing,
        method: str,
        path: str,
        headers: Mapping[str, str],
        request_id: str,
    ) -> None:
        self._otel = otel
        parent = otel.propagator.extract(headers)
        self._root: Span = otel.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=otel.kind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "mixroute.request_id": request_id,
            },
        )
        self._token = otel.attach(otel.set_span_in_context(self._root, parent))

    def span(self, name: str, *, client: bool = False) -> AbstractContextManager[SpanHandle]:
        kind = self._otel.kind.CLIENT if client else self._otel.kind.INTERNAL
        return self._otel.tracer.start_as_current_span(name, kind=kind)

    @property
    def trace_id(self) -> str | None:
        span_context = self._root.get_span_context()
        return format(span_context.trace_id, "032x") if span_context.trace_flags.sampled else None

    def first_byte(self) -> None:
        # From the current (upstream attempt) span's start until now: time to first byte.
        started = getattr(self._otel.current_span(), "start_time", None)
        self._otel.tracer.start_span("mixroute.first_byte", start_time=started).end()

    def inject(self, headers: MutableMapping[str, str]) -> None:
        for name in [n for n in headers if n.lower() in _TRACE_HEADERS]:
            del headers[name]
        self._otel.propagator.inject(headers)

    def finish(
        self,
        status: int,
        ctx: RequestContext | None,
        headers: Mapping[str, str] | None,
        error: str | None,
    ) -> None:
        root = self._root
        try:
            if root.is_recording():
                if status:  # 0: forwarded by Envoy, the answer's status is not ours to know
                    root.set_attribute("http.response.status_code", status)
                if ctx is not None:
                    _describe_request(root, ctx, headers)
                if error is not None:
                    root.set_attribute("error.type", error)
                if status >= 500:
                    root.set_status(self._otel.status(self._otel.error, error))
        finally:
            root.end()
            self._otel.detach(self._token)


def _describe_request(root: Span, ctx: RequestContext, headers: Mapping[str, str] | None) -> None:
    if headers is None:
        headers = ctx.response_headers
    root.set_attribute("mixroute.model.requested", ctx.requested_model)
    root.set_attribute("mixroute.model", ctx.model)
    root.set_attribute("mixroute.stream", ctx.stream)
    for header, attribute in _ROOT_FROM_HEADERS:
        value = headers.get(header)
        if value is not None:
            root.set_attribute(attribute, value)
    if ctx.error_code is not None:
        root.set_attribute("error.type", ctx.error_code)


def describe_decision(span: SpanHandle, ctx: RequestContext) -> None:
    """The decision stage's result (model, and for auto requests route and category)."""
    if not span.is_recording():
        return
    span.set_attribute("mixroute.model", ctx.model)
    decision = ctx.decision
    if decision is not None:
        span.set_attribute("mixroute.route", decision.route)
        span.set_attribute("mixroute.category", decision.category)
        span.set_attribute("mixroute.confidence", decision.confidence)
        span.set_attribute("mixroute.reasoning", decision.reasoning)
    fallback = ctx.response_headers.get(h.FALLBACK)
    if fallback is not None:
        span.set_attribute("mixroute.fallback", fallback)


def describe_guards(span: SpanHandle, ctx: RequestContext, refused: bool) -> None:
    """What the guards did: blocked, and the PII/jailbreak verdicts (types, never values)."""
    if not span.is_recording():
        return
    span.set_attribute("mixroute.guard.blocked", refused)
    for header, attribute in ((h.PII, "mixroute.guard.pii"), (h.FLAGGED, "mixroute.guard.flagged")):
        value = ctx.response_headers.get(header)
        if value is not None:
            span.set_attribute(attribute, value)


def describe_cache(span: SpanHandle, ctx: RequestContext, hit: bool) -> None:
    """The cache's answer: hit, miss, or off (not cacheable, or no cache configured)."""
    if span.is_recording():
        span.set_attribute(
            "mixroute.cache", "hit" if hit else ctx.response_headers.get(h.CACHE, "off")
        )
