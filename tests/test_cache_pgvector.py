"""The shared cache on a real PostgreSQL + pgvector (started by the test, via pgserver),
with two gateway processes' worth of gateways sharing it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import openai
import pytest
import yaml

from helpers import (
    RunningGateway,
    SimPool,
    config_for,
    start_gateway,
    start_gateway_process,
    wait_for_status,
)
from mixroute.cache import pgvector
from mixroute.cache.key import cache_request
from mixroute.cache.pgvector import PgvectorCache
from mixroute.cache.store import CachedAnswer
from mixroute.config.schema import CacheConfig, PgvectorConfig


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import pgserver

    server = pgserver.get_server(Path(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        with contextlib.suppress(Exception):
            server.cleanup()


def settings(dsn: str, table: str, **extra: object) -> CacheConfig:
    return CacheConfig(
        enabled=True, backend="pgvector", pgvector=PgvectorConfig(dsn=dsn, table=table), **extra
    )


def request_for(text: str, config: CacheConfig) -> object:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return cache_request(
        body, model="m", route="", tenant=None, settings=config, allow_sampled=True, text=text
    )


async def test_pgvector_exact_semantic_check_and_trim(postgres: str) -> None:
    config = settings(postgres, "unit_cache", max_entries=3)
    cache = await PgvectorCache.connect(config, dimension=4)
    try:
        answer = CachedAnswer("m", "Paris", "stop", {"total_tokens": 3})
        vector = np.array([1, 0, 0, 0], dtype=np.float32)
        stored = request_for("capital of France", config)
        await cache.store(stored, vector, answer)  # type: ignore[arg-type]
        hit = await cache.lookup(stored, vector, 0.9)  # type: ignore[arg-type]
        assert hit is not None and hit.exact and hit.answer == answer
        close = np.array([0.99, 0.1, 0, 0], dtype=np.float32)
        close /= np.linalg.norm(close)
        similar = request_for("the capital of France?", config)
        hit = await cache.lookup(similar, close, 0.9)  # type: ignore[arg-type]
        assert hit is not None and not hit.exact and hit.similarity > 0.9
        other = request_for("capital of Germany", config)  # second check: entity differs
        assert await cache.lookup(other, close, 0.9) is None  # type: ignore[arg-type]
        for index in range(5):
            await cache.store(
                request_for(f"question {index}", config),  # type: ignore[arg-type]
                np.eye(4, dtype=np.float32)[index % 4],
                answer,
            )
        assert await cache.maintain_once() == 3
        assert cache.size() == 3
    finally:
        await cache.close()


async def test_replica_starts_while_another_writes(postgres: str) -> None:
    """A replica starting on an existing table must not wait for the writes of others (nor
    make them wait): the indexes it would create already exist."""
    first = await PgvectorCache.connect(settings(postgres, "busy_cache"), dimension=4)
    writer = await asyncpg.connect(postgres)
    try:
        async with writer.transaction():  # a write in flight: ROW EXCLUSIVE on the table
            await writer.execute("DELETE FROM busy_cache WHERE id = -1")
            second = await asyncio.wait_for(
                PgvectorCache.connect(settings(postgres, "busy_cache"), dimension=4), 5
            )
            await second.close()
    finally:
        await writer.close()
        await first.close()


async def test_schema_setup_gives_up_on_a_locked_table(
    postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index is missing and the table is locked: start-up fails, naming the table, rather
    than hanging."""
    monkeypatch.setattr(pgvector, "SCHEMA_LOCK_TIMEOUT_S", 0.5)
    first = await PgvectorCache.connect(settings(postgres, "locked_cache"), dimension=4)
    await first.close()
    holder = await asyncpg.connect(postgres)
    try:
        await holder.execute("DROP INDEX locked_cache_scope")
        async with holder.transaction():
            await holder.execute("DELETE FROM locked_cache WHERE id = -1")
            with pytest.raises(RuntimeError, match="'locked_cache' stayed locked"):
                await asyncio.wait_for(
                    PgvectorCache.connect(settings(postgres, "locked_cache"), dimension=4), 5
                )
    finally:
        await holder.close()


