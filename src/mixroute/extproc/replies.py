"""Answers the processor gives itself, as plain (status, headers, body) triples.

The shapes are the gateway's: a refusal is a ``content_filter`` chat completion (SSE when the
client streams) or a 400 error, a cache hit is the stored answer replayed as JSON or SSE,
and a failure is the OpenAI-shaped error. Envoy sends them to the client as an immediate
response, so a whole SSE stream is one body here: the client still parses it event by event.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from mixroute import headers as h
from mixroute.cache.key import CacheRequest
from mixroute.cache.replay import as_json, as_sse
from mixroute.cache.store import CacheHit
from mixroute.context import RequestContext
from mixroute.errors import GatewayError
from mixroute.extproc.guard_policy import Refusal

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
    """What ``api/guarding.py::refuse`` sends, byte for byte apart from the id and time."""
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
    """What ``api/caching.py::_serve_hit`` sends for a cache hit."""
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
        error.status, {**(headers or {}), "content-type": JSON}, orjson.dumps(error.body())
    )
