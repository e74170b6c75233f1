"""The OpenAI-compatible surface: parse, decide the model, hand to the forwarder."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from mixroute import headers as h
from mixroute.api.caching import plan_cache
from mixroute.api.guarding import apply_guards
from mixroute.api.keys import GATEWAY
from mixroute.api.parsing import model_from_multipart, parse_json_body, read_body
from mixroute.cache.policy import store_answer
from mixroute.context import Decision, RequestContext
from mixroute.errors import GatewayError, bad_request, model_not_found
from mixroute.gateway import Gateway
from mixroute.guards.output import scan_answer
from mixroute.observability.metrics import Metrics
from mixroute.observability.recorder import CLIENT_CLOSED
from mixroute.observability.tracing import (
    RequestTrace,
    describe_cache,
    describe_decision,
    describe_guards,
)
from mixroute.runtime import Runtime

# Paths proxied to an endpoint of the named model without further interpretation.
PASSTHROUGH_PATHS = (
    "/v1/responses",
    "/v1/messages",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v1/score",
    "/score",
    "/tokenize",
    "/detokenize",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/audio/speech",
)


# Non-inference paths whose text can be classified for MoM/auto.
ROUTED_PATHS = ("/v1/responses", "/v1/messages")

_REQUEST_ID_KEY = web.RequestKey("mixroute.request_id", str)


def request_id_for(request: web.Request) -> str:
    """The client's x-request-id when it is sane, else a fresh one; the same for the whole
    request (the error middleware asks again)."""
    known = request.get(_REQUEST_ID_KEY)
    if isinstance(known, str):
        return known
    given = request.headers.get(h.REQUEST_ID, "")
    sane = 0 < len(given) <= 128 and given.isprintable()
    chosen = given if sane else os.urandom(16).hex()
    request[_REQUEST_ID_KEY] = chosen
    return chosen


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "embeddings")


async def passthrough(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "other")


async def _inference(request: web.Request, kind: str) -> web.StreamResponse:
    """Serve one inference request and record what happened to it, whatever the outcome."""
    started = time.monotonic()
    gateway = request.app[GATEWAY]
    request_id = request_id_for(request)
    holder: list[RequestContext] = []
    status, error, headers = CLIENT_CLOSED, None, None
    trace = gateway.tracing.begin(request.method, request.path, request.headers, request_id)
    try:
        response = await _serve(request, kind, gateway, request_id, started, holder, trace)
        status, headers = response.status, response.headers
        return response
    except GatewayError as exc:
        status, error = exc.status, exc.code
        raise
    except Exception:
        status, error = 500, "internal_error"
        raise
    finally:
        gateway.recorder.finish(
            request_id=request_id,
            path=request.path,
            started=started,
            ctx=holder[0] if holder else None,
            status=status,
            headers=headers,
            error=error,
        )
        trace.finish(status, holder[0] if holder else None, headers, error)


async def _serve(
    request: web.Request,
    kind: str,
    gateway: Gateway,
    request_id: str,
    started: float,
    holder: list[RequestContext],
    trace: RequestTrace,
) -> web.StreamResponse:
    runtime = gateway.runtime
    access = gateway.access
    # Before the body is read: an unknown caller is refused for the price of a header lookup.
    principal = access.authenticate(request.headers, request.remote) if access.enabled else None
    if principal is not None:
        access.admit_request(principal)
    with trace.span("mixroute.parse"):
        raw = await read_body(request, runtime.config.server.max_body_bytes)
        body = _parse(raw, kind, request.content_type)
    requested = body["model"]
    ctx = RequestContext(
        request_id=request_id,
        path=request.path,
        requested_model=requested,
        model=requested,
        body=body,
        raw_body=raw,
        stream=body.get("stream") is True,
        # With access on the key decides the tenant (the cache scope), never a header.
        tenant=principal.tenant if principal is not None else request.headers.get(h.TENANT),
        debug=request.headers.get(h.DEBUG) == "1",
        started=started,
        trace=trace,
    )
    holder.append(ctx)
    if principal is not None:
        access.admit_tokens(principal, ctx)
    ctx.response_headers[h.REQUEST_ID] = request_id
    if ctx.debug:
        ctx.response_headers[h.WORKER] = str(os.getpid())
    with trace.span("mixroute.decision") as span:
        await choose_model(ctx, runtime, kind, request.content_type, gateway.metrics)
        describe_decision(span, ctx)
    if principal is not None:
        access.check_model(principal, ctx)
    ctx.session_key = _session_key(request, body, runtime)
    with trace.span("mixroute.guards") as span:
        refusal = await apply_guards(request, ctx, runtime, gateway)
        describe_guards(span, ctx, refusal is not None)
    if refusal is not None:
        return refusal
    if principal is not None:  # a guard may have rerouted the request to another model
        access.check_model(principal, ctx)
    with trace.span("mixroute.cache") as span:
        plan, cached = await plan_cache(request, ctx, runtime, gateway)
        describe_cache(span, ctx, cached is not None)
    if cached is not None:
        return cached
    async with access.admission(ctx.model, principal):  # the model's in-flight limit
        with trace.span("mixroute.forward"):
            response = await gateway.forwarder.forward(request, ctx, runtime)
    await store_answer(plan)
    await _scan_output(ctx, gateway, response)
    return response


async def _scan_output(ctx: RequestContext, gateway: Gateway, response: web.StreamResponse) -> None:
    """Optional PII scan of a non-streamed answer (docs/guards.md); streams pass unscanned."""
    guards = gateway.guards
    if guards is None or guards.pii is None or not isinstance(response, web.Response):
        return
    route = ctx.route
    override = route.guards.pii if route is not None and route.guards else None
    mode = (override.output if override and override.output else None) or guards.settings.pii.output
    if mode == "off" or response.status != 200 or not isinstance(response.body, bytes):
        return
    body, produced = await scan_answer(guards, response.body, ctx.pii_values, mode)
    if produced:
        response.headers[h.PII_OUTPUT] = (
            f"{'masked' if mode == 'mask' else 'flagged'}: " + ",".join(produced)
        )
        response.body = body


def _parse(raw: bytes, kind: str, content_type: str) -> dict[str, Any]:
    if kind == "other" and content_type.startswith("multipart/"):
        model = model_from_multipart(raw)
        if not model:
            raise bad_request("The form has no `model` field.", param="model")
        return {"model": model}
    return parse_json_body(raw, kind)


async def choose_model(
    ctx: RequestContext, runtime: Runtime, kind: str, content_type: str, metrics: Metrics
) -> None:
    if runtime.is_auto(ctx.requested_model):
        if kind == "embeddings":
            raise bad_request(
                f"`{ctx.requested_model}` chooses a chat model per request and cannot serve "
                "embeddings; name an embedding model explicitly.",
                param="model",
                code="auto_model_not_supported",
            )
        if content_type.startswith("multipart/"):
            raise bad_request(
                f"`{ctx.requested_model}` is not supported for form uploads; name a model.",
                param="model",
                code="auto_model_not_supported",
            )
        if runtime.router is not None and (kind != "other" or ctx.path in ROUTED_PATHS):
            await _route_semantically(ctx, runtime, kind, metrics)
            return
        decision = runtime.decide_auto()
        if decision is None:
            raise bad_request(
                f"`{ctx.requested_model}` needs routing.default_model or routes in the config.",
                param="model",
                code="no_route",
            )
        _apply_decision(ctx, decision)
        return
    model = runtime.resolve_model(ctx.requested_model)
    if model is None:
        raise model_not_found(ctx.requested_model)
    ctx.model = model
    ctx.response_headers[h.MODEL] = model


async def _route_semantically(
    ctx: RequestContext, runtime: Runtime, kind: str, metrics: Metrics
) -> None:
    router = runtime.router
    assert router is not None
    outcome = await router.decide(
        kind, ctx.path, ctx.body, runtime.has_available_endpoint, ctx.trace
    )
    if outcome.model is None:
        raise bad_request(
            f"No route matched and routing.default_model is not set for `{ctx.requested_model}`.",
            param="model",
            code="no_route",
        )
    await router.apply(outcome, ctx.path, ctx.body)
    ctx.route = outcome.route
    ctx.classified_text = outcome.text
    ctx.vector = outcome.vector
    metrics.decision_duration.observe(outcome.elapsed_ms / 1000)
    metrics.route_decisions.labels(outcome.route_name, outcome.model).inc()
    for model, reason in outcome.skipped:
        metrics.model_fallbacks.labels(model, reason).inc()
    signals = outcome.signals
    decision = Decision(
        model=outcome.model,
        route=outcome.route_name,
        category=signals.category,
        confidence=signals.confidence,
        reasoning=outcome.reasoning,
    )
    _apply_decision(ctx, decision)
    headers = ctx.response_headers
    if outcome.skipped:
        headers[h.FALLBACK] = ",".join(f"{m}={why}" for m, why in outcome.skipped)
    if outcome.tools is not None:
        headers[h.TOOLS] = outcome.tools.header()
    if ctx.debug:
        headers[h.DEBUG_CANDIDATES] = ",".join(f"{m}={s:.3f}" for m, s in outcome.candidates)
        headers[h.DEBUG_ROUTE_SCORE] = f"{outcome.route_strength:.3f}"
        headers[h.DEBUG_MATCHED] = ",".join(outcome.matched_routes)
        headers[h.DEBUG_DECISION_MS] = f"{outcome.elapsed_ms:.2f}"


def _apply_decision(ctx: RequestContext, decision: Decision) -> None:
    ctx.decision = decision
    ctx.model = decision.model
    ctx.body_changed = True
    headers = ctx.response_headers
    headers[h.MODEL] = decision.model
    headers[h.CATEGORY] = decision.category
    headers[h.ROUTE] = decision.route
    headers[h.CONFIDENCE] = f"{decision.confidence:.3f}"
    headers[h.REASONING] = "on" if decision.reasoning else "off"


def _session_key(request: web.Request, body: dict[str, Any], runtime: Runtime) -> str | None:
    settings = runtime.config.balancer.session
    if settings.header:
        value = request.headers.get(settings.header)
        if value:
            return value
    if settings.body_field:
        value = body.get(settings.body_field)
        if isinstance(value, str | int) and value != "":
            return str(value)
    return None


async def list_models(request: web.Request) -> web.Response:
    body = model_list(request.app[GATEWAY], request.headers, request.remote)
    return web.Response(body=body, content_type="application/json")


def model_list(gateway: Gateway, headers: Mapping[str, str], remote: str | None) -> bytes:
    """The body of ``GET /v1/models``: every model plus ``MoM``/``auto``; with access on,
    the models the caller's key may use (401 without a valid key). Both layouts answer it."""
    runtime = gateway.runtime
    created = int(time.time())
    names = [*runtime.model_names(), *runtime.config.routing.auto_models]
    if gateway.access.enabled:
        principal = gateway.access.authenticate(headers, remote)
        names = [n for n in names if runtime.is_auto(n) or principal.models(n)]
    data = [{"id": n, "object": "model", "created": created, "owned_by": "mixroute"} for n in names]
    return orjson.dumps({"object": "list", "data": data})
