"""One ``/metrics`` for all the workers of ``mixroute serve --workers N``.

The workers share one port, so a scrape reaches whichever worker the kernel hands the
connection to; with a registry per worker, Prometheus saw one worker's counters, then
another's, and every ``rate()`` was nonsense. Each worker therefore also serves its own
metrics on a unix socket in a directory the supervisor makes before it forks, and the worker
that takes a scrape asks its siblings there and answers with every worker's series, each
labelled ``worker="<index>"`` (0 to N-1: stable, bounded). Sum them away with
``sum without (worker)``.

A sibling that does not answer within ``SIBLING_TIMEOUT_S`` (busy, or gone) is left out of
that scrape rather than holding it up; ``mixroute_workers_answering`` says how many made it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

SIBLING_TIMEOUT_S = 2.0
_SOCKET = "worker-{}.sock"


class WorkerSet:
    """This worker's place among its siblings: its index and the sockets' directory."""

    def __init__(self, index: int, count: int, directory: Path) -> None:
        self.index = index
        self.count = count
        self.directory = directory
        self._runner: web.AppRunner | None = None

    def socket_path(self, index: int) -> Path:
        return self.directory / _SOCKET.format(index)

    async def serve(self, render_local: Callable[[], Awaitable[bytes]]) -> None:
        """Answer siblings' requests for this worker's own metrics."""

        async def own_metrics(request: web.Request) -> web.Response:
            return web.Response(body=await render_local())

        app = web.Application()
        app.router.add_get("/metrics", own_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path(self.index))).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def gather(self, local: bytes) -> bytes:
        """Every worker's metrics as one exposition, each series labelled with its worker."""
        others = [i for i in range(self.count) if i != self.index]
        fetched = await asyncio.gather(*(self._fetch(i) for i in others))
        texts = {str(self.index): local}
        texts.update({str(i): text for i, text in zip(others, fetched, strict=True) if text})
        return await asyncio.get_running_loop().run_in_executor(None, merge, texts)

    async def _fetch(self, index: int) -> bytes | None:
        connector = aiohttp.UnixConnector(path=str(self.socket_path(index)))
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get("http://worker/metrics") as response,
            ):
                if response.status == 200:
                    return await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("worker %d did not answer for its metrics: %r", index, exc)
        return None


class _Families:
    """A collector that hands ``generate_latest`` already-built metric families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def merge(texts: dict[str, bytes]) -> bytes:
    """One exposition from several (by worker label): a family's HELP and TYPE once, then
    every worker's samples with ``worker`` added to their labels."""
    merged: dict[str, Metric] = {}
    for worker, text in texts.items():
        for family in text_string_to_metric_families(text.decode()):
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = into
            for sample in family.samples:
                labels = {**sample.labels, "worker": worker}
                into.samples.append(sample._replace(labels=labels))
    answering = GaugeMetricFamily(
        "mixroute_workers_answering",
        "Worker processes whose metrics are in this scrape (the others timed out).",
        value=len(texts),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged.values(), answering]))
    return generate_latest(registry)
