"""Active health probes.

One task per runtime probes every endpoint each ``interval_s`` (all endpoints concurrently,
so one slow endpoint cannot delay the verdict on the others). Passive signals from real
traffic go to the circuit breaker instead; the two are combined in ``Endpoint.is_available``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from mixroute.balancer.endpoint import Endpoint
from mixroute.balancer.registry import EndpointRegistry
from mixroute.config.schema import HealthCheckConfig

log = logging.getLogger(__name__)


class HealthProber:
    def __init__(
        self,
        registry: EndpointRegistry,
        settings: HealthCheckConfig,
        session: aiohttp.ClientSession,
        on_change: Callable[[Endpoint], None] | None = None,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._session = session
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.first_round_done = asyncio.Event()

    def start(self) -> None:
        if not self._settings.enabled:
            self.first_round_done.set()
            return
        self._task = asyncio.create_task(self._run(), name="health-prober")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def probe_all(self) -> None:
        endpoints = self._registry.all()
        await asyncio.gather(*(self._probe(e) for e in endpoints))

    async def _run(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:  # a bug here must not stop probing forever
                log.exception("health probe round failed")
            self.first_round_done.set()
            await asyncio.sleep(self._settings.interval_s)

    async def _probe(self, endpoint: Endpoint) -> None:
        ok = False
        reason = ""
        try:
            timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
            async with self._session.get(
                endpoint.url + self._settings.path, timeout=timeout
            ) as response:
                ok = response.status < 500
                reason = f"probe status {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = f"probe {type(exc).__name__}"
        self._record(endpoint, ok, reason)

    def _record(self, endpoint: Endpoint, ok: bool, reason: str) -> None:
        state = endpoint.state
        state.last_probe = time.monotonic()
        was_healthy = state.healthy
        if ok:
            state.probe_failures = 0
            state.probe_successes += 1
            if not state.healthy and state.probe_successes >= self._settings.healthy_after:
                state.healthy = True
        else:
            state.probe_successes = 0
            state.probe_failures += 1
            state.last_error = reason
            if state.healthy and state.probe_failures >= self._settings.unhealthy_after:
                state.healthy = False
        if state.healthy != was_healthy:
            log.warning(
                "endpoint %s is now %s (%s)",
                endpoint.name,
                "healthy" if state.healthy else "unhealthy",
                reason or "probe ok",
            )
            if self._on_change is not None:
                self._on_change(endpoint)
