"""Answers mixroute gives itself (guard refusals, cache hits, errors), as plain
(status, headers, body) triples, the same for every transport.

A refusal is a ``content_filter`` chat completion (SSE when the client streams) or a 400
error, a cache hit is the stored answer replayed as JSON or SSE, and a failure is the
OpenAI-shaped error. The HTTP gateway sends a reply as one aiohttp response; Envoy sends it
as an immediate response. A whole SSE stream is one body: clients parse it event by event.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiohttp import web

from mixroute import headers as h
from mixroute.cache.key import CacheRequest
from mixroute.cache.replay import as_json, as_sse
from mixroute.cache.store import CacheHit
from mixroute.context import RequestContext
from mixroute.errors import GatewayError
from mixroute.guards.policy import Refusal

JSON = "application/json"
SSE = "text/event-stream"
_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _wants_usage(ctx: RequestContext) -> bool:
    options = ctx.body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def refusal_reply(ctx: RequestContext, refusal: Refusal) -> Reply:
    """A guard's refusal."""
    headers = dict(ctx.response_headers)
    headers[h.BLOCKED] = refusal.guard
    headers.pop(h.ENDPOINT, None)
    if refusal.block_with == "error":
        error = GatewayError(400, refusal.message, code=f"{refusal.guard}_blocked")
        return error_reply(error, headers)
    if ctx.body.get("stream") is True:
        events = as_sse(
            ctx.model,
            refusal.message,
            "content_filter",
            _NO_USAGE,
            _wants_usage(ctx),
            source="refusal",
        )
        return Reply(200, {**headers, "content-type": SSE}, b"".join(events))
    body = as_json(ctx.model, refusal.message, "content_filter", _NO_USAGE, None, source="refusal")
    return Reply(200, {**headers, "content-type": JSON}, body)


def hit_reply(ctx: RequestContext, key: CacheRequest, hit: CacheHit) -> Reply:
    """A cache hit, replayed as the client asked (JSON or SSE)."""
    headers = dict(ctx.response_headers)
    headers[h.CACHE] = "hit"
    headers.pop(h.ENDPOINT, None)
    if ctx.debug:
        headers[h.DEBUG_CACHE_SIMILARITY] = f"{hit.similarity:.4f}"
    answer = hit.answer
    if not key.stream:
        body = as_json(
            answer.model, answer.content, answer.finish_reason, answer.usage, answer.tool_calls
        )
        return Reply(200, {**headers, "content-type": JSON}, body)
    events = as_sse(
        answer.model, answer.content, answer.finish_reason, answer.usage, key.include_usage
    )
    headers.update({"content-type": SSE, "cache-control": "no-cache"})
    return Reply(200, headers, b"".join(events))


def error_reply(error: GatewayError, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        error.status,
        {**error.headers, **(headers or {}), "content-type": JSON},
        orjson.dumps(error.body()),
    )


def to_response(reply: Reply) -> web.Response:
    """The aiohttp response for a reply (the HTTP gateway's transport)."""
    return web.Response(status=reply.status, headers=reply.headers, body=reply.body)
