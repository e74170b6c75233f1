"""Request parsing and validation for the OpenAI-style (and a few other) endpoints.

Everything a handler needs from a request body is turned into a small dataclass here, or
rejected with a ``SimError`` that the server renders as an OpenAI-shaped error. Keeping
validation apart from the handlers keeps the handlers about timing and streaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from mixroute.sim.tokenizer import TemplateError, encode, render_messages

_MAX_TOKEN_ID = 2**31


class SimError(Exception):
    """An error answered to the client as ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, error_type: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.status,
            }
        }


def bad_request(message: str, param: str | None = None) -> SimError:
    return SimError(400, message, "invalid_request_error", param)


def model_not_found(name: str) -> SimError:
    return SimError(404, f"The model `{name}` does not exist.", "NotFoundError", "model")


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body or raise a 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def check_model(body: dict[str, Any], served_model: str) -> None:
    """A missing model means the served one (as in vLLM); another name is a 404."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad_request("'model' must be a string.", "model")
    if model != served_model:
        raise model_not_found(model)


def _optional_int(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"'{name}' must be an integer.", name)
        if value < 1:
            raise bad_request(f"'{name}' must be at least 1, got {value}.", name)
        return value
    return None


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean.", name)
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object.", "stream_options")
    return _flag(options, "include_usage")


def _token_ids(value: Any, param: str) -> list[int] | None:
    """``value`` as a list of token ids, or None when it is not a list of ints."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return None
    if not all(0 <= item < _MAX_TOKEN_ID for item in value):
        raise bad_request(f"token ids in '{param}' must be within [0, 2**31).", param)
    return list(value)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A text generation request, whatever endpoint it came from."""

    prompt_ids: list[int]
    max_tokens: int
    length_limited: bool  # max_tokens came from the client, so reaching it means "length"
    stream: bool
    include_usage: bool


def _generation(
    body: dict[str, Any],
    prompt_ids: list[int],
    limit_names: tuple[str, ...],
    default_max_tokens: int,
    max_model_len: int,
    allow_stream: bool = True,
) -> GenerationRequest:
    requested = _optional_int(body, *limit_names)
    stream = _flag(body, "stream")
    if stream and not allow_stream:
        raise bad_request("The simulator does not stream on this endpoint.", "stream")
    prompt_len = len(prompt_ids)
    if prompt_len >= max_model_len or (
        requested is not None and prompt_len + requested > max_model_len
    ):
        completion = requested if requested is not None else 0
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + completion} tokens ({prompt_len} in the messages, "
            f"{completion} in the completion). Please reduce the length of the messages "
            "or completion.",
            "messages",
        )
    max_tokens = requested
    if max_tokens is None:
        max_tokens = min(default_max_tokens, max_model_len - prompt_len)
    return GenerationRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        length_limited=requested is not None,
        stream=stream,
        include_usage=stream and _include_usage(body),
    )


def _render(messages: list[Any]) -> list[int]:
    try:
        return encode(render_messages(messages))
    except TemplateError as exc:
        raise bad_request(str(exc), "messages") from None


def parse_chat(
    body: dict[str, Any], default_max_tokens: int, max_model_len: int
) -> GenerationRequest:
    """``POST /v1/chat/completions``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages.", "messages")
    return _generation(
        body,
        _render(messages),
        ("max_completion_tokens", "max_tokens"),
        default_max_tokens,
        max_model_len,
    )


def parse_completion(
    body: dict[str, Any], default_max_tokens: int, max_model_len: int
) -> GenerationRequest:
    """``POST /v1/completions``; a list of prompts is joined with newlines (one choice)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompt_ids = encode(prompt)
    elif (ids := _token_ids(prompt, "prompt")) is not None:
        prompt_ids = ids
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt_ids = encode("\n".join(prompt))
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        prompt_ids = []
        for item in prompt:
            ids = _token_ids(item, "prompt")
            if ids is None:
                raise bad_request("'prompt' lists must hold token ids.", "prompt")
            prompt_ids.extend(ids)
    else:
        raise bad_request(
            "'prompt' must be a string, a list of strings or a list of token ids.", "prompt"
        )
    return _generation(body, prompt_ids, ("max_tokens",), default_max_tokens, max_model_len)


def parse_responses(
    body: dict[str, Any], default_max_tokens: int, max_model_len: int
) -> GenerationRequest:
    """``POST /v1/responses`` (non-streaming only): ``input`` is a string or message items."""
    raw_input = body.get("input")
    messages: list[Any] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    if isinstance(raw_input, str):
        messages.append({"role": "user", "content": raw_input})
    elif isinstance(raw_input, list) and raw_input and all(isinstance(i, dict) for i in raw_input):
        for item in raw_input:
            if isinstance(item.get("role"), str):
                messages.append(item)
            else:  # function_call_output and other role-less items: render their JSON
                role = item.get("type") if isinstance(item.get("type"), str) else "item"
                messages.append({"role": role, "content": orjson.dumps(item).decode()})
    else:
        raise bad_request("'input' must be a string or a non-empty list of items.", "input")
    return _generation(
        body,
        _render(messages),
        ("max_output_tokens",),
        default_max_tokens,
        max_model_len,
        allow_stream=False,
    )


def parse_messages(
    body: dict[str, Any], default_max_tokens: int, max_model_len: int
) -> GenerationRequest:
    """``POST /v1/messages`` (Anthropic shape, non-streaming only)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages.", "messages")
    system = body.get("system")
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    return _generation(
        body,
        _render(messages),
        ("max_tokens",),
        default_max_tokens,
        max_model_len,
        allow_stream=False,
    )


def parse_texts(value: Any, param: str) -> list[list[int]]:
    """Embedding-style input: a string, a list of strings, token ids or lists of ids."""
    if isinstance(value, str):
        return [encode(value)]
    if (ids := _token_ids(value, param)) is not None:
        return [ids]
    if isinstance(value, list) and value:
        result: list[list[int]] = []
        for item in value:
            if isinstance(item, str):
                result.append(encode(item))
            elif (ids := _token_ids(item, param)) is not None:
                result.append(ids)
            else:
                raise bad_request(f"'{param}' items must be strings or lists of token ids.", param)
        return result
    raise bad_request(f"'{param}' must be a string or a non-empty list.", param)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    inputs: list[list[int]]
    base64: bool
    dimensions: int


def parse_embedding(body: dict[str, Any], default_dim: int) -> EmbeddingRequest:
    """``POST /v1/embeddings``; the OpenAI SDK asks for base64 by default."""
    inputs = parse_texts(body.get("input"), "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    dimensions = _optional_int(body, "dimensions") or default_dim
    if dimensions > default_dim:  # vLLM cannot widen a model's embedding either
        raise bad_request(
            f"'dimensions' must be at most the model's {default_dim}, got {dimensions}.",
            "dimensions",
        )
    return EmbeddingRequest(inputs, encoding == "base64", dimensions)


def parse_document_texts(value: Any, param: str) -> list[str]:
    """Rerank documents: strings or ``{"text": ...}`` objects."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise bad_request(f"'{param}' must be a non-empty list.", param)
    texts: list[str] = []
    for item in value:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            texts.append(item["text"])
        else:
            raise bad_request(f"'{param}' items must be strings or {{'text': ...}}.", param)
    return texts
