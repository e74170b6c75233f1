"""The cache on the request path, without a transport: a plan to store the answer, or the
hit to replay. The HTTP gateway (``api/caching.py``) answers a hit with an aiohttp response,
the ext_proc processor with an Envoy immediate response; both decide here."""

from __future__ import annotations

from dataclasses import dataclass

from mixroute import headers as h
from mixroute.cache.capture import AnswerCapture
from mixroute.cache.key import CacheRequest, cache_request
from mixroute.cache.service import CacheService
from mixroute.cache.store import CacheHit
from mixroute.context import RequestContext
from mixroute.gateway import Gateway
from mixroute.runtime import Runtime
from mixroute.semantic.embedding import Vector
from mixroute.semantic.text import classification_text, extract_conversation

CACHED_PATH = "/v1/chat/completions"


@dataclass(slots=True)
class CachePlan:
    """A miss that may be stored: the capture collects the answer as it passes."""

    service: CacheService
    request: CacheRequest
    vector: Vector
    capture: AnswerCapture


async def store_answer(plan: CachePlan | None) -> None:
    """Store the captured answer if it was complete (the capture decides)."""
    if plan is not None and plan.capture.answer is not None:
        await plan.service.store(plan.request, plan.vector, plan.capture.answer)


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """At most one of the two: a plan (miss: capture and store) or a hit (replay it)."""

    plan: CachePlan | None = None
    key: CacheRequest | None = None
    hit: CacheHit | None = None


NO_CACHE = CacheLookup()


async def plan_cache_lookup(
    ctx: RequestContext, runtime: Runtime, gateway: Gateway, *, bypass: bool
) -> CacheLookup:
    """Look ``ctx`` up in the semantic cache; on a miss, arm the capture of the answer.

    ``bypass`` is ``x-mixroute-cache-control: no-cache``: skip the lookup, still store.
    """
    service = gateway.cache
    if service is None or ctx.path != CACHED_PATH or ctx.pii_found:
        return NO_CACHE
    policy = service.policy(ctx.route)
    if not policy.enabled:
        return NO_CACHE
    text = ctx.classified_text
    vector = ctx.vector
    if not text or vector is None:  # explicit-model requests: classify the text here
        assets = await gateway.semantic_assets()
        conversation = extract_conversation("chat", ctx.path, ctx.body)
        settings = runtime.config.semantic.conversation
        text = classification_text(
            conversation,
            settings.user_turns,
            settings.followup_max_tokens,
            assets.engine.model.count_tokens,
        )
        if not text.strip():
            return NO_CACHE
        vector = await assets.engine.embed(text)
    key = cache_request(
        ctx.body,
        model=ctx.model,
        route=ctx.decision.route if ctx.decision else "",
        tenant=ctx.tenant,
        settings=service.settings,
        allow_sampled=policy.allow_sampled,
        text=text,
    )
    if key is None:
        return NO_CACHE
    if bypass:
        service.count_bypass()
    else:
        hit = await service.lookup(key, vector, policy.threshold)
        if hit is not None:
            return CacheLookup(key=key, hit=hit)
    ctx.response_headers[h.CACHE] = "miss"
    capture = AnswerCapture(
        ctx.model,
        strip_usage_event=key.stream and not key.include_usage,
        store_tool_calls=service.settings.store_tool_calls,
    )
    if key.stream and not key.include_usage:  # ask for usage so a replay can report it
        options = ctx.body.get("stream_options")
        ctx.body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
        ctx.body_changed = True
    ctx.tap = capture
    return CacheLookup(plan=CachePlan(service, key, vector, capture), key=key)
