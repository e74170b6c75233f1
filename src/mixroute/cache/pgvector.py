"""Shared cache backend: PostgreSQL + pgvector, so several gateway replicas share answers.

One table (created on first use) with an HNSW cosine index on the embedding and a b-tree on
(scope, exact). Lookups filter by scope and expiry; a background task deletes expired rows
and trims the table to ``max_entries`` by least recent use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
import orjson

from mixroute.cache.check import agree, facts
from mixroute.cache.key import CacheRequest
from mixroute.cache.store import CachedAnswer, CacheHit
from mixroute.config.schema import CacheConfig, PgvectorConfig
from mixroute.semantic.embedding import Vector

log = logging.getLogger(__name__)

CANDIDATES = 4
MAINTENANCE_INTERVAL_S = 30.0
# How long schema setup may wait for a table lock before start-up fails with a clear error.
SCHEMA_LOCK_TIMEOUT_S = 10.0


def _vector_literal(vector: Vector) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in vector.tolist()) + "]"


async def _ensure_schema(connection: Any, table: str, dimension: int) -> None:
    """Create what is missing, and only that.

    ``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock on the table before it looks for the
    index, so on a table other replicas are writing to it waits for their writes, and every
    write queued behind it waits too: one replica starting would stall the whole fleet's
    cache. Existing indexes are therefore looked up in the catalogue first, and the lock wait
    is bounded.
    """
    indexes = {
        f"{table}_exact": f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_exact ON {table} (exact)",
        f"{table}_scope": f"CREATE INDEX IF NOT EXISTS {table}_scope ON {table} (scope)",
        f"{table}_hnsw": f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} "
        "USING hnsw (embedding vector_cosine_ops)",
    }
    async with connection.transaction():
        await connection.execute(
            f"SET LOCAL lock_timeout = '{int(SCHEMA_LOCK_TIMEOUT_S * 1000)}ms'"
        )
        try:
            if not await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')"
            ):
                await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                " id bigserial PRIMARY KEY, scope text NOT NULL, exact text NOT NULL,"
                f" text text NOT NULL, embedding vector({dimension}) NOT NULL,"
                " answer jsonb NOT NULL, expires_at timestamptz NOT NULL,"
                " last_used timestamptz NOT NULL DEFAULT now())"
            )
            for name, create in indexes.items():
                if await connection.fetchval("SELECT to_regclass($1) IS NULL", name):
                    await connection.execute(create)
        except asyncpg.LockNotAvailableError as exc:
            raise RuntimeError(
                f"cache.pgvector: table {table!r} stayed locked for "
                f"{SCHEMA_LOCK_TIMEOUT_S:.0f}s while its indexes were created; "
                "another session holds a lock on it"
            ) from exc


class PgvectorCache:
    def __init__(self, settings: CacheConfig, pool: Any, table: str) -> None:
        self._settings = settings
        self._pool = pool
        self._table = table
        self._maintenance: asyncio.Task[None] | None = None
        self._size = 0

    @classmethod
    async def connect(cls, settings: CacheConfig, dimension: int) -> PgvectorCache:
        pg: PgvectorConfig | None = settings.pgvector
        assert pg is not None
        pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=pg.pool_size)
        try:
            async with pool.acquire() as connection:
                try:
                    await _ensure_schema(connection, pg.table, dimension)
                except (asyncpg.UniqueViolationError, asyncpg.DuplicateObjectError):
                    # Two replicas creating the same table or index at the same moment: one
                    # of them loses the race on the catalogue; what it wanted now exists.
                    await _ensure_schema(connection, pg.table, dimension)
        except BaseException:
            await pool.close()
            raise
        cache = cls(settings, pool, pg.table)
        cache._maintenance = asyncio.create_task(cache._maintain(), name="pgvector-maintenance")
        return cache

    def size(self) -> int:
        return self._size

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self._pool.close()

    async def lookup(
        self, request: CacheRequest, vector: Vector, threshold: float
    ) -> CacheHit | None:
        t = self._table
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow(
                f"UPDATE {t} SET last_used = now() WHERE exact = $1 AND expires_at > now() "
                "RETURNING answer",
                request.exact,
            )
            if row is not None:
                return CacheHit(CachedAnswer.from_json(orjson.loads(row["answer"])), 1.0, True)
            rows = await connection.fetch(
                f"SELECT id, text, answer, 1 - (embedding <=> $2::vector) AS similarity "
                f"FROM {t} WHERE scope = $1 AND expires_at > now() "
                "ORDER BY embedding <=> $2::vector LIMIT $3",
                request.scope,
                _vector_literal(vector),
                CANDIDATES,
            )
            query_facts = facts(request.text) if self._settings.second_check else None
            for candidate in rows:
                if candidate["similarity"] < threshold:
                    break
                if query_facts is not None and not agree(query_facts, facts(candidate["text"])):
                    continue
                await connection.execute(
                    f"UPDATE {t} SET last_used = now() WHERE id = $1", candidate["id"]
                )
                answer = CachedAnswer.from_json(orjson.loads(candidate["answer"]))
                return CacheHit(answer, float(candidate["similarity"]), False)
        return None

    async def store(self, request: CacheRequest, vector: Vector, answer: CachedAnswer) -> None:
        async with self._pool.acquire() as connection:
            await connection.execute(
                f"INSERT INTO {self._table} (scope, exact, text, embedding, answer, expires_at) "
                "VALUES ($1, $2, $3, $4::vector, $5::jsonb, now() + make_interval(secs => $6)) "
                "ON CONFLICT (exact) DO UPDATE SET answer = EXCLUDED.answer, "
                "expires_at = EXCLUDED.expires_at, last_used = now()",
                request.scope,
                request.exact,
                request.text,
                _vector_literal(vector),
                orjson.dumps(answer.to_json()).decode(),
                self._settings.ttl_s,
            )

    async def _maintain(self) -> None:
        while True:
            try:
                await self.maintain_once()
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("pgvector cache maintenance failed: %s", type(exc).__name__)
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)

    async def maintain_once(self) -> int:
        """Delete expired rows and trim to max_entries; returns the rows removed."""
        t = self._table
        async with self._pool.acquire() as connection:
            expired = await connection.execute(f"DELETE FROM {t} WHERE expires_at <= now()")
            trimmed = await connection.execute(
                f"DELETE FROM {t} WHERE id IN (SELECT id FROM {t} ORDER BY last_used DESC "
                "OFFSET $1)",
                self._settings.max_entries,
            )
            self._size = int(await connection.fetchval(f"SELECT count(*) FROM {t}"))
        return int(expired.split()[-1]) + int(trimmed.split()[-1])
