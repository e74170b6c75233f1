"""The semantic cache on the request path: look up before forwarding, store after."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mixroute import headers as h
from mixroute.cache.capture import AnswerCapture
from mixroute.cache.key import CacheRequest, cache_request
from mixroute.cache.replay import as_json, as_sse
from mixroute.cache.service import CacheService
from mixroute.cache.store import CacheHit
from mixroute.context import RequestContext
from mixroute.gateway import Gateway
from mixroute.runtime import Runtime
from mixroute.semantic.embedding import Vector
from mixroute.semantic.text import classification_text, extract_conversation


@dataclass(slots=True)
class CachePlan:
    service: CacheService
    request: CacheRequest
    vector: Vector
    capture: AnswerCapture


async def plan_cache(
    request: web.Request, ctx: RequestContext, runtime: Runtime, gateway: Gateway
) -> tuple[CachePlan | None, web.StreamResponse | None]:
    """Returns (plan to store after forwarding, or a response served from the cache)."""
    service = gateway.cache
    if service is None or ctx.path != "/v1/chat/completions" or ctx.pii_found:
        return None, None
    policy = service.policy(ctx.route)
    if not policy.enabled:
        return None, None
    text = ctx.classified_text
    vector = ctx.vector
    if text is None or vector is None:
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
            return None, None
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
        return None, None
    bypass = request.headers.get(h.CACHE_CONTROL, "").lower() == "no-cache"
    if bypass:
        service.count_bypass()
    else:
        hit = await service.lookup(key, vector, policy.threshold)
        if hit is not None:
            return None, await _serve_hit(request, ctx, key, hit)
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
    return CachePlan(service, key, vector, capture), None


async def store_answer(plan: CachePlan | None) -> None:
    if plan is not None and plan.capture.answer is not None:
        await plan.service.store(plan.request, plan.vector, plan.capture.answer)


async def _serve_hit(
    request: web.Request, ctx: RequestContext, key: CacheRequest, hit: CacheHit
) -> web.StreamResponse:
    headers = dict(ctx.response_headers)
    headers[h.CACHE] = "hit"
    headers.pop(h.ENDPOINT, None)
    if ctx.debug:
        headers[h.DEBUG_CACHE_SIMILARITY] = f"{hit.similarity:.4f}"
    answer = hit.answer
    if not key.stream:
        return web.Response(
            body=as_json(
                answer.model, answer.content, answer.finish_reason, answer.usage, answer.tool_calls
            ),
            content_type="application/json",
            headers=headers,
        )
    response = web.StreamResponse(
        headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for event in as_sse(
        answer.model, answer.content, answer.finish_reason, answer.usage, key.include_usage
    ):
        await response.write(event)
    await response.write_eof()
    return response
