"""PII in the model's answer (non-streamed answers of the HTTP gateway).

Values the user supplied in the request (restored by redaction, or allowed through) are not
flagged again; only PII the model produced itself is: an address it recalled, a phone number
it made up. ``flag`` lists the types in ``x-mixroute-pii-output``; ``mask`` replaces them with
placeholders. Detection runs on the PII guard's own thread, never on the event loop.
"""

from __future__ import annotations

from typing import Any

import orjson

from mixroute.guards.entities import PIIEntity
from mixroute.guards.redact import Redactor
from mixroute.guards.service import GuardService


async def scan_answer(
    guards: GuardService, body: bytes, supplied: set[str], mode: str
) -> tuple[bytes, list[str]]:
    """(answer body, possibly masked; PII types the model produced)."""
    try:
        data: Any = orjson.loads(body)
        message = data["choices"][0]["message"]
        text = message["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return body, []
    if not isinstance(text, str) or not text:
        return body, []
    found = await guards.find_pii([{"role": "assistant", "content": text}])
    produced: list[PIIEntity] = [e for _, e in found if text[e.start : e.end] not in supplied]
    if not produced:
        return body, []
    if mode == "mask":
        message["content"] = Redactor().mask(text, produced)
        body = orjson.dumps(data)
    return body, sorted({e.type for e in produced})
