"""Estimated prefix-cache contents: which endpoint recently served which prompt prefix.

The rendered prompt (every message of a chat, not only ``prompt``; or a completion prompt)
is cut into fixed-size chunks of ``block_chars`` characters and each chunk gets a chained
hash (it depends on all the text before it, as an engine's block hashes do). After a request
is routed, its chunk hashes are recorded for the chosen endpoint. A new request's match
with an endpoint is the number of its leading chunks that endpoint holds. Characters, not
tokens: no tokenizer on the hot path, and a chunk of 256 characters is about 64 tokens, a
few engine blocks; exact block contents come from KV events where engines publish them.

The index is an LRU over (hash -> endpoints) with a hard bound on entries, so its memory is
flat however long the gateway runs (the Production Stack router's trie was not).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any


def render_prompt(body: dict[str, Any]) -> str:
    """The text an engine would prefill, in order: chat messages, or a completion prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(_part_text(p) for p in content)
            parts.append(f"<{message.get('role')}>{content if isinstance(content, str) else ''}")
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return ""


def _part_text(part: Any) -> str:
    """A content part's text; parts the upstream will reject (``"text": 5``) count as none."""
    text = part.get("text") if isinstance(part, dict) else None
    return text if isinstance(text, str) else ""


def chunk_hashes(text: str, block_chars: int, max_blocks: int) -> list[bytes]:
    hashes: list[bytes] = []
    parent = b""
    for start in range(0, min(len(text), block_chars * max_blocks), block_chars):
        chunk = text[start : start + block_chars]
        if len(chunk) < block_chars:
            break  # only full blocks are cached by an engine
        parent = hashlib.blake2b(parent + chunk.encode(), digest_size=8).digest()
        hashes.append(parent)
    return hashes


class PrefixIndex:
    def __init__(self, max_entries: int, max_endpoints_per_block: int = 8) -> None:
        self._max_entries = max_entries
        self._per_block = max_endpoints_per_block
        self._blocks: OrderedDict[bytes, OrderedDict[str, None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, hashes: Sequence[bytes], endpoints: Sequence[str]) -> dict[str, int]:
        """Leading blocks of ``hashes`` each endpoint holds."""
        wanted = set(endpoints)
        counts = dict.fromkeys(endpoints, 0)
        alive = set(wanted)
        for block in hashes:
            holders = self._blocks.get(block)
            if holders is None:
                break
            alive &= holders.keys()
            if not alive:
                break
            for name in alive:
                counts[name] += 1
        return counts

    def record(self, hashes: Sequence[bytes], endpoint: str) -> None:
        for block in hashes:
            holders = self._blocks.get(block)
            if holders is None:
                holders = OrderedDict()
                self._blocks[block] = holders
            else:
                self._blocks.move_to_end(block)
            holders[endpoint] = None
            holders.move_to_end(endpoint)
            if len(holders) > self._per_block:
                holders.popitem(last=False)
        while len(self._blocks) > self._max_entries:
            self._blocks.popitem(last=False)
