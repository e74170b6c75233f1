"""Rewrite the ``model`` field in upstream answers.

An upstream may know a model by another id than the public one (llama.cpp reports its GGUF
file name). Clients must see the public name, so answers are rewritten: whole JSON bodies
directly, SSE streams line by line (a chunk boundary may fall inside a line, so partial lines
are held back until complete).
"""

from __future__ import annotations

import re

import orjson


def rewrite_json_model(body: bytes, public: str) -> bytes:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(data, dict) and "model" in data:
        data["model"] = public
        return orjson.dumps(data)
    return body


class SSEModelRewriter:
    def __init__(self, upstream: str, public: str) -> None:
        self._pattern = re.compile(rb'("model"\s*:\s*)' + re.escape(orjson.dumps(upstream)))
        self._replacement = rb"\g<1>" + orjson.dumps(public).replace(b"\\", b"\\\\")
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        return self._pattern.sub(self._replacement, data[:cut])

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._pattern.sub(self._replacement, rest)
