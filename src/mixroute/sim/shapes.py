"""Response bodies in the shapes OpenAI clients (and a couple of others) expect.

Pure functions from plain values to JSON-ready dicts, so the handlers only decide *what*
to answer and *when*, and the shapes can be checked in isolation.
"""

from __future__ import annotations

import time
import uuid
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(
    request_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def text_completion(
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> dict[str, Any]:
    """A ``text_completion`` body; without token counts it is a stream chunk."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if prompt_tokens is not None and completion_tokens is not None:
        body["usage"] = usage(prompt_tokens, completion_tokens)
    return body


def usage_chunk(
    request_id: str,
    created: int,
    model: str,
    object_name: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """The ``stream_options.include_usage`` chunk: no choices, just usage."""
    return {
        "id": request_id,
        "object": object_name,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def response_object(
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A completed ``/v1/responses`` object with one output message."""
    incomplete = finish_reason == "length"
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": created,
        "model": model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": [
            {
                "type": "message",
                "id": new_id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": prompt_tokens,
            "output_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def anthropic_message(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """An Anthropic ``/v1/messages`` reply."""
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if finish_reason == "length" else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
    }


def model_list(model: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": model,
                "parent": None,
                "max_model_len": max_model_len,
            }
        ],
    }


class ChatOutput:
    """``/v1/chat/completions`` bodies and stream chunks of one request."""

    stream_object = "chat.completion.chunk"

    def __init__(self, model: str) -> None:
        self.model = model
        self.request_id = new_id("chatcmpl")
        self.created = now()

    def full(
        self, text: str, finish: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        return chat_completion(
            self.request_id,
            self.created,
            self.model,
            text,
            finish,
            prompt_tokens,
            completion_tokens,
        )

    def stream_start(self) -> list[dict[str, Any]]:
        return [
            chat_chunk(
                self.request_id, self.created, self.model, {"role": "assistant", "content": ""}
            )
        ]

    def stream_piece(self, piece: str) -> dict[str, Any]:
        return chat_chunk(self.request_id, self.created, self.model, {"content": piece})

    def stream_end(self, finish: str) -> dict[str, Any]:
        return chat_chunk(self.request_id, self.created, self.model, {}, finish)

    def stream_usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return usage_chunk(
            self.request_id,
            self.created,
            self.model,
            self.stream_object,
            prompt_tokens,
            completion_tokens,
        )


class CompletionOutput:
    """``/v1/completions`` bodies and stream chunks of one request."""

    stream_object = "text_completion"

    def __init__(self, model: str) -> None:
        self.model = model
        self.request_id = new_id("cmpl")
        self.created = now()

    def full(
        self, text: str, finish: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        return text_completion(
            self.request_id,
            self.created,
            self.model,
            text,
            finish,
            prompt_tokens,
            completion_tokens,
        )

    def stream_start(self) -> list[dict[str, Any]]:
        return []

    def stream_piece(self, piece: str) -> dict[str, Any]:
        return text_completion(self.request_id, self.created, self.model, piece, None)

    def stream_end(self, finish: str) -> dict[str, Any]:
        return text_completion(self.request_id, self.created, self.model, "", finish)

    def stream_usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return usage_chunk(
            self.request_id,
            self.created,
            self.model,
            self.stream_object,
            prompt_tokens,
            completion_tokens,
        )


class ResponsesOutput(CompletionOutput):
    """``/v1/responses``: non-streaming only (the parser rejects ``stream``)."""

    def full(
        self, text: str, finish: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        return response_object(
            self.created, self.model, text, finish, prompt_tokens, completion_tokens
        )


class MessagesOutput(CompletionOutput):
    """Anthropic ``/v1/messages``: non-streaming only (the parser rejects ``stream``)."""

    def full(
        self, text: str, finish: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        return anthropic_message(self.model, text, finish, prompt_tokens, completion_tokens)
