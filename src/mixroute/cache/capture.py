"""Capture an answer as it passes through, so it can be stored when (and only if) it completes.

Non-streamed answers are parsed once. Streams are followed event by event: content deltas
are concatenated, the finish reason and usage kept. The gateway asks the upstream for usage
on cached streams (so a replay has coherent ``usage``); when the client did not ask for it,
the usage-only event is taken out of the client's stream here.
"""

from __future__ import annotations

from typing import Any

import orjson

from mixroute.cache.store import CachedAnswer


class AnswerCapture:
    MAX_BYTES = 4 * 1024 * 1024  # answers longer than this are not cached

    def __init__(self, model: str, strip_usage_event: bool, store_tool_calls: bool) -> None:
        self._model = model
        self._strip_usage = strip_usage_event
        self._store_tool_calls = store_tool_calls
        self._pending = b""
        self._content: list[str] = []
        self._size = 0
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._tool_calls = False
        self._broken = False
        self.answer: CachedAnswer | None = None

    def on_body(self, status: int, body: bytes) -> bytes:
        self._capture_body(status, body)
        return body

    def _capture_body(self, status: int, body: bytes) -> None:
        if status != 200 or len(body) > self.MAX_BYTES:
            return
        try:
            data = orjson.loads(body)
            choice = data["choices"][0]
            message = choice["message"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return
        if len(data["choices"]) != 1:
            return
        tool_calls = message.get("tool_calls")
        if tool_calls and not self._store_tool_calls:
            return
        content = message.get("content")
        finish = choice.get("finish_reason")
        if finish not in ("stop", "length", "tool_calls") or not isinstance(content, str | None):
            return
        self.answer = CachedAnswer(
            self._model, content or "", finish, data.get("usage"), tool_calls or None
        )

    def on_chunk(self, chunk: bytes) -> bytes:
        """Follow one chunk of SSE; returns what the client should get (usage maybe removed)."""
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        complete, out = data[:cut], []
        for line in complete.split(b"\n")[:-1]:
            keep = self._on_line(line)
            if keep:
                out.append(line)
        if not self._strip_usage:
            return chunk
        return b"\n".join(out) + b"\n" if out else b""

    def flush(self) -> bytes:
        """The held-back partial line, at the end of the stream."""
        rest, self._pending = self._pending, b""
        if rest:
            self._on_line(rest)
        return rest if self._strip_usage else b""

    def _on_line(self, line: bytes) -> bool:
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            return True
        try:
            event = orjson.loads(line[6:])
        except orjson.JSONDecodeError:
            self._broken = True
            return True
        if not isinstance(event, dict):
            return True
        if event.get("error"):
            self._broken = True
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = event.get("choices") or []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                self._broken = True
            delta = choice.get("delta") or {}
            if delta.get("tool_calls"):
                self._tool_calls = True
            text = delta.get("content")
            if isinstance(text, str):
                self._content.append(text)
                self._size += len(text)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        usage_only = not choices and usage is not None
        return not (usage_only and self._strip_usage)

    def on_stream_end(self, complete: bool) -> None:
        if not complete or self._broken or self._finish not in ("stop", "length"):
            return
        if self._tool_calls or self._size > self.MAX_BYTES:
            return
        self.answer = CachedAnswer(self._model, "".join(self._content), self._finish, self._usage)
