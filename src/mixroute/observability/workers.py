"""What the workers of ``mixroute serve --workers N`` tell each other: one ``/metrics`` and
one dashboard for all of them.

The workers share one port, so a scrape or a dashboard poll reaches whichever worker the
kernel hands the connection to. With only its own registry and feed, that worker showed its
share of the traffic (Prometheus saw one worker's counters, then another's, and every
``rate()`` was nonsense). Each worker therefore also answers its siblings on a unix socket in
a directory the supervisor makes before it forks (``/metrics``, and the dashboard's
``/feed`` and ``/load``), and the worker that takes a request asks the others there:

- ``/metrics``: every worker's series, each labelled ``worker="<index>"`` (0 to N-1: stable,
  bounded), plus ``mixroute_workers_answering``. Sum them away with ``sum without (worker)``.
- the dashboard feed: the request records of every worker, in one sequence (``SharedSequence``
  numbers them across the workers, so a poll's ``after`` means the same everywhere).

A sibling that does not answer within ``SIBLING_TIMEOUT_S`` (busy, or gone) is left out of
that answer rather than holding it up.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
from multiprocessing.sharedctypes import RawValue
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

SIBLING_TIMEOUT_S = 2.0
LOCK_TIMEOUT_S = 1.0
_SOCKET = "worker-{}.sock"


class SharedSequence:
    """Numbers drawn by every worker (the feed's ``seq``), from shared memory.

    A worker draws a number and appends its record in one step of its event loop, and a
    sibling asking for that worker's records is answered by the same loop, so whoever reads
    ``current()`` and then asks every worker finds every record numbered up to it.
    """

    def __init__(self) -> None:
        self._value: Any = RawValue(ctypes.c_uint64, 0)
        self._lock = multiprocessing.get_context("fork").Lock()
        self._stuck = False

    def next(self) -> int:
        # As with the rate-limit lock (access/shared.py): a worker killed holding it must
        # not stop the others; numbers may then repeat, which only the dashboard would see.
        if self._stuck or not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            if not self._stuck:
                self._stuck = True
                log.error("the workers' shared sequence lock is stuck; feed numbers may repeat")
            self._value.value += 1
            return int(self._value.value)
        try:
            self._value.value += 1
            return int(self._value.value)
        finally:
            self._lock.release()

    def current(self) -> int:
        return int(self._value.value)


class WorkerSet:
    """This worker's place among its siblings: its index, the sockets' directory, the shared
    sequence, and the supervisor's pid (what the dashboard calls the feed's ``worker``)."""

    def __init__(self, index: int, count: int, directory: Path, sequence: SharedSequence) -> None:
        self.index = index
        self.count = count
        self.directory = directory
        self.sequence = sequence
        self.gateway_id = os.getpid()  # made before the fork: the supervisor's pid
        self._runner: web.AppRunner | None = None

    def socket_path(self, index: int) -> Path:
        return self.directory / _SOCKET.format(index)

    async def serve(self, app: web.Application) -> None:
        """Answer the siblings with ``app`` (api/app.py ``build_sibling_app``) on this
        worker's unix socket."""
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path(self.index))).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def ask_others(self, path: str) -> dict[int, bytes]:
        """``GET path`` from every other worker at once; those that answer 200 in time."""
        others = [i for i in range(self.count) if i != self.index]
        answers = await asyncio.gather(*(self._fetch(i, path) for i in others))
        return {i: body for i, body in zip(others, answers, strict=True) if body is not None}

    async def gather_metrics(self, local: bytes) -> bytes:
        """Every worker's metrics as one exposition, each series labelled with its worker."""
        texts = {str(i): text for i, text in (await self.ask_others("/metrics")).items()}
        texts[str(self.index)] = local
        return await asyncio.get_running_loop().run_in_executor(None, merge, texts)

    async def _fetch(self, index: int, path: str) -> bytes | None:
        connector = aiohttp.UnixConnector(path=str(self.socket_path(index)))
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get(f"http://worker{path}") as response,
            ):
                if response.status == 200:
                    return await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("worker %d did not answer %s: %r", index, path, exc)
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
