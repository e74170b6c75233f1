"""Automatic prefix caching, modelled on vLLM's hashed KV blocks.

vLLM hashes every *full* block of ``block_size`` prompt tokens; the hash of a block
covers the hash of the previous block, so a block only matches when the whole prefix
before it matches too. A request reuses the longest run of leading blocks found in the
cache and skips their prefill. Here the cache is an LRU of block hashes with a fixed
capacity; only the hit/miss bookkeeping is simulated, no memory is held.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from hashlib import blake2b

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


class PrefixCache:
    """LRU set of block hashes; capacity 0 disables caching."""

    def __init__(self, capacity_blocks: int) -> None:
        self._capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

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

    def insert(self, hashes: Sequence[int]) -> None:
        """Record the blocks as cached, evicting the least recently used beyond capacity."""
        if self._capacity == 0:
            return
        for block_hash in hashes:
            if block_hash in self._blocks:
                self._blocks.move_to_end(block_hash)
            else:
                self._blocks[block_hash] = None
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
