"""Engine statistics scraped from each endpoint's Prometheus ``/metrics``.

vLLM renamed its metrics once (``gpu_cache_usage_perc`` -> ``kv_cache_usage_perc``,
``gpu_prefix_cache_*`` -> ``prefix_cache_*``); both generations are read. Scraping is one
async task per runtime, every endpoint concurrently, with a timeout, and the parse is a
plain line scan of the few series used: never a blocking call on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp

from mixroute.balancer.endpoint import Endpoint
from mixroute.balancer.registry import EndpointRegistry

log = logging.getLogger(__name__)

_RUNNING = ("vllm:num_requests_running",)
_WAITING = ("vllm:num_requests_waiting",)
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_PREFIX_QUERIES = (
    "vllm:prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_queries_total",
    "vllm:prefix_cache_queries",
    "vllm:gpu_prefix_cache_queries",
)
_PREFIX_HITS = (
    "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_hits_total",
    "vllm:prefix_cache_hits",
    "vllm:gpu_prefix_cache_hits",
)


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: float
    waiting: float
    kv_usage: float  # 0..1
    prefix_hit_rate: float | None  # hits / queries since the previous scrape
    scraped_at: float
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0


def _sum(samples: dict[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:  # the first generation found wins, never both
        if name in samples:
            return samples[name]
    return None


def parse_engine_metrics(text: str, previous: EngineStats | None = None) -> EngineStats | None:
    """The engine's load from vLLM-style metrics text, summed over label sets; None if the
    text has no vLLM series at all."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = line.find("{")
        space = line.rfind(" ")
        if space <= 0:
            continue
        name = line[: name_end if 0 < name_end < space else space].strip()
        try:
            value = float(line[space + 1 :])
        except ValueError:
            continue
        samples[name] = samples.get(name, 0.0) + value
    running = _sum(samples, _RUNNING)
    waiting = _sum(samples, _WAITING)
    if running is None and waiting is None:
        return None
    queries = _sum(samples, _PREFIX_QUERIES) or 0.0
    hits = _sum(samples, _PREFIX_HITS) or 0.0
    rate = None
    if previous is not None and queries > previous.prefix_queries:
        rate = (hits - previous.prefix_hits) / (queries - previous.prefix_queries)
    return EngineStats(
        running=running or 0.0,
        waiting=waiting or 0.0,
        kv_usage=min(max(_sum(samples, _KV_USAGE) or 0.0, 0.0), 1.0),
        prefix_hit_rate=rate,
        scraped_at=time.monotonic(),
        prefix_queries=queries,
        prefix_hits=hits,
    )


class StatsScraper:
    def __init__(
        self,
        registry: EndpointRegistry,
        session: aiohttp.ClientSession,
        interval_s: float,
        timeout_s: float,
        path: str = "/metrics",
    ) -> None:
        self._registry = registry
        self._session = session
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._path = path
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-stats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self._scrape(e) for e in self._registry.all()))

    async def _run(self) -> None:
        while True:
            await self.scrape_all()
            await asyncio.sleep(self._interval_s)

    async def _scrape(self, endpoint: Endpoint) -> None:
        try:
            async with self._session.get(endpoint.url + self._path, timeout=self._timeout) as r:
                text = await r.text() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
            text = None
        # Unreadable stats are forgotten, not kept: the policies and /metrics read this.
        endpoint.state.engine = (
            parse_engine_metrics(text, endpoint.state.engine) if text is not None else None
        )
