"""Forward one request to an endpoint of its model, with failover, and relay the answer.

Failover rule: an attempt may be retried on another endpoint only while the client has
received nothing: connect errors, a timeout before the first byte, a 5xx status, or a
non-streamed body that broke off. Once the first byte of a stream is written the request is
committed; if the upstream then dies the client gets an SSE error event and the end marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from mixroute import headers as h
from mixroute.balancer.endpoint import Endpoint
from mixroute.config.schema import PricingConfig
from mixroute.context import RequestContext
from mixroute.errors import GatewayError, no_healthy_endpoint, sse_error_event, upstream_error
from mixroute.observability.metrics import Metrics
from mixroute.observability.tracing import SpanHandle
from mixroute.proxy.disagg import run_prefill, split_roles
from mixroute.proxy.rewrite import SSEModelRewriter, rewrite_json_model
from mixroute.proxy.usage import (
    StreamUsageWatcher,
    account_answer,
    account_stream,
    usage_from_json,
)
from mixroute.runtime import Runtime

log = logging.getLogger(__name__)

_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
_UPSTREAM_BROKE = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass(slots=True)
class FailedAttempt:
    """An attempt that can still be retried; the last one becomes the client's answer."""

    error: GatewayError | None = None
    status: int = 0
    body: bytes = b""
    content_type: str = "application/json"

    def response(self, extra_headers: dict[str, str]) -> web.Response:
        if self.error is not None:
            return self.error.response(extra_headers)
        return web.Response(
            status=self.status,
            body=self.body,
            content_type=self.content_type,
            headers=extra_headers,
        )


