"""Guards for the HTTP gateway: the policy decides (``guards/policy.py``), this answers."""

from __future__ import annotations

from aiohttp import web

from mixroute.context import RequestContext
from mixroute.gateway import Gateway
from mixroute.guards.policy import check_guards
from mixroute.replies import refusal_reply, to_response
from mixroute.runtime import Runtime


async def apply_guards(
    request: web.Request, ctx: RequestContext, runtime: Runtime, gateway: Gateway
) -> web.StreamResponse | None:
    """A refusal when a guard blocks; otherwise None (the guards may have changed ``ctx``:
    headers, a redacted body with a restoring tap, or a rerouted model)."""
    refusal = await check_guards(ctx, runtime, gateway)
    return None if refusal is None else to_response(refusal_reply(ctx, refusal))
