"""Read and check an OpenAI request body once, before anything routes on it.

Only what the gateway itself relies on is checked here (a JSON object, a model name, the
field each endpoint cannot do without, the types of ``stream`` and ``messages``); everything
else is the upstream's to judge, so new OpenAI fields pass through untouched.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from mixroute.errors import GatewayError, bad_request

_MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,256})\r\n')

REQUIRED_FIELD = {"chat": "messages", "completions": "prompt", "embeddings": "input"}

# orjson reads 1024 levels of nesting but writes only 254, and the gateway writes bodies
# back out (a routed request, the route dry run's answer, cache entries): a body it could
# read but not write would fail after routing as a 500. Real requests (JSON schemas in
# tools and response_format included) stay far below this.
MAX_NESTING = 128


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise GatewayError(
            413,
            f"Request body of {length} bytes is larger than the {max_bytes}-byte limit.",
            code="request_too_large",
        )
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise GatewayError(
            413,
            f"Request body is larger than the {max_bytes}-byte limit.",
            code="request_too_large",
        ) from exc


def parse_json_body(raw: bytes, kind: str) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(
            f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, not {type(body).__name__}.")
    # Fewer opening brackets than the limit cannot nest deeper than it: skips the walk for
    # nearly every real body at the cost of one C-speed count.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _deeper_than(body, MAX_NESTING):
        raise bad_request(
            f"The request body nests deeper than {MAX_NESTING} levels.", code="invalid_json"
        )
    check_body(body, kind)
    return body


def _deeper_than(value: dict[str, Any], limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_body(body: dict[str, Any], kind: str) -> None:
    """``kind``: chat, completions, embeddings, other; ``route`` is a chat body whose model is
    optional (the dry run decides it); ``api`` is any JSON object."""
    if kind == "api":
        return
    if kind == "route":
        kind = "chat"
        body.setdefault("model", "MoM")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` is required and must be a non-empty string.", param="model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("`stream` must be true or false.", param="stream")
    # Routes merge their reasoning switch into this object (semantic/mutate.py).
    template_kwargs = body.get("chat_template_kwargs")
    if template_kwargs is not None and not isinstance(template_kwargs, dict):
        raise bad_request("`chat_template_kwargs` must be an object.", param="chat_template_kwargs")
    field = REQUIRED_FIELD.get(kind)
    if field is not None and field not in body:
        raise bad_request(f"`{field}` is required.", param=field, code="missing_field")
    if kind == "chat":
        _check_messages(body["messages"])
    elif kind == "completions" and not isinstance(body["prompt"], str | list):
        raise bad_request("`prompt` must be a string or a list.", param="prompt")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty list.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"`messages[{index}]` must be an object.", param="messages")
        if not isinstance(message.get("role"), str):
            raise bad_request(
                f"`messages[{index}].role` is required and must be a string.", param="messages"
            )


def model_from_multipart(raw: bytes) -> str | None:
    """The ``model`` form field of a multipart body (audio endpoints), without a full parse."""
    match = _MULTIPART_MODEL.search(raw)
    return match.group(1).decode(errors="replace").strip() if match else None