class Forwarder:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._session = session
        self._metrics = metrics
        # The tasks of attempts in flight, so that shutdown can cut them with an answer.
        self._active: set[asyncio.Task[object]] = set()
        self._cutting = False

    def cut_all(self) -> int:
        """Shutdown's drain time is up: cancel every attempt in flight; each one ends with an
        answer the client can read (a 503 before the first byte, an SSE error event after
        it) instead of a dropped connection. Returns how many were cut."""
        self._cutting = True
        for task in self._active:
            task.cancel()
        return len(self._active)

    def _cut_off(self) -> bool:
        """Whether the current task's cancellation is shutdown's cut; if so it is undone so
        the handler can still write its last answer."""
        task = asyncio.current_task()
        if not self._cutting or task is None:
            return False
        task.uncancel()
        return True

    async def forward(
        self, request: web.Request, ctx: RequestContext, runtime: Runtime
    ) -> web.StreamResponse:
        endpoints = runtime.registry.for_model(ctx.model)
        roles = split_roles(endpoints)
        if roles is not None:
            prefill, endpoints = roles
            if not any(e.is_available() for e in endpoints):
                raise GatewayError(
                    503,
                    f"Disaggregated model `{ctx.model}` has no available decode endpoint.",
                    error_type="service_unavailable",
                    code="no_decode_endpoint",
                )
            chosen, params = await run_prefill(
                self._session,
                request.raw_path,
                ctx,
                prefill,
                runtime,
                _upstream_headers(request, ctx, prefill[0]),
            )
            ctx.response_headers[h.PREFILL_ENDPOINT] = chosen.name
            ctx.body["kv_transfer_params"] = params
            ctx.body_changed = True
        if runtime.kv is not None:
            await runtime.kv.annotate(ctx)
        policy = runtime.policy_for(ctx.model)
        retry = runtime.config.balancer.retry
        tried: set[str] = set()
        failure: FailedAttempt | None = None
        for attempt in range(retry.max_attempts):
            now = time.monotonic()
            candidates = [e for e in endpoints if e.name not in tried and e.is_available(now)]
            if not candidates:
                break
            with ctx.trace.span("mixroute.balancer") as span:
                endpoint = policy.pick(candidates, ctx)
                if span.is_recording():
                    span.set_attribute("mixroute.policy", policy.name)
                    span.set_attribute("mixroute.endpoint", endpoint.name)
                    span.set_attribute("mixroute.candidates", len(candidates))
            tried.add(endpoint.name)
            self._metrics.balancer_picks.labels(policy.name, endpoint.name).inc()
            if ctx.balancer_scores is not None:
                ctx.response_headers[h.DEBUG_BALANCER_SCORES] = ctx.balancer_scores
            if attempt:
                self._metrics.retries.labels(ctx.model).inc()
                await asyncio.sleep(retry.backoff_s * 2 ** (attempt - 1))
            with ctx.trace.span("mixroute.upstream", client=True) as span:
                result = await self._attempt(request, ctx, endpoint, runtime, attempt + 1)
                if span.is_recording():
                    _describe_attempt(span, endpoint, attempt + 1, result)
            if not isinstance(result, FailedAttempt):
                return result
            failure = result
        if failure is None:
            raise no_healthy_endpoint(ctx.model)
        ctx.response_headers[h.ATTEMPTS] = str(len(tried))
        status = failure.error.status if failure.error is not None else failure.status
        ctx.error_code = failure.error.code if failure.error is not None else None
        self._metrics.requests.labels(ctx.model, "", _status_class(status)).inc()
        return failure.response(ctx.response_headers)

    async def _attempt(
        self,
        request: web.Request,
        ctx: RequestContext,
        endpoint: Endpoint,
        runtime: Runtime,
        attempt: int,
    ) -> web.StreamResponse | FailedAttempt:
        timeouts = runtime.config.timeouts
        started = time.monotonic()
        endpoint.begin(started)
        in_flight = self._metrics.in_flight.labels(endpoint.name)
        in_flight.inc()
        upstream: aiohttp.ClientResponse | None = None
        task = request.task  # the handler's task (asyncio.current_task() costs a getpid here)
        self._active.add(task)
        try:
            try:
                async with asyncio.timeout(timeouts.first_byte_s):
                    upstream = await self._session.request(
                        request.method,
                        endpoint.url + request.raw_path,
                        data=_body_for(ctx, endpoint),
                        headers=_upstream_headers(request, ctx, endpoint),
                        timeout=aiohttp.ClientTimeout(sock_connect=timeouts.connect_s),
                        allow_redirects=False,
                    )
            except TimeoutError:
                return self._failed(
                    endpoint,
                    "timeout",
                    GatewayError(
                        504,
                        f"Upstream {endpoint.name} sent nothing within {timeouts.first_byte_s:g}s.",
                        error_type="upstream_error",
                        code="upstream_timeout",
                    ),
                )
            except (aiohttp.ClientError, OSError) as exc:
                return self._failed(
                    endpoint,
                    "connect",
                    upstream_error(
                        f"Could not reach upstream {endpoint.name}: {type(exc).__name__}."
                    ),
                )
            self._metrics.upstream_first_byte.labels(endpoint.name).observe(
                time.monotonic() - started
            )
            ctx.trace.first_byte()
            ctx.response_headers[h.ENDPOINT] = endpoint.name
            if attempt > 1:
                ctx.response_headers[h.ATTEMPTS] = str(attempt)
            if upstream.status >= 500:
                body = await _read_quietly(upstream, timeouts.idle_s)
                failed = self._failed(endpoint, "status_5xx", None)
                failed.status, failed.body = upstream.status, body
                failed.content_type = upstream.content_type or "application/json"
                return failed
            if upstream.content_type == "text/event-stream":
                return await self._relay_stream(
                    request, ctx, endpoint, upstream, timeouts.idle_s, _pricing(runtime, ctx.model)
                )
            try:
                async with asyncio.timeout(timeouts.idle_s):
                    body = await upstream.read()
            except _UPSTREAM_BROKE:
                return self._failed(
                    endpoint,
                    "body_broken",
                    upstream_error(f"Upstream {endpoint.name} broke off its answer."),
                )
            endpoint.record_success()
            if endpoint.config.served_model and upstream.content_type == "application/json":
                body = rewrite_json_model(body, endpoint.model)
            if ctx.tap is not None:
                body = ctx.tap.on_body(upstream.status, body)
            if upstream.status == 200 and upstream.content_type == "application/json":
                account_answer(
                    self._metrics,
                    ctx.model,
                    _route(ctx),
                    _pricing(runtime, ctx.model),
                    body,
                    ctx.started,
                    time.monotonic(),
                )
            if ctx.on_usage is not None and (usage := usage_from_json(body)) is not None:
                ctx.on_usage(usage)
            self._finished(ctx, endpoint, upstream.status)
            return web.Response(
                status=upstream.status,
                body=body,
                headers=_client_headers(upstream, ctx.response_headers),
            )
        except asyncio.CancelledError:
            if not self._cut_off():
                raise
            ctx.error_code = "gateway_shutting_down"
            return GatewayError(
                503,
                "The gateway is shutting down; retry the request.",
                error_type="service_unavailable",
                code="gateway_shutting_down",
            ).response(ctx.response_headers)
        finally:
            self._active.discard(task)
            if upstream is not None:
                if upstream.content.is_eof():
                    upstream.release()
                else:
                    upstream.close()
            endpoint.end()
            in_flight.dec()

    def _finished(self, ctx: RequestContext, endpoint: Endpoint, status: int) -> None:
        self._metrics.requests.labels(ctx.model, endpoint.name, _status_class(status)).inc()
        self._metrics.request_duration.labels(ctx.model).observe(time.monotonic() - ctx.started)

    def _failed(self, endpoint: Endpoint, kind: str, error: GatewayError | None) -> FailedAttempt:
        endpoint.record_failure(kind)
        self._metrics.upstream_errors.labels(endpoint.name, kind).inc()
        return FailedAttempt(error=error)

    async def _relay_stream(
        self,
        request: web.Request,
        ctx: RequestContext,
        endpoint: Endpoint,
        upstream: aiohttp.ClientResponse,
        idle_s: float,
        pricing: PricingConfig | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status, headers=_client_headers(upstream, ctx.response_headers)
        )
        await response.prepare(request)
        served = endpoint.config.served_model
        rewriter = SSEModelRewriter(served, endpoint.model) if served else None
        watcher = StreamUsageWatcher()
        content = upstream.content
        try:
            while True:
                try:
                    async with asyncio.timeout(idle_s):
                        chunk = await content.readany()
                except _UPSTREAM_BROKE as exc:
                    endpoint.record_failure("stream_broken")
                    self._metrics.upstream_errors.labels(endpoint.name, "stream_broken").inc()
                    log.warning("stream from %s broke: %s", endpoint.name, type(exc).__name__)
                    ctx.error_code = "upstream_stream_broken"
                    await response.write(
                        sse_error_event(
                            f"The upstream {endpoint.name} stopped mid-stream.",
                            "upstream_stream_broken",
                        )
                    )
                    break
                if not chunk:
                    if rewriter is not None and (rest := rewriter.flush()):
                        await response.write(rest)
                    if ctx.tap is not None:
                        if rest := ctx.tap.flush():
                            await response.write(rest)
                        ctx.tap.on_stream_end(complete=True)
                    endpoint.record_success()
                    break
                watcher.feed(chunk, time.monotonic())
                if rewriter is not None:
                    chunk = rewriter.feed(chunk)
                if ctx.tap is not None:
                    chunk = ctx.tap.on_chunk(chunk)
                if chunk:
                    await response.write(chunk)
            await response.write_eof()
        except _CLIENT_GONE:
            self._metrics.client_disconnects.labels(ctx.model).inc()
            ctx.error_code = "client_closed"
        except asyncio.CancelledError:
            if not self._cut_off():
                raise
            await _end_cut_stream(response)
            ctx.error_code = "gateway_shutting_down"
        account_stream(self._metrics, ctx.model, _route(ctx), pricing, watcher, ctx.started)
        if ctx.on_usage is not None:  # no usage chunk: one token per streamed text event
            ctx.on_usage(watcher.usage or {"completion_tokens": watcher.text_events})
        self._finished(ctx, endpoint, upstream.status)
        return response


