"""The PII span and message-text helpers, kept apart from the detector so that code which
only masks or restores text never imports presidio and spaCy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PIIEntity:
    """One detected span; ``start``/``end`` are Python string (code point) indices."""

    type: str
    start: int
    end: int
    score: float


def text_parts(content: object) -> list[tuple[int, str]]:
    """(offset in the joined message text, text) for each text piece of a content value.

    A string is one piece at offset 0. A list of parts contributes its ``{"type":
    "text"}`` parts, joined with "\\n" (see ``message_text``). Anything else has no text.
    """
    if isinstance(content, str):
        return [(0, content)]
    pieces: list[tuple[int, str]] = []
    if isinstance(content, list):
        offset = 0
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                value = part.get("text")
                if isinstance(value, str):
                    pieces.append((offset, value))
                    offset += len(value) + 1
    return pieces


def message_text(message: Mapping[str, Any]) -> str:
    """The text that ``detect_messages`` offsets refer to."""
    return "\n".join(part for _, part in text_parts(message.get("content")))
