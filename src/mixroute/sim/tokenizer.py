"""A tiny deterministic tokenizer, chat template and text generator.

The simulator needs token counts that are stable across runs and processes (prefix
caching and usage accounting depend on them), not a real vocabulary. So:

* a token is a chat marker such as ``<|user|>``, a run of word characters, or a single
  punctuation character; whitespace only separates tokens;
* a token id is a 31-bit blake2b hash of the token text (Python's ``hash`` is salted per
  process, which would break cross-process determinism);
* generated text is words of a fixed vocabulary picked by hashing (seed, prompt, index),
  each word being exactly one token, separated by single spaces.

Chat template (the only one; gateways see it through ``/tokenize`` and usage)::

    <|system|>
    You are terse.
    <|user|>
    Hi
    <|assistant|>

Each message renders as ``<|{role}|>\\n{content}\\n``; then ``<|assistant|>\\n`` is
appended as the generation prompt. ``content`` may be a string, ``None`` or a list of
parts: text parts (``text``, ``input_text``, ``output_text``) are joined with a newline,
image and audio parts render as ``<|image|>`` / ``<|audio|>``, anything else as its JSON.
Assistant ``tool_calls`` are appended as JSON.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Sequence
from hashlib import blake2b
from typing import Any

import orjson

_TOKEN_RE = re.compile(r"<\|[a-z_]+\|>|\w+|[^\w\s]")
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
_MEDIA_PART_MARKERS = {
    "image_url": "<|image|>",
    "input_image": "<|image|>",
    "image": "<|image|>",
    "input_audio": "<|audio|>",
    "audio_url": "<|audio|>",
}
_VOCABULARY = (
    "the",
    "a",
    "model",
    "token",
    "cache",
    "batch",
    "route",
    "replica",
    "request",
    "stream",
    "prefix",
    "block",
    "queue",
    "latency",
    "answer",
    "fast",
    "slow",
    "gateway",
    "engine",
    "prompt",
    "decode",
    "prefill",
    "memory",
    "kernel",
    "graph",
    "tensor",
    "layer",
    "head",
    "value",
    "key",
    "attention",
    "sample",
    "logit",
    "vector",
    "shard",
    "node",
    "server",
    "client",
    "policy",
    "weight",
    "balance",
    "load",
    "score",
    "rank",
    "hash",
    "ring",
    "window",
    "budget",
    "limit",
    "retry",
    "health",
    "metric",
    "gauge",
    "counter",
    "bucket",
    "signal",
    "event",
    "loop",
    "task",
    "future",
    "socket",
    "buffer",
    "chunk",
    "done",
)


class TemplateError(ValueError):
    """A message list the chat template cannot render (bad role or content shape)."""


def tokenize(text: str) -> list[str]:
    """Split ``text`` into token strings."""
    return _TOKEN_RE.findall(text)


def token_id(piece: str) -> int:
    """Stable id of one token string."""
    digest = blake2b(piece.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def encode(text: str) -> list[int]:
    """Token ids of ``text``."""
    return [token_id(piece) for piece in _TOKEN_RE.findall(text)]


def count_tokens(text: str) -> int:
    """Number of tokens of ``text`` without building the id list."""
    return sum(1 for _ in _TOKEN_RE.finditer(text))


def _render_content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TemplateError("message content must be a string, null or a list of parts")
    rendered: list[str] = []
    for part in content:
        if isinstance(part, str):
            rendered.append(part)
            continue
        if not isinstance(part, dict):
            raise TemplateError("each content part must be an object")
        part_type = part.get("type")
        if part_type is not None and not isinstance(part_type, str):  # vLLM: a 400
            raise TemplateError("a content part's 'type' must be a string")
        if part_type in _TEXT_PART_TYPES:
            text = part.get("text")
            if not isinstance(text, str):
                raise TemplateError(f"content part of type {part_type!r} needs a string 'text'")
            rendered.append(text)
        elif part_type in _MEDIA_PART_MARKERS:
            rendered.append(_MEDIA_PART_MARKERS[part_type])
        else:
            rendered.append(orjson.dumps(part).decode())
    return "\n".join(rendered)


def render_messages(messages: Iterable[Any], add_generation_prompt: bool = True) -> str:
    """Render chat messages with the simulator's template (see module docstring)."""
    lines: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise TemplateError("each message must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise TemplateError("each message needs a string 'role'")
        content = _render_content(message.get("content"))
        tool_calls = message.get("tool_calls")
        if tool_calls:
            content = (
                f"{content}\n{orjson.dumps(tool_calls).decode()}"
                if content
                else (orjson.dumps(tool_calls).decode())
            )
        lines.append(f"<|{role}|>\n{content}\n")
    if add_generation_prompt:
        lines.append("<|assistant|>\n")
    return "".join(lines)


def _prompt_digest(prompt_ids: Sequence[int], seed: int) -> bytes:
    hasher = blake2b(digest_size=16)
    hasher.update(seed.to_bytes(8, "little", signed=True))
    hasher.update(array("I", prompt_ids).tobytes())
    return hasher.digest()


def generate_pieces(prompt_ids: Sequence[int], count: int, seed: int) -> list[str]:
    """``count`` output text pieces, one per token, deterministic in (prompt, seed).

    The first piece is a bare word and the following ones start with a space, so that
    joining the pieces gives the full text exactly as a stream consumer would rebuild it.
    """
    digest = _prompt_digest(prompt_ids, seed)
    pieces: list[str] = []
    for index in range(count):
        word_hash = blake2b(index.to_bytes(8, "little"), digest_size=4, key=digest).digest()
        word = _VOCABULARY[int.from_bytes(word_hash, "little") % len(_VOCABULARY)]
        pieces.append(word if index == 0 else f" {word}")
    return pieces
