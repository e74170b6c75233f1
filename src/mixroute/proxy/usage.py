"""Token usage, spend and token timings, read from upstream answers.

Non-streamed JSON answers carry ``usage``. Streams carry it only when the client asked for
``stream_options.include_usage``; without it the completion tokens are counted one per
SSE event that carries generated text (vLLM and the simulator send one token per event) and
the prompt tokens are unknown. Spend needs ``models.*.pricing`` and usage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from mixroute.config.schema import PricingConfig
from mixroute.context import ResponseTap
from mixroute.observability.metrics import Metrics

# A JSON string value right after one of these keys is generated text: chat deltas
# (content, reasoning_content, tool-call arguments), completions (text), Responses and
# Anthropic deltas.
_TEXT_KEYS = (b'content":', b'"arguments":', b'"text":', b'"delta":')
_MAX_LINE = 1 << 20  # a longer unfinished line is dropped rather than held


def usage_from_json(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return usage if isinstance(usage, dict) else None


def _carries_text(line: bytes) -> bool:
    """Whether an SSE data line holds a non-empty generated string (no JSON parse)."""
    for key in _TEXT_KEYS:
        at = line.find(key)
        while at != -1:
            rest = line[at + len(key) : at + len(key) + 3].lstrip()
            if rest[:1] == b'"' and rest[1:2] != b'"':
                return True
            at = line.find(key, at + 1)
    return False


class StreamUsageWatcher:
    """Watches SSE bytes as they pass: the last ``usage`` (it comes at the end of a stream),
    how many events carried generated text, and when the first and last of them arrived."""

    def __init__(self) -> None:
        self._tail = b""
        self.usage: dict[str, Any] | None = None
        self.text_events = 0
        self.first_text_at: float | None = None
        self.last_text_at: float | None = None

    def feed(self, chunk: bytes, now: float) -> None:
        data = self._tail + chunk
        end = data.rfind(b"\n")
        if end == -1:
            self._tail = data if len(data) <= _MAX_LINE else b""
            return
        self._tail = data[end + 1 :]
        for line in data[:end].split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            if b'"usage"' in line and b'"usage":null' not in line:
                found = usage_from_json(line[6:])
                if found:
                    self.usage = found
            if _carries_text(line):
                self.text_events += 1
                if self.first_text_at is None:
                    self.first_text_at = now
                self.last_text_at = now


def _tokens(usage: dict[str, Any]) -> tuple[int | None, int | None]:
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def account(
    metrics: Metrics,
    model: str,
    route: str,
    pricing: PricingConfig | None,
    usage: dict[str, Any],
) -> None:
    """Tokens for every model; spend for models with pricing."""
    prompt, completion = _tokens(usage)
    if prompt is not None:
        metrics.tokens.labels(model, "prompt").inc(prompt)
    if completion is not None:
        metrics.tokens.labels(model, "completion").inc(completion)
    if pricing is not None and prompt is not None and completion is not None:
        cost = prompt * pricing.prompt_per_million + completion * pricing.completion_per_million
        metrics.cost.labels(model, route).inc(cost / 1_000_000)


def account_answer(
    metrics: Metrics,
    model: str,
    route: str,
    pricing: PricingConfig | None,
    body: bytes,
    started: float,
    now: float,
) -> None:
    """Tokens of a non-streamed JSON answer, and its time to first token: the whole answer
    (only for answers that generated tokens, so embeddings and tokenize are left out)."""
    usage = usage_from_json(body)
    if usage is None:
        return
    account(metrics, model, route, pricing, usage)
    completion = _tokens(usage)[1]
    if completion:
        metrics.time_to_first_token.labels(model).observe(now - started)


def account_stream(
    metrics: Metrics,
    model: str,
    route: str,
    pricing: PricingConfig | None,
    watcher: StreamUsageWatcher,
    started: float,
) -> None:
    """Tokens, time to first token and time per output token of one relayed stream."""
    first, last = watcher.first_text_at, watcher.last_text_at
    if first is not None:
        metrics.time_to_first_token.labels(model).observe(first - started)
    completion: int | None = watcher.text_events
    if watcher.usage is not None:
        account(metrics, model, route, pricing, watcher.usage)
        completion = _tokens(watcher.usage)[1]
    elif watcher.text_events:
        metrics.tokens.labels(model, "completion").inc(watcher.text_events)
    if first is not None and last is not None and completion is not None and completion > 1:
        metrics.time_per_output_token.labels(model).observe((last - first) / (completion - 1))


class UsageTap:
    """A response tap that reports the answer's usage once it has passed, and hands every
    byte on to ``inner`` (the cache's capture, PII restoring) unchanged in between.

    The Envoy layout's way to charge a key's tokens per minute with the completion: there
    the processor sees the answer only through a tap (docs/envoy.md)."""

    __slots__ = ("_charged", "_inner", "_on_usage", "_watcher")

    def __init__(
        self, inner: ResponseTap | None, on_usage: Callable[[dict[str, Any]], None]
    ) -> None:
        self._inner = inner
        self._on_usage = on_usage
        self._watcher = StreamUsageWatcher()
        self._charged = False

    def on_body(self, status: int, body: bytes) -> bytes:
        self._charged = True
        if status == 200 and (usage := usage_from_json(body)) is not None:
            self._on_usage(usage)
        return self._inner.on_body(status, body) if self._inner is not None else body

    def on_chunk(self, chunk: bytes) -> bytes:
        self._watcher.feed(chunk, time.monotonic())
        return self._inner.on_chunk(chunk) if self._inner is not None else chunk

    def flush(self) -> bytes:
        return self._inner.flush() if self._inner is not None else b""

    def on_stream_end(self, complete: bool) -> None:
        if not self._charged:  # a stream (a whole body was charged in on_body)
            self._charged = True
            watcher = self._watcher
            self._on_usage(watcher.usage or {"completion_tokens": watcher.text_events})
        if self._inner is not None:
            self._inner.on_stream_end(complete)
