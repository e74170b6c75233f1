"""Automatic prefix caching, modelled on vLLM's hashed KV blocks.

vLLM hashes every *full* block of ``block_size`` prompt tokens; the hash of a block
covers the hash of the previous block, so a block only matches when the whole prefix
before it matches too. A request reuses the longest run of leading blocks found in the
cache and skips their prefill. Here the cache is an LRU of block hashes with a fixed
capacity; only the hit/miss bookkeeping is simulated, no memory is held.

A ``CacheListener`` (the KV-event publisher, ``kv_events``) hears what vLLM would announce:
blocks newly stored (with their tokens and parent), blocks evicted, the cache cleared.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from hashlib import blake2b
from typing import Protocol

_ROOT_HASH = 0


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of ``token_ids`` (a trailing partial block is not
    cacheable, as in vLLM)."""
    hashes: list[int] = []
    previous = _ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        hasher = blake2b(digest_size=8)
        hasher.update(previous.to_bytes(8, "little"))
        hasher.update(array("I", token_ids[start : start + block_size]).tobytes())
        previous = int.from_bytes(hasher.digest(), "little")
        hashes.append(previous)
    return hashes


class CacheListener(Protocol):
    """Hears the cache's changes, in the order they happen (vLLM's KV-event vocabulary)."""

    def blocks_stored(
        self, block_hashes: Sequence[int], parent_hash: int | None, token_ids: Sequence[int]
    ) -> None:
        """Consecutive blocks newly cached; ``parent_hash`` is the block before the first."""

    def blocks_removed(self, block_hashes: Sequence[int]) -> None:
        """Blocks evicted."""

    def all_cleared(self) -> None:
        """Every block dropped at once (prefix cache reset)."""


class PrefixCache:
    """LRU set of block hashes; capacity 0 disables caching."""

    def __init__(self, capacity_blocks: int, listener: CacheListener | None = None) -> None:
        self._capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._listener = listener

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def capacity(self) -> int:
        return self._capacity

    def match(self, hashes: Sequence[int]) -> int:
        """Number of leading blocks present in the cache; touched blocks become recent."""
        hits = 0
        for block_hash in hashes:
            if block_hash not in self._blocks:
                break
            self._blocks.move_to_end(block_hash)
            hits += 1
        return hits

    def insert(
        self, hashes: Sequence[int], token_ids: Sequence[int] = (), block_size: int = 0
    ) -> None:
        """Record the blocks as cached, evicting the least recently used beyond capacity.

        ``token_ids``/``block_size`` (the prompt the hashes were made from) only feed the
        listener: each run of newly cached blocks is announced with its tokens and parent,
        then the evictions, so a subscriber replaying the events rebuilds this cache.
        """
        if self._capacity == 0:
            return
        run_start: int | None = None
        for index, block_hash in enumerate(hashes):
            if block_hash in self._blocks:
                self._blocks.move_to_end(block_hash)
                if run_start is not None:
                    self._announce_stored(hashes, run_start, index, token_ids, block_size)
                    run_start = None
            else:
                self._blocks[block_hash] = None
                if run_start is None:
                    run_start = index
        if run_start is not None:
            self._announce_stored(hashes, run_start, len(hashes), token_ids, block_size)
        evicted: list[int] = []
        while len(self._blocks) > self._capacity:
            evicted.append(self._blocks.popitem(last=False)[0])
        if evicted and self._listener is not None:
            self._listener.blocks_removed(evicted)

    def clear(self) -> None:
        """Drop every block (``/reset_prefix_cache``)."""
        self._blocks.clear()
        if self._listener is not None:
            self._listener.all_cleared()

    def _announce_stored(
        self,
        hashes: Sequence[int],
        start: int,
        stop: int,
        token_ids: Sequence[int],
        block_size: int,
    ) -> None:
        if self._listener is None:
            return
        parent = hashes[start - 1] if start > 0 else None
        tokens = token_ids[start * block_size : stop * block_size]
        self._listener.blocks_stored(hashes[start:stop], parent, tokens)