async def test_two_gateway_processes_share_one_cache(
    postgres: str, sim_pool: SimPool, gateways: list[RunningGateway], tmp_path: Path
) -> None:
    sim = sim_pool.start("alpha", "alpha-0")
    cache = {
        "enabled": True,
        "backend": "pgvector",
        "pgvector": {"dsn": postgres, "table": "shared_cache"},
    }
    in_process = await start_gateway(config_for([sim], cache=cache))
    gateways.append(in_process)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "endpoints": [{"name": sim.name, "url": sim.url, "model": sim.model}],
                "cache": cache,
            }
        )
    )
    # In a thread: the in-process gateway shares this event loop and must keep running.
    other, base = await asyncio.to_thread(start_gateway_process, path, tmp_path / "gateway.log")
    try:
        try:
            await asyncio.to_thread(wait_for_status, f"{base}/ready", 200, timeout=60)
        except TimeoutError as exc:
            raise AssertionError((tmp_path / "gateway.log").read_text()[-3000:]) from exc
        replies = []
        for api_base in (in_process.v1, f"{base}/v1"):
            api = openai.AsyncOpenAI(base_url=api_base, api_key="k", max_retries=0)
            in_process.on_close.append(api.close)
            raw = await api.chat.completions.with_raw_response.create(
                model="alpha",
                max_tokens=8,
                messages=[{"role": "user", "content": "What does HTTP 418 mean?"}],
            )
            replies.append(
                (raw.headers["x-mixroute-cache"], raw.parse().choices[0].message.content)
            )
        assert replies[0][0] == "miss" and replies[1][0] == "hit"
        assert replies[0][1] == replies[1][1]
    finally:
        other.terminate()
        other.wait(20)


async def test_a_locked_or_broken_shared_cache_is_a_miss_not_an_error(
    postgres: str, sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    """The cache only saves work: a shared cache that hangs (a table lock) or fails (the
    table is gone) costs at most ``cache.timeout_s``; every answer still arrives, whole."""
    sim = sim_pool.start("alpha", "alpha-0")
    cache = {
        "enabled": True,
        "backend": "pgvector",
        "timeout_s": 0.5,
        "pgvector": {"dsn": postgres, "table": "fragile_cache"},
    }
    gw = await start_gateway(config_for([sim], cache=cache))
    gateways.append(gw)
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0)
    gw.on_close.append(api.close)
    errors = gw.gateway.metrics.cache_errors

    async def ask(question: str, stream: bool = False) -> str:
        messages = [{"role": "user", "content": question}]
        if stream:
            chunks = await api.chat.completions.create(
                model="alpha",
                max_tokens=8,
                messages=messages,
                stream=True,  # type: ignore[arg-type]
            )
            assert len([c async for c in chunks]) >= 8
            return "streamed"
        raw = await api.chat.completions.with_raw_response.create(
            model="alpha",
            max_tokens=8,
            messages=messages,  # type: ignore[arg-type]
        )
        assert raw.parse().choices[0].message.content
        return raw.headers["x-mixroute-cache"]

    assert await ask("What does HTTP 418 mean?") == "miss"
    assert await ask("What does HTTP 418 mean?") == "hit"
    holder = await asyncpg.connect(postgres)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE fragile_cache IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            assert await ask("What does HTTP 404 mean?") == "miss"
            await ask("What does HTTP 500 mean?", stream=True)
            # Two lookups and two stores, each given up after 0.5 s (a stream's store comes
            # just after its last chunk).
            await counted(errors, lookup=2, store=2)
            assert time.monotonic() - started < 4
        await holder.execute("DROP TABLE fragile_cache")
    finally:
        await holder.close()
    assert await ask("What does HTTP 503 mean?") == "miss"
    await ask("What does HTTP 302 mean?", stream=True)
    await counted(errors, lookup=4, store=4)


async def counted(errors: Any, **expected: int) -> None:
    """Wait (up to 3 s) until the cache error counter shows ``expected`` per operation."""
    for _ in range(300):
        seen = {op: errors.labels(op)._value.get() for op in expected}
        if seen == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"cache errors {seen}, expected {expected}")
