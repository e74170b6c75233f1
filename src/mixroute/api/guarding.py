"""Guards on the request path: jailbreak first (a block ends the request), then PII.

PII actions: ``flag`` (header only), ``block`` (a refusal), ``redact`` (placeholders out,
values restored in the answer), ``reroute`` (to a model allowed to see that PII, e.g. a local
one). A request in which PII was found is never cached. PII values never reach logs,
headers or metric labels: only entity type names do.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mixroute import headers as h
from mixroute.cache.replay import as_json, as_sse
from mixroute.config.schema import RouteConfig
from mixroute.context import RequestContext
from mixroute.errors import GatewayError
from mixroute.gateway import Gateway
from mixroute.guards.redact import Redactor
from mixroute.guards.restore import RestoreTap
from mixroute.runtime import Runtime
from mixroute.semantic.text import content_text


async def apply_guards(
    request: web.Request, ctx: RequestContext, runtime: Runtime, gateway: Gateway
) -> web.StreamResponse | None:
    guards = gateway.guards
    messages = ctx.body.get("messages")
    if guards is None or not isinstance(messages, list):
        return None
    route: RouteConfig | None = ctx.route
    route_guards = route.guards if route is not None else None
    metrics = gateway.metrics
    if guards.jailbreak is not None:
        policy = route_guards.jailbreak if route_guards and route_guards.jailbreak else None
        action = (
            policy.action if policy and policy.action else None
        ) or guards.settings.jailbreak.action
        if action != "off":
            blocked = await _jailbreak(request, ctx, guards, policy, action, messages, metrics)
            if blocked is not None:
                return blocked
    if guards.pii is not None:
        return await _pii(request, ctx, runtime, gateway, route, messages)
    return None


async def _jailbreak(
    request: web.Request,
    ctx: RequestContext,
    guards: Any,
    policy: Any,
    action: str,
    messages: list[Any],
    metrics: Any,
) -> web.StreamResponse | None:
    settings = guards.settings.jailbreak
    texts = [
        content_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and m.get("role") in ("user", "tool")
    ][-settings.turns :]
    vectors = {ctx.classified_text: ctx.vector} if ctx.vector is not None else {}
    threshold = (
        policy.threshold if policy and policy.threshold is not None else guards.jailbreak_threshold
    )
    try:
        score = await guards.jailbreak_score(texts, vectors)
    except Exception:
        metrics.guard_decisions.labels("jailbreak", "error").inc()
        if settings.on_error == "open":
            return None
        score = 1.0
    if ctx.debug:
        ctx.response_headers[h.DEBUG_JAILBREAK_SCORE] = f"{score:.3f}"
    if score < threshold:
        metrics.guard_decisions.labels("jailbreak", "pass").inc()
        return None
    if action == "flag":
        metrics.guard_decisions.labels("jailbreak", "flag").inc()
        ctx.response_headers[h.FLAGGED] = "jailbreak"
        return None
    metrics.guard_decisions.labels("jailbreak", "block").inc()
    return await refuse(
        request,
        ctx,
        "jailbreak",
        settings.block_with,
        "This request was blocked: it looks like an attempt to override the "
        "assistant's instructions (jailbreak or prompt injection).",
    )


async def _pii(
    request: web.Request,
    ctx: RequestContext,
    runtime: Runtime,
    gateway: Gateway,
    route: RouteConfig | None,
    messages: list[Any],
) -> web.StreamResponse | None:
    guards = gateway.guards
    assert guards is not None
    metrics = gateway.metrics
    found = await guards.find_pii(messages)
    if not found:
        return None
    ctx.pii_found = True
    types = sorted({entity.type for _, entity in found})
    for kind in types:
        metrics.pii_entities.labels(kind).inc()
    violating = [t for t in types if not _allowed(runtime, ctx.model, t)]
    if not violating:
        metrics.guard_decisions.labels("pii", "allowed").inc()
        ctx.response_headers[h.PII] = "allowed: " + ",".join(types)
        return None
    settings = guards.settings.pii
    policy = route.guards.pii if route and route.guards and route.guards.pii else None
    action = (policy.action if policy and policy.action else None) or settings.action
    listed = ",".join(violating)
    if action == "off":
        return None
    if action == "flag":
        metrics.guard_decisions.labels("pii", "flag").inc()
        ctx.response_headers[h.PII] = "flagged: " + listed
        return None
    if action == "reroute":
        target = (
            (policy.reroute_to if policy else None)
            or settings.reroute_to
            or _allowed_model(runtime, violating)
        )
        if (
            target is not None
            and all(_allowed(runtime, target, t) for t in violating)
            and runtime.has_available_endpoint(target)
        ):
            metrics.guard_decisions.labels("pii", "reroute").inc()
            ctx.model = target
            ctx.body_changed = True
            ctx.response_headers[h.MODEL] = target
            ctx.response_headers[h.PII] = "rerouted: " + listed
            return None
        action = "block"  # nowhere allowed to see it: refuse rather than leak
    if action == "redact":
        metrics.guard_decisions.labels("pii", "redact").inc()
        redactor = Redactor()
        keep = [(i, e) for i, e in found if e.type in violating]
        ctx.body["messages"] = redactor.mask_messages(messages, keep)
        ctx.body_changed = True
        ctx.tap = RestoreTap(redactor)
        ctx.response_headers[h.PII] = "redacted: " + listed
        return None
    metrics.guard_decisions.labels("pii", "block").inc()
    ctx.response_headers[h.PII] = "blocked: " + listed
    return await refuse(
        request,
        ctx,
        "pii",
        settings.block_with,
        f"This request was blocked: it contains personal data ({listed}) that "
        f"model {ctx.model} may not receive.",
    )


def _allowed(runtime: Runtime, model: str, kind: str) -> bool:
    settings = runtime.config.models.get(model)
    allowed = settings.pii_allowed if settings else []
    return "*" in allowed or kind in allowed


def _allowed_model(runtime: Runtime, kinds: list[str]) -> str | None:
    for model in sorted(runtime.config.models):
        if all(_allowed(runtime, model, k) for k in kinds) and runtime.has_available_endpoint(
            model
        ):
            return model
    return None


async def refuse(
    request: web.Request, ctx: RequestContext, guard: str, block_with: str, message: str
) -> web.StreamResponse:
    """An OpenAI-shaped refusal: a content_filter completion (SSE when streaming) or a 400."""
    headers = dict(ctx.response_headers)
    headers[h.BLOCKED] = guard
    headers.pop(h.ENDPOINT, None)
    if block_with == "error":
        code = f"{guard}_blocked"
        return GatewayError(400, message, code=code).response(headers)
    if ctx.body.get("stream") is True:
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        options = ctx.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for event in as_sse(
            ctx.model, message, "content_filter", usage, include_usage, source="refusal"
        ):
            await response.write(event)
        await response.write_eof()
        return response
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return web.Response(
        body=as_json(ctx.model, message, "content_filter", usage, None, source="refusal"),
        content_type="application/json",
        headers=headers,
    )
