"""The guards' policy without a transport: what to do with a request, not how to answer.

``api/guarding.py`` decides and answers in one step (it writes an aiohttp response). The
ext_proc processor answers through Envoy instead, so it needs the decision alone: the same
rules in the same order (jailbreak first, then PII: flag, block, redact, reroute), the same
headers and metrics, and a ``Refusal`` to render when a guard blocks. ``api/guarding.py``
can delegate its ``_jailbreak``/``_pii`` to ``check_guards`` and keep only ``refuse``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mixroute import headers as h
from mixroute.config.schema import JailbreakGuardConfig, RouteConfig
from mixroute.context import RequestContext
from mixroute.gateway import Gateway
from mixroute.guards.entities import message_text
from mixroute.guards.redact import Redactor
from mixroute.guards.restore import RestoreTap
from mixroute.guards.service import GuardService
from mixroute.observability.metrics import Metrics
from mixroute.runtime import Runtime
from mixroute.semantic.text import content_text

JAILBREAK_MESSAGE = (
    "This request was blocked: it looks like an attempt to override the "
    "assistant's instructions (jailbreak or prompt injection)."
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A guard said block: which guard, how to answer (completion or error), what to say."""

    guard: str
    block_with: str
    message: str


async def check_guards(ctx: RequestContext, runtime: Runtime, gateway: Gateway) -> Refusal | None:
    """Run the enabled guards on ``ctx``; mutate it (headers, redaction, reroute) as they say."""
    guards = gateway.guards
    messages = ctx.body.get("messages")
    if guards is None or not isinstance(messages, list):
        return None
    route: RouteConfig | None = ctx.route
    route_guards = route.guards if route is not None else None
    if guards.jailbreak is not None:
        policy = route_guards.jailbreak if route_guards and route_guards.jailbreak else None
        action = (
            policy.action if policy and policy.action else None
        ) or guards.settings.jailbreak.action
        if action != "off":
            refusal = await _jailbreak(ctx, guards, policy, action, messages, gateway.metrics)
            if refusal is not None:
                return refusal
    if guards.pii is not None:
        return await _pii(ctx, runtime, guards, gateway.metrics, route, messages)
    return None


async def _jailbreak(
    ctx: RequestContext,
    guards: GuardService,
    policy: Any,
    action: str,
    messages: list[Any],
    metrics: Metrics,
) -> Refusal | None:
    settings: JailbreakGuardConfig = guards.settings.jailbreak
    texts = [
        content_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and m.get("role") in ("user", "tool")
    ][-settings.turns :]
    vectors: dict[str, Any] = {}
    if ctx.classified_text and ctx.vector is not None:
        vectors[ctx.classified_text] = ctx.vector  # the router's embedding: not made again
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
    return Refusal("jailbreak", settings.block_with, JAILBREAK_MESSAGE)


async def _pii(
    ctx: RequestContext,
    runtime: Runtime,
    guards: GuardService,
    metrics: Metrics,
    route: RouteConfig | None,
    messages: list[Any],
) -> Refusal | None:
    found = await guards.find_pii(messages)
    if not found:
        return None
    ctx.pii_found = True
    ctx.pii_values = {
        message_text(messages[index])[entity.start : entity.end] for index, entity in found
    }
    types = sorted({entity.type for _, entity in found})
    for kind in types:
        metrics.pii_entities.labels(kind).inc()
    violating = [t for t in types if not allowed(runtime, ctx.model, t)]
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
            or allowed_model(runtime, violating)
        )
        if (
            target is not None
            and all(allowed(runtime, target, t) for t in violating)
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
    return Refusal(
        "pii",
        settings.block_with,
        f"This request was blocked: it contains personal data ({listed}) that "
        f"model {ctx.model} may not receive.",
    )


def allowed(runtime: Runtime, model: str, kind: str) -> bool:
    settings = runtime.config.models.get(model)
    permitted = settings.pii_allowed if settings else []
    return "*" in permitted or kind in permitted


def allowed_model(runtime: Runtime, kinds: list[str]) -> str | None:
    """The first model (by name) allowed every PII type in ``kinds`` that is up right now."""
    for model in sorted(runtime.config.models):
        if all(allowed(runtime, model, k) for k in kinds) and runtime.has_available_endpoint(model):
            return model
    return None
