"""Put redacted values back into the model's answer, JSON or SSE, as it passes through."""

from __future__ import annotations

from typing import Any

import orjson

from mixroute.guards.redact import Redactor, StreamRestorer


class RestoreTap:
    """A response tap (see ``mixroute.context.ResponseTap``) that restores placeholders.

    In a stream a placeholder may be split across events (``[EMAIL_`` + ``ADDRESS_1]``); the
    ``StreamRestorer`` holds the possible start of one back, and the held text is released
    into the event that carries the finish reason.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._restorer = StreamRestorer(redactor)
        self._pending = b""

    def on_body(self, status: int, body: bytes) -> bytes:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        for choice in data.get("choices") or [] if isinstance(data, dict) else []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                message["content"] = self._redactor.restore(message["content"])
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                choice["text"] = self._redactor.restore(choice["text"])
        return orjson.dumps(data)

    def on_chunk(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        lines = data[:cut].split(b"\n")[:-1]
        return b"".join(self._line(line) + b"\n" for line in lines)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        tail = self._line(rest) if rest else b""
        held = self._restorer.flush()
        if held:  # the stream ended without a finish event: release the text anyway
            event = {"choices": [{"index": 0, "delta": {"content": held}}]}
            tail += b"\ndata: " + orjson.dumps(event) + b"\n\n"
        return tail

    def on_stream_end(self, complete: bool) -> None:
        return None

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data: {"):
            return line
        try:
            event: Any = orjson.loads(line[6:])
        except orjson.JSONDecodeError:
            return line
        changed = False
        for choice in event.get("choices") or [] if isinstance(event, dict) else []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                text = delta.get("content")
                if isinstance(text, str):
                    delta["content"] = self._restorer.feed(text)
                    changed = True
                if choice.get("finish_reason"):
                    held = self._restorer.flush()
                    if held:
                        delta["content"] = (delta.get("content") or "") + held
                        changed = True
            elif isinstance(choice.get("text"), str):
                choice["text"] = self._restorer.feed(choice["text"])
                changed = True
        return b"data: " + orjson.dumps(event) if changed else line
