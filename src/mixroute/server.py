"""Run the gateway: one process, or N worker processes sharing a port with SO_REUSEPORT.

Workers are forked before any event loop exists, so each builds its own loop, session,
runtime and metrics. What that means for routing state is in docs/architecture.md. Two
things cross the process line: access control's rate-limit buckets and in-flight counts
(shared memory, access/shared.py), and ``/metrics`` and the dashboard, which any worker
answers for all of them (observability/workers.py).

Shutdown (SIGTERM, SIGINT) drains: the listening socket is closed at once (new connections
are refused), idle keep-alive connections are closed, ``/ready`` answers 503, and requests
and streams in flight get up to ``server.drain_s`` to finish. What is still open then is
cut: a stream ends with an SSE error event and ``[DONE]``, a request still waiting for its
upstream gets a 503. A second signal cuts at once. With ``--workers N`` the supervisor
forwards each signal as one SIGTERM to every worker (workers ignore the terminal's SIGINT,
so one Ctrl-C is one drain and a second one is the cut, as in one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

from aiohttp import web

from mixroute.access.shared import SharedAccess
from mixroute.api.app import build_app, build_sibling_app
from mixroute.config.schema import MixrouteConfig
from mixroute.gateway import Gateway
from mixroute.observability.workers import SharedSequence, WorkerSet

log = logging.getLogger(__name__)

# After the cut: how long cut handlers get to write their last event before aiohttp's
# cleanup cancels whatever is left (and, per connection, as long again to let it unwind).
CUT_GRACE_S = 1.0


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
    shared = SharedAccess()  # before the fork: every worker maps it
    sockets = Path(tempfile.mkdtemp(prefix="mixroute-workers-"))  # observability/workers.py
    sequence = SharedSequence()
    children: list[int] = []
    for index in range(workers):
        siblings = WorkerSet(index, workers, sockets, sequence)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                # Ctrl-C reaches the whole process group; the supervisor forwards it as
                # SIGTERM, so a worker that also acted on it would count two signals (a cut).
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                _run_worker(
                    config,
                    config_path,
                    host,
                    port,
                    reuse_port=True,
                    shared=shared,
                    siblings=siblings,
                )
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    try:
        return supervise(children)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def supervise(children: list[int]) -> int:
    """Forward SIGINT/SIGTERM to the workers (as SIGTERM: the first drains them, a second
    cuts what is left) and wait for all of them."""

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
    config: MixrouteConfig,
    config_path: Path | None,
    host: str,
    port: int,
    *,
    reuse_port: bool,
    shared: SharedAccess | None = None,
    siblings: WorkerSet | None = None,
) -> None:
    signals = (signal.SIGTERM,) if reuse_port else (signal.SIGINT, signal.SIGTERM)
    serve = serve_until_stopped(
        config,
        config_path,
        host,
        port,
        reuse_port=reuse_port,
        signals=signals,
        shared_access=shared,
        siblings=siblings,
    )
    try:
        import uvloop

        uvloop.run(serve)
    except ImportError:  # uvloop is a dependency, but the gateway must still run without it
        asyncio.run(serve)


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
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
    shared_access: SharedAccess | None = None,
    siblings: WorkerSet | None = None,
) -> None:
    """Serve until ``stop`` is set (or one of ``signals`` arrives), then drain and exit."""
    gateway = Gateway(config, config_path, shared_access=shared_access, workers=siblings)
    runner = web.AppRunner(
        build_app(gateway),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=CUT_GRACE_S,
    )
    await runner.setup()
    if siblings is not None:
        await siblings.serve(build_sibling_app(gateway))
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=2048)
    await site.start()
    server = site._server  # the bound port, which differs from ``port`` when that was 0
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    log.info("mixroute listening on http://%s:%d (pid %d)", host, bound, os.getpid())
    settle_garbage_collector()
    stop = stop or asyncio.Event()
    cut = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (cut if stop.is_set() else stop).set()

    for signum in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal)
    if started is not None:
        started.set()
    try:
        await stop.wait()
        await drain(runner, gateway, config.server.drain_s, cut)
    finally:
        await runner.cleanup()
        if siblings is not None:
            await siblings.close()
        for signum in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        log.info("mixroute stopped")


async def drain(
    runner: web.AppRunner, gateway: Gateway, drain_s: float, cut: asyncio.Event
) -> None:
    """Stop taking work, give what is in flight ``drain_s`` to finish, then cut the rest.

    aiohttp's per-connection shutdown does the waiting: it closes idle keep-alive
    connections at once and waits for busy ones. At its deadline, though, it cancels
    handlers without letting them answer, and a stream just stops mid-body; so at
    ``drain_s`` (or on a second signal) the forwarder cuts what it relays first, and every
    stream ends with an error event the client can read. ``runner.cleanup`` afterwards only
    sweeps what is left.
    """
    gateway.draining = True
    for site in list(runner.sites):
        await site.stop()  # the listening socket closes now: new connections are refused
    server = runner.server
    if server is None:
        return
    await asyncio.sleep(0)  # requests that arrived just before start being handled
    log.info(
        "draining: listener closed, %d connection(s) open, up to %gs",
        len(server.connections),
        drain_s,
    )
    # Per connection: idle ones close now, busy ones after their response (or at drain_s).
    server.pre_shutdown()
    shutdown = asyncio.create_task(server.shutdown(drain_s))
    interrupted = asyncio.create_task(cut.wait())
    await asyncio.wait(
        {shutdown, interrupted}, timeout=drain_s, return_when=asyncio.FIRST_COMPLETED
    )
    interrupted.cancel()
    if shutdown.done():
        log.info("drained: every request in flight finished")
        return
    cut_now = gateway.forwarder.cut_all()
    log.warning(
        "drain %s: cutting %d forwarded request(s) of %d open connection(s)",
        "interrupted by a second signal" if cut.is_set() else f"time ({drain_s:g}s) is up",
        cut_now,
        len(server.connections),
    )
    await asyncio.wait({shutdown}, timeout=CUT_GRACE_S)
    if not shutdown.done():  # not forwarded and still busy: runner.cleanup cancels it
        shutdown.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shutdown
