"""What makes two requests the same request, for the cache.

The **scope** must match exactly: tenant, model (and route), a hash of the system prompt,
the conversation turns before the last user turn (the last ``turns`` of them), the tools,
and the sampling parameters that change the answer. Within a scope, the last user turn (or
the classification text, which adds earlier user turns to a short follow-up) is compared by
embedding similarity; ``exact`` is the fast path for identical text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from mixroute.config.schema import CacheConfig
from mixroute.semantic.text import content_text


@dataclass(frozen=True, slots=True)
class CacheRequest:
    scope: str
    text: str
    exact: str
    stream: bool
    include_usage: bool


def _digest(value: Any) -> str:
    return hashlib.blake2b(
        orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).hexdigest()


def is_sampled(body: dict[str, Any]) -> bool:
    temperature = body.get("temperature")
    return not (isinstance(temperature, int | float) and temperature == 0)


def cache_request(
    body: dict[str, Any],
    *,
    model: str,
    route: str,
    tenant: str | None,
    settings: CacheConfig,
    allow_sampled: bool,
    text: str,
) -> CacheRequest | None:
    """The key parts, or None when this request must not use the cache."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not text.strip():
        return None
    if body.get("n") not in (None, 1) or (is_sampled(body) and not allow_sampled):
        return None
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
        default=None,
    )
    if last_user is None or last_user != len(messages) - 1:
        return None  # the answer continues a tool call or an assistant prefix: not a question
    system = [
        content_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and m.get("role") in ("system", "developer")
    ]
    earlier = [
        {
            "role": m.get("role"),
            "content": content_text(m.get("content")),
            "tool_calls": m.get("tool_calls"),
        }
        for m in messages[:last_user]
        if isinstance(m, dict) and m.get("role") not in ("system", "developer")
    ][-settings.turns :]
    params = {name: body.get(name) for name in settings.sampling_params if name in body}
    scope = _digest(
        {
            "tenant": tenant or "",
            "model": model,
            "route": route,
            "system": system,
            "earlier": earlier,
            "tools": body.get("tools"),
            "tool_choice": body.get("tool_choice"),
            "params": params,
        }
    )
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return CacheRequest(
        scope=scope,
        text=text,
        exact=_digest([scope, text]),
        stream=body.get("stream") is True,
        include_usage=include_usage,
    )
