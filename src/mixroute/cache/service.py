"""The cache as the request path sees it: per-route settings, lookup, store, metrics.

The cache only ever saves work, so its failures never reach a client: a lookup that fails
or takes longer than ``cache.timeout_s`` (a shared PostgreSQL that is down, locked or
slow) is a miss, a store that fails is dropped; both are counted and logged (at most one
warning per ``WARN_EVERY_S``, with how many were left unsaid).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from mixroute.cache.key import CacheRequest
from mixroute.cache.memory import MemoryCache
from mixroute.cache.pgvector import PgvectorCache
from mixroute.cache.store import CachedAnswer, CacheHit, SemanticCache
from mixroute.config.schema import CacheConfig, RouteConfig
from mixroute.observability.metrics import Metrics
from mixroute.semantic.embedding import Vector

log = logging.getLogger(__name__)

WARN_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class CachePolicy:
    enabled: bool
    threshold: float
    allow_sampled: bool


class CacheService:
    def __init__(self, settings: CacheConfig, backend: SemanticCache, metrics: Metrics) -> None:
        self.settings = settings
        self._backend = backend
        self._metrics = metrics
        self._warned_at = -WARN_EVERY_S
        self._unsaid = 0

    @classmethod
    async def build(cls, settings: CacheConfig, dimension: int, metrics: Metrics) -> CacheService:
        backend: SemanticCache
        if settings.backend == "pgvector":
            backend = await PgvectorCache.connect(settings, dimension)
        else:
            backend = MemoryCache(
                settings,
                dimension,
                on_evict=lambda reason: metrics.cache_evictions.labels(reason).inc(),
            )
        return cls(settings, backend, metrics)

    def fits(self, settings: CacheConfig) -> bool:
        """Whether a reloaded config can keep this cache (and its entries)."""
        return settings == self.settings

    async def close(self) -> None:
        await self._backend.close()

    def policy(self, route: RouteConfig | None) -> CachePolicy:
        override = route.cache if route is not None else None
        enabled = self.settings.enabled
        threshold = self.settings.similarity_threshold
        allow_sampled = self.settings.allow_sampled
        if override is not None:
            enabled = override.enabled if override.enabled is not None else enabled
            if override.similarity_threshold is not None:
                threshold = override.similarity_threshold
            if override.allow_sampled is not None:
                allow_sampled = override.allow_sampled
        return CachePolicy(enabled, threshold, allow_sampled)

    async def lookup(
        self, request: CacheRequest, vector: Vector, threshold: float
    ) -> CacheHit | None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                hit = await self._backend.lookup(request, vector, threshold)
        except Exception as exc:  # any backend failure is a miss
            self._failed("lookup", exc)
            hit = None
        self._metrics.cache_lookup_duration.observe(time.perf_counter() - started)
        self._metrics.cache_lookups.labels("hit" if hit else "miss").inc()
        return hit

    async def store(self, request: CacheRequest, vector: Vector, answer: CachedAnswer) -> None:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await self._backend.store(request, vector, answer)
        except Exception as exc:  # the answer was served; only its copy is lost
            self._failed("store", exc)
            return
        self._metrics.cache_stores.inc()
        self._metrics.cache_entries.set(self._backend.size())

    def _failed(self, operation: str, exc: Exception) -> None:
        self._metrics.cache_errors.labels(operation).inc()
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_S:
            self._unsaid += 1
            return
        reason = "timed out" if isinstance(exc, TimeoutError) else f"failed ({exc!r:.200})"
        also = f"; {self._unsaid} more since the last warning" if self._unsaid else ""
        log.warning("cache %s %s: served as a miss%s", operation, reason, also)
        self._warned_at, self._unsaid = now, 0

    def size(self) -> int:
        """Entries held (this process's view; pgvector: as of its last maintenance run)."""
        return self._backend.size()

    def count_bypass(self) -> None:
        self._metrics.cache_lookups.labels("bypass").inc()