def _describe_attempt(
    span: SpanHandle, endpoint: Endpoint, attempt: int, result: web.StreamResponse | FailedAttempt
) -> None:
    span.set_attribute("mixroute.endpoint", endpoint.name)
    span.set_attribute("mixroute.attempt", attempt)
    if isinstance(result, FailedAttempt):
        if result.error is not None:
            span.set_attribute("http.response.status_code", result.error.status)
            span.set_attribute("error.type", result.error.code or result.error.error_type)
        else:
            span.set_attribute("http.response.status_code", result.status)
    else:
        span.set_attribute("http.response.status_code", result.status)


async def _end_cut_stream(response: web.StreamResponse) -> None:
    """Tell a stream's client that shutdown cut it, then end the stream properly."""
    with contextlib.suppress(*_CLIENT_GONE, TimeoutError):
        async with asyncio.timeout(1.0):  # a client that reads nothing must not hold exit
            await response.write(
                sse_error_event(
                    "The gateway is shutting down; this stream was cut.", "gateway_shutting_down"
                )
            )
            await response.write_eof()


def _pricing(runtime: Runtime, model: str) -> PricingConfig | None:
    settings = runtime.config.models.get(model)
    return settings.pricing if settings is not None else None


def _route(ctx: RequestContext) -> str:
    return ctx.decision.route if ctx.decision is not None else ""


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


def _body_for(ctx: RequestContext, endpoint: Endpoint) -> bytes:
    upstream_model = endpoint.config.upstream_model
    if not ctx.body_changed and upstream_model == ctx.requested_model:
        return ctx.raw_body
    ctx.body["model"] = upstream_model
    return orjson.dumps(ctx.body)


def _upstream_headers(
    request: web.Request, ctx: RequestContext, endpoint: Endpoint
) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in h.HOP_BY_HOP or lower.startswith("x-mixroute-") or lower == "accept-encoding":
            continue
        out[name] = value
    if ctx.client_key_headers:  # gateway access control is on: the client's key stays here
        for name in [n for n in out if n.lower() in ctx.client_key_headers]:
            del out[name]
    auth = endpoint.config.auth
    if auth.mode == "replace":
        _drop_authorization(out)
        out["Authorization"] = f"Bearer {auth.api_key}"
    elif auth.mode == "drop":
        _drop_authorization(out)
    out[h.REQUEST_ID] = ctx.request_id
    ctx.trace.inject(out)  # W3C traceparent when traced; the client's passes through if not
    if ctx.body_changed or endpoint.config.upstream_model != ctx.requested_model:
        out["Content-Type"] = "application/json"
    return out


def _drop_authorization(headers: dict[str, str]) -> None:
    for name in [n for n in headers if n.lower() == "authorization"]:
        del headers[name]


def _client_headers(upstream: aiohttp.ClientResponse, extra: dict[str, str]) -> dict[str, str]:
    out = {
        name: value
        for name, value in upstream.headers.items()
        if name.lower() not in h.HOP_BY_HOP and not name.lower().startswith("x-mixroute-")
    }
    out.update(extra)
    return out


async def _read_quietly(upstream: aiohttp.ClientResponse, timeout_s: float) -> bytes:
    with contextlib.suppress(*_UPSTREAM_BROKE):
        async with asyncio.timeout(timeout_s):
            return await upstream.read()
    return b""
