"""Reversible PII masking for one request: placeholders out, original values back in.

Why placeholders and not deletion: the model still needs to know that *something* is
an email or a person, and which mentions are the same one ("send it to [EMAIL_ADDRESS_1]
and cc [EMAIL_ADDRESS_1] again"), so each distinct (type, value) gets one numbered
placeholder for the whole request, across all messages. The answer can then be restored
for the client, including when it arrives as a stream whose chunks split a placeholder
(``[EMAIL_`` + ``ADDRESS_1]``): ``StreamRestorer`` holds back at most one placeholder's
worth of characters.

A ``Redactor`` is per request (it holds the values), never shared, and never logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mixroute.guards.entities import PIIEntity, text_parts

PLACEHOLDER = re.compile(r"\[([A-Z][A-Z_]*?)_(\d+)\]")


class Redactor:
    """Masks entity spans with ``[TYPE_n]`` and restores them.

    Placeholders are numbered per type in order of first appearance; the same exact
    value of the same type always gets the same placeholder within this redactor. A
    value equal in text but of another type gets its own placeholder.
    """

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    @property
    def placeholders(self) -> Mapping[str, str]:
        """Placeholder -> original value (a copy: callers cannot corrupt the map)."""
        return dict(self._values)

    @property
    def longest_placeholder(self) -> int:
        return max((len(p) for p in self._values), default=0)

    def placeholder_for(self, kind: str, value: str) -> str:
        """The placeholder for this (type, value), allocating the next number if new."""
        key = (kind, value)
        existing = self._by_value.get(key)
        if existing is not None:
            return existing
        number = self._counts.get(kind, 0) + 1
        self._counts[kind] = number
        placeholder = f"[{kind}_{number}]"
        self._by_value[key] = placeholder
        self._values[placeholder] = value
        return placeholder

    def mask(self, text: str, entities: Sequence[PIIEntity]) -> str:
        """``text`` with every entity span replaced by its placeholder.

        Spans are applied in order of ``start``; a span overlapping an earlier one is
        skipped (the detector never returns overlaps; this only guards hand-made input).
        """
        pieces: list[str] = []
        cursor = 0
        for entity in sorted(entities, key=lambda e: (e.start, -e.end)):
            if entity.start < cursor or entity.end > len(text) or entity.start >= entity.end:
                continue
            pieces.append(text[cursor : entity.start])
            pieces.append(self.placeholder_for(entity.type, text[entity.start : entity.end]))
            cursor = entity.end
        pieces.append(text[cursor:])
        return "".join(pieces)

    def restore(self, text: str) -> str:
        """Put the original values back; unknown placeholders are left as written."""
        if not self._values or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._values.get(m.group(0), m.group(0)), text)

    def mask_messages(
        self,
        messages: Sequence[Any],
        found: Sequence[tuple[int, PIIEntity]],
    ) -> list[Any]:
        """A new messages list with the spans from ``PIIDetector.detect_messages`` masked.

        Works for string content and for lists of content parts (offsets refer to the
        text parts joined with "\\n", as ``detect_messages`` reports them). The input
        messages are not modified; untouched messages are shallow copies.
        """
        by_message: dict[int, list[PIIEntity]] = {}
        for index, entity in found:
            by_message.setdefault(index, []).append(entity)
        masked: list[Any] = []
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping):  # not a message: nothing was found in it
                masked.append(message)
                continue
            copy = dict(message)
            entities = by_message.get(index)
            if entities:
                copy["content"] = self._mask_content(message.get("content"), entities)
            masked.append(copy)
        return masked

    def _mask_content(self, content: object, entities: Sequence[PIIEntity]) -> object:
        if isinstance(content, str):
            return self.mask(content, entities)
        if not isinstance(content, list):
            return content
        offsets = iter(text_parts(content))
        parts: list[object] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                value = part.get("text")
                if isinstance(value, str):
                    offset, _ = next(offsets)
                    end = offset + len(value)
                    local = [
                        PIIEntity(e.type, e.start - offset, e.end - offset, e.score)
                        for e in entities
                        if e.start >= offset and e.end <= end
                    ]
                    parts.append({**part, "text": self.mask(value, local)})
                    continue
            parts.append(part)
        return parts


class StreamRestorer:
    """Restores placeholders in a streamed answer whose chunks may split them.

    ``feed`` returns what can be shown now; the tail that could still become a known
    placeholder (``"... [EMAIL_"``) is held back until the next chunk completes it or
    rules it out. The hold-back is bounded by the longest placeholder issued, so text is
    never delayed by more than a few characters. Call ``flush`` at the end of the stream.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        cut = self._hold_point(text)
        self._held = text[cut:]
        return self._redactor.restore(text[:cut])

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self._redactor.restore(text)

    def _hold_point(self, text: str) -> int:
        """Index where a possible partial placeholder starts, or ``len(text)``."""
        placeholders = self._redactor.placeholders
        longest = self._redactor.longest_placeholder
        if not placeholders:
            return len(text)
        start = max(0, len(text) - longest + 1)
        index = text.find("[", start)
        while index != -1:
            tail = text[index:]
            if any(p.startswith(tail) and p != tail for p in placeholders):
                return index
            index = text.find("[", index + 1)
        return len(text)
