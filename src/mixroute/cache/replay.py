"""Answers the gateway writes itself (cache hits, guard refusals): a chat.completion JSON,
or an SSE stream when the client streams, with a fresh id, the current time, usage and
finish reason."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import orjson

_PIECE = re.compile(r"\S+\s*|\s+")


def completion_id(source: str) -> str:
    """``chatcmpl-<source>-<random>``: a client can tell a replay or a refusal by its id."""
    return f"chatcmpl-{source}-" + os.urandom(12).hex()


def as_json(
    answer_model: str,
    content: str,
    finish: str,
    usage: dict[str, Any] | None,
    tool_calls: list[dict[str, Any]] | None,
    source: str = "cache",
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return orjson.dumps(
        {
            "id": completion_id(source),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer_model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": usage,
        }
    )


def as_sse(
    answer_model: str,
    content: str,
    finish: str,
    usage: dict[str, Any] | None,
    include_usage: bool,
    words_per_chunk: int = 4,
    source: str = "cache",
) -> list[bytes]:
    ident, created = completion_id(source), int(time.time())

    def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        body = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answer_model,
            "choices": choices,
            **(extra or {}),
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    events = [
        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    ]
    pieces = _PIECE.findall(content)
    for start in range(0, len(pieces), words_per_chunk):
        text = "".join(pieces[start : start + words_per_chunk])
        events.append(event([{"index": 0, "delta": {"content": text}, "finish_reason": None}]))
    events.append(event([{"index": 0, "delta": {}, "finish_reason": finish}]))
    if include_usage:
        events.append(event([], {"usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events
