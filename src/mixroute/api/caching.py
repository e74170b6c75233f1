"""The semantic cache for the HTTP gateway: look up before forwarding, replay a hit."""

from __future__ import annotations

from aiohttp import web

from mixroute import headers as h
from mixroute.cache.policy import CachePlan, plan_cache_lookup
from mixroute.context import RequestContext
from mixroute.gateway import Gateway
from mixroute.replies import hit_reply, to_response
from mixroute.runtime import Runtime


async def plan_cache(
    request: web.Request, ctx: RequestContext, runtime: Runtime, gateway: Gateway
) -> tuple[CachePlan | None, web.StreamResponse | None]:
    """Returns (plan to store after forwarding, or a response served from the cache)."""
    bypass = request.headers.get(h.CACHE_CONTROL, "").lower() == "no-cache"
    lookup = await plan_cache_lookup(ctx, runtime, gateway, bypass=bypass)
    if lookup.hit is not None and lookup.key is not None:
        return None, to_response(hit_reply(ctx, lookup.key, lookup.hit))
    return lookup.plan, None
