"""Run the gateway: one process, or N worker processes sharing a port with SO_REUSEPORT.

Workers are forked before any event loop exists, so each builds its own loop, session,
runtime and metrics. What that means for routing state is in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from mixroute.api.app import build_app
from mixroute.config.schema import MixrouteConfig
from mixroute.gateway import Gateway

log = logging.getLogger(__name__)


def run_server(
    config: MixrouteConfig,
    *,
    config_path: Path | None,
    host: str,
    port: int,
    workers: int = 1,
) -> int:
    if workers <= 1:
        _run_worker(config, config_path, host, port, reuse_port=False)
        return 0
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_worker(config, config_path, host, port, reuse_port=True)
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    return supervise(children)


def supervise(children: list[int]) -> int:
    """Forward SIGINT/SIGTERM to the workers and wait for all of them."""

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for pid in children:
        while True:
            try:
                _, code = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        if code:
            status = 1
            forward(signal.SIGTERM, None)
    return status


def _run_worker(
    config: MixrouteConfig, config_path: Path | None, host: str, port: int, *, reuse_port: bool
) -> None:
    try:
        import uvloop

        uvloop.run(serve_until_stopped(config, config_path, host, port, reuse_port=reuse_port))
    except ImportError:  # uvloop is a dependency, but the gateway must still run without it
        asyncio.run(serve_until_stopped(config, config_path, host, port, reuse_port=reuse_port))


def settle_garbage_collector() -> None:
    """Stop the collector from re-walking start-up objects on every full collection.

    Profiling under load (docs/benchmarks.md) found 15% of the gateway's CPU in the cyclic
    collector and no cyclic garbage to free: full collections walked the ~75k long-lived
    objects built at start (config models, aiohttp, prometheus), young collections ran every
    700 allocations. Freezing what exists once the server listens, and collecting the young
    generation less often, keeps the collector for real cycles only.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def serve_until_stopped(
    config: MixrouteConfig,
    config_path: Path | None,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    gateway = Gateway(config, config_path)
    runner = web.AppRunner(build_app(gateway), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=2048)
    await site.start()
    server = site._server  # the bound port, which differs from ``port`` when that was 0
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    log.info("mixroute listening on http://%s:%d (pid %d)", host, bound, os.getpid())
    settle_garbage_collector()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("mixroute stopped")
