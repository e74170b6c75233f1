"""The block index: which prefix-cache blocks each endpoint holds, per vLLM's KV events.

``BlockIndex`` keeps, per endpoint, the blocks the engine announced and not yet removed,
bounded per endpoint (LRU) so memory stays flat however long the gateway runs;
``BlockIndex.match`` counts the leading blocks of a request each endpoint already holds.

The index never trusts the engine's hash values (vLLM's depend on its hash function, seed
and extra keys, and cannot be reproduced outside the engine): it keys a block by its own
chained hash of the block's token ids, computed from ``BlockStored.token_ids``, and keeps
a map engine hash -> own key only so that ``BlockRemoved`` can name blocks. The request
side computes the same chain from its token ids (``chain_keys``), and the two meet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mixroute.balancer.kv_wire import BlockRemoved, BlockStored, EngineHash, KVEvent

GPU = "GPU"
DEFAULT_MEDIA: frozenset[str | None] = frozenset({GPU, None})  # None: before vLLM had medium
_ROOT_KEY = 0x6D6978726F757465  # the parent key of a prompt's first block


def chain_keys(token_ids: Sequence[int], block_size: int) -> list[int]:
    """The index's own chained keys of the full blocks of ``token_ids``.

    ``hash((parent_key, tuple(block)))``: Python hashes tuples of ints deterministically
    (no per-process salt, unlike str), fast, 64 bits. Not collision resistant against an
    adversary, which at worst makes a routing choice less good, never a wrong answer.
    """
    ids = token_ids if isinstance(token_ids, list | tuple) else list(token_ids)
    keys: list[int] = []
    parent = _ROOT_KEY
    for start in range(0, len(ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(ids[start : start + block_size])))
        keys.append(parent)
    return keys


@dataclass(slots=True)
class _EndpointBlocks:
    """One endpoint's blocks: engine hash -> own key (LRU by store), own key -> refcount.

    A refcount because two engine hashes may carry the same tokens (KV-cache groups of
    hybrid models each announce their blocks): the key stays held while any of them does.
    """

    max_blocks: int
    entries: OrderedDict[EngineHash, int] = field(default_factory=OrderedDict)
    held: dict[int, int] = field(default_factory=dict)

    def add(self, engine_hash: EngineHash, key: int) -> None:
        previous = self.entries.get(engine_hash)
        if previous == key:
            self.entries.move_to_end(engine_hash)
            return
        if previous is not None:
            self._release(previous)
        self.entries[engine_hash] = key
        self.entries.move_to_end(engine_hash)
        self.held[key] = self.held.get(key, 0) + 1

    def remove(self, engine_hash: EngineHash) -> bool:
        key = self.entries.pop(engine_hash, None)
        if key is None:
            return False
        self._release(key)
        return True

    def evict_oldest(self) -> None:
        _, key = self.entries.popitem(last=False)
        self._release(key)

    def _release(self, key: int) -> None:
        count = self.held[key] - 1
        if count:
            self.held[key] = count
        else:
            del self.held[key]


@dataclass(slots=True)
class IndexStats:
    stored: int = 0
    removed: int = 0
    cleared: int = 0
    evicted: int = 0  # dropped by the per-endpoint bound, not by the engine
    skipped_orphans: int = 0  # parent never seen (history started after it): not indexed
    skipped_unmatchable: int = 0  # LoRA / multimodal / salted blocks: tokens do not name them
    skipped_media: int = 0  # medium not followed (e.g. CPU tiers)
    skipped_malformed: int = 0


class BlockIndex:
    """Per-endpoint sets of cached blocks, keyed by the index's own chained token hashes.

    Bounded: at most ``max_blocks_per_endpoint`` engine blocks per endpoint (or the bound
    given to ``add_endpoint``, ideally the engine's ``num_gpu_blocks``); past it the least
    recently stored are dropped. The engine's own evictions arrive as BlockRemoved, so the
    bound only matters when an engine holds more than it, or removals were lost. Memory is
    about 360 bytes per block at steady state (65,536 blocks: ~23 MB).
    Only blocks whose whole chain of parents was seen are indexed, so after a partial
    history the index is a subset of the engine's cache, never a superset.
    """

    def __init__(
        self,
        max_blocks_per_endpoint: int = 65_536,
        media: Iterable[str | None] = DEFAULT_MEDIA,
    ) -> None:
        if max_blocks_per_endpoint < 1:
            raise ValueError("max_blocks_per_endpoint must be >= 1")
        self._max_blocks = max_blocks_per_endpoint
        self._media = frozenset(m.upper() if m is not None else None for m in media)
        self._endpoints: dict[str, _EndpointBlocks] = {}
        self.stats = IndexStats()

    def __len__(self) -> int:
        """Engine blocks held over all endpoints."""
        return sum(len(blocks.entries) for blocks in self._endpoints.values())

    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def blocks(self, endpoint: str) -> int:
        """Engine blocks held for ``endpoint``."""
        blocks = self._endpoints.get(endpoint)
        return len(blocks.entries) if blocks is not None else 0

    def add_endpoint(self, endpoint: str, max_blocks: int | None = None) -> None:
        """Make ``endpoint`` known (``match`` reports it, with 0 until events arrive).

        ``max_blocks`` bounds this endpoint (default: ``max_blocks_per_endpoint``); an
        endpoint already known keeps its entries and gets the new bound, if one is given.
        """
        if max_blocks is not None and max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        blocks = self._blocks_of(endpoint)
        if max_blocks is not None:
            blocks.max_blocks = max_blocks
            self._enforce_bound(blocks)

    def clear_endpoint(self, endpoint: str) -> None:
        """Forget what ``endpoint`` holds (its history can no longer be trusted)."""
        blocks = self._endpoints.get(endpoint)
        if blocks is not None:
            self._endpoints[endpoint] = _EndpointBlocks(blocks.max_blocks)

    def _blocks_of(self, endpoint: str) -> _EndpointBlocks:
        blocks = self._endpoints.get(endpoint)
        if blocks is None:
            blocks = self._endpoints[endpoint] = _EndpointBlocks(self._max_blocks)
        return blocks

    def _enforce_bound(self, blocks: _EndpointBlocks) -> None:
        while len(blocks.entries) > blocks.max_blocks:
            blocks.evict_oldest()
            self.stats.evicted += 1

    def apply(self, endpoint: str, events: Iterable[KVEvent]) -> None:
        """Apply one batch's events, in order."""
        blocks = self._blocks_of(endpoint)
        for event in events:
            if isinstance(event, BlockStored):
                self._store(blocks, event)
            elif isinstance(event, BlockRemoved):
                if self._follows(event.medium):
                    self.stats.removed += sum(map(blocks.remove, event.block_hashes))
            else:
                self.clear_endpoint(endpoint)
                blocks = self._endpoints[endpoint]
                self.stats.cleared += 1

    def _follows(self, medium: str | None) -> bool:
        return (medium.upper() if isinstance(medium, str) else None) in self._media

    def _store(self, blocks: _EndpointBlocks, event: BlockStored) -> None:
        count = len(event.block_hashes)
        if not self._follows(event.medium):
            self.stats.skipped_media += count
            return
        if event.lora_id is not None or event.lora_name is not None or _has_extra(event):
            # vLLM folds LoRA, multimodal hashes and cache_salt into these blocks' hashes:
            # a request's token ids alone cannot name them, so neither can the index.
            # Their children then have an unknown parent and are skipped too.
            self.stats.skipped_unmatchable += count
            return
        size = event.block_size
        if size < 1 or len(event.token_ids) != size * count:
            self.stats.skipped_malformed += count
            return
        if event.parent_block_hash is None:
            parent = _ROOT_KEY
        else:
            known = blocks.entries.get(event.parent_block_hash)
            if known is None:
                self.stats.skipped_orphans += count
                return
            parent = known
        tokens = event.token_ids
        for index, engine_hash in enumerate(event.block_hashes):
            parent = hash((parent, tuple(tokens[index * size : (index + 1) * size])))
            blocks.add(engine_hash, parent)
        self.stats.stored += count
        self._enforce_bound(blocks)

    def match(self, token_ids: Sequence[int], block_size: int) -> dict[str, int]:
        """For each endpoint, how many leading full blocks of ``token_ids`` it holds."""
        return self.match_keys(chain_keys(token_ids, block_size))

    def match_keys(self, keys: Sequence[int]) -> dict[str, int]:
        """``match`` for keys already computed with ``chain_keys`` (reuse across calls)."""
        result: dict[str, int] = {}
        for name, blocks in self._endpoints.items():
            held = blocks.held
            count = 0
            for key in keys:
                if key not in held:
                    break
                count += 1
            result[name] = count
        return result


def _has_extra(event: BlockStored) -> bool:
    return bool(event.extra_keys) and any(extra for extra in event.extra_keys or ())
