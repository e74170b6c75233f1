"""In-process cache backend: exact numpy search per scope, HNSW for big scopes.

Entries live in one LRU (``OrderedDict``) with a global ``max_entries`` bound and a TTL.
Vectors are grouped by scope (only same-scope entries may answer each other), each scope in
a ``VectorIndex``: a growable numpy matrix searched exactly while small, switched to an
hnswlib graph once it grows past ``hnsw_above`` entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixroute.cache.check import Facts, agree, facts
from mixroute.cache.key import CacheRequest
from mixroute.cache.store import CachedAnswer, CacheHit
from mixroute.config.schema import CacheConfig
from mixroute.semantic.embedding import Vector

CANDIDATES = 4


@dataclass(slots=True)
class _Entry:
    id: int
    scope: str
    exact: str
    facts: Facts
    answer: CachedAnswer
    expires: float


class VectorIndex:
    """Vectors of one scope; ids are the cache's entry ids."""

    def __init__(self, dimension: int, hnsw_above: int, ef_search: int) -> None:
        self._dimension = dimension
        self._hnsw_above = hnsw_above
        self._ef_search = ef_search
        self._matrix = np.zeros((16, dimension), dtype=np.float32)
        self._ids: list[int] = []
        self._row: dict[int, int] = {}
        self._hnsw: Any = None
        self._hnsw_count = 0

    def __len__(self) -> int:
        return len(self._row)

    def add(self, entry_id: int, vector: Vector) -> None:
        if self._hnsw is not None:
            self._hnsw_add(entry_id, vector)
            return
        if len(self._ids) == len(self._matrix):
            self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
        self._row[entry_id] = len(self._ids)
        self._matrix[len(self._ids)] = vector
        self._ids.append(entry_id)
        if len(self._ids) > self._hnsw_above:
            self._to_hnsw()

    def remove(self, entry_id: int) -> None:
        row = self._row.pop(entry_id, None)
        if row is None:
            return
        if self._hnsw is not None:
            self._hnsw.mark_deleted(entry_id)
            return
        last = len(self._ids) - 1
        if row != last:  # move the last row into the hole
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._row[moved] = row
        self._ids.pop()

    def search(self, vector: Vector, k: int) -> list[tuple[int, float]]:
        if not self._row:
            return []
        if self._hnsw is not None:
            count = min(k, len(self._row))
            labels, distances = self._hnsw.knn_query(vector, k=count)
            return [(int(i), 1.0 - float(d)) for i, d in zip(labels[0], distances[0], strict=True)]
        scores = self._matrix[: len(self._ids)] @ vector
        count = min(k, len(self._ids))
        top = np.argpartition(-scores, count - 1)[:count]
        top = top[np.argsort(-scores[top])]
        return [(self._ids[i], float(scores[i])) for i in top]

    def _to_hnsw(self) -> None:
        import hnswlib

        index = hnswlib.Index(space="cosine", dim=self._dimension)
        capacity = max(1024, 2 * len(self._ids))
        index.init_index(
            max_elements=capacity, ef_construction=100, M=16, allow_replace_deleted=True
        )
        index.set_ef(self._ef_search)
        index.add_items(self._matrix[: len(self._ids)], np.array(self._ids))
        self._hnsw = index
        self._hnsw_count = capacity
        self._matrix = np.zeros((0, self._dimension), dtype=np.float32)
        self._ids = []

    def _hnsw_add(self, entry_id: int, vector: Vector) -> None:
        index = self._hnsw
        assert index is not None
        if index.get_current_count() >= self._hnsw_count:
            self._hnsw_count *= 2
            index.resize_index(self._hnsw_count)
        index.add_items(
            vector[None, :],
            np.array([entry_id]),
            replace_deleted=True,
        )
        self._row[entry_id] = 0


class MemoryCache:
    def __init__(
        self,
        settings: CacheConfig,
        dimension: int,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._dimension = dimension
        self._clock = clock
        self._on_evict = on_evict
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._exact: dict[str, int] = {}
        self._scopes: dict[str, VectorIndex] = {}
        self._next_id = 0

    def size(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._entries.clear()
        self._exact.clear()
        self._scopes.clear()

    async def lookup(
        self, request: CacheRequest, vector: Vector, threshold: float
    ) -> CacheHit | None:
        return self.lookup_now(request, vector, threshold)

    def lookup_now(
        self, request: CacheRequest, vector: Vector, threshold: float
    ) -> CacheHit | None:
        now = self._clock()
        entry_id = self._exact.get(request.exact)
        if entry_id is not None:
            entry = self._entries[entry_id]
            if entry.expires > now:
                self._entries.move_to_end(entry_id)
                return CacheHit(entry.answer, 1.0, exact=True)
            self._evict(entry_id, "ttl")
        index = self._scopes.get(request.scope)
        if index is None:
            return None
        query_facts = facts(request.text) if self._settings.second_check else None
        for candidate, similarity in index.search(vector, CANDIDATES):
            if similarity < threshold:
                break
            entry = self._entries[candidate]
            if entry.expires <= now:
                self._evict(candidate, "ttl")
                continue
            if query_facts is not None and not agree(query_facts, entry.facts):
                continue
            self._entries.move_to_end(candidate)
            return CacheHit(entry.answer, similarity, exact=False)
        return None

    async def store(self, request: CacheRequest, vector: Vector, answer: CachedAnswer) -> None:
        self.store_now(request, vector, answer)

    def store_now(self, request: CacheRequest, vector: Vector, answer: CachedAnswer) -> None:
        old = self._exact.get(request.exact)
        if old is not None:
            self._evict(old, "replaced")
        entry_id = self._next_id
        self._next_id += 1
        entry = _Entry(
            entry_id,
            request.scope,
            request.exact,
            facts(request.text),
            answer,
            self._clock() + self._settings.ttl_s,
        )
        self._entries[entry_id] = entry
        self._exact[request.exact] = entry_id
        index = self._scopes.get(request.scope)
        if index is None:
            index = VectorIndex(
                self._dimension, self._settings.hnsw_above, self._settings.hnsw_ef_search
            )
            self._scopes[request.scope] = index
        index.add(entry_id, vector)
        while len(self._entries) > self._settings.max_entries:
            self._evict(next(iter(self._entries)), "lru")

    def _evict(self, entry_id: int, reason: str) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        if self._exact.get(entry.exact) == entry_id:
            del self._exact[entry.exact]
        index = self._scopes.get(entry.scope)
        if index is not None:
            index.remove(entry_id)
            if not len(index):
                del self._scopes[entry.scope]
        if self._on_evict is not None and reason != "replaced":
            self._on_evict(reason)
