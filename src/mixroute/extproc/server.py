"""``mixroute extproc``: the gateway's decisions served to Envoy as an ext_proc v3 gRPC service.

The process builds one ``Gateway`` from the config (runtime, health prober, semantic router,
guards, cache, config reload: the same objects ``mixroute serve`` builds) and answers
Envoy's ``Process`` streams with it; Envoy does the proxying. ``--workers N`` forks N
processes before any event loop or gRPC object exists; each binds the same port with
SO_REUSEPORT (gRPC's default on Linux) and the kernel spreads Envoy's connections.

gRPC is imported inside the worker, after the fork: gRPC's threads do not survive a fork.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixroute.access.shared import SharedAccess
from mixroute.config.loader import ConfigError, load_config_file
from mixroute.config.schema import MixrouteConfig
from mixroute.observability.workers import SharedSequence, WorkerSet

if TYPE_CHECKING:  # the CLI imports this module to build its parser: keep that cheap
    from aiohttp import web

    from mixroute.gateway import Gateway

log = logging.getLogger(__name__)

DEFAULT_PORT = 50051
READY_PREFIX = "mixroute-extproc ready:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``extproc`` subcommand's options (the contract with ``mixroute.cli``)."""
    parser.add_argument("--config", type=Path, required=True, help="YAML config (watched)")
    parser.add_argument("--host", default="127.0.0.1", help="gRPC bind address")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="gRPC port (0: pick one, 1 worker)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    parser.add_argument(
        "--http-port",
        type=int,
        help="also serve /health, /ready and /metrics over HTTP on this port (probes, "
        "Prometheus); with --workers each process binds it with SO_REUSEPORT",
    )
    parser.add_argument(
        "--destination-endpoint",
        action="store_true",
        help="also pick the replica (the balancer's policy) and send it to Envoy in "
        "x-gateway-destination-endpoint for an ORIGINAL_DST cluster",
    )
    envoy = parser.add_argument_group("envoy bootstrap (written, then the processor starts)")
    envoy.add_argument("--envoy-config", type=Path, help="write an Envoy bootstrap YAML here")
    envoy.add_argument("--envoy-port", type=int, default=8080, help="Envoy's listener port")
    envoy.add_argument("--envoy-admin-port", type=int, default=9901, help="Envoy's admin port")
    envoy.add_argument(
        "--failure-mode-allow",
        action="store_true",
        help="in the bootstrap: when the processor is down, Envoy forwards requests unchanged "
        "(to the default model) instead of answering 500",
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        config = load_config_file(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.workers > 1 and args.port == 0:
        print("--port 0 picks a port per process: give a port with --workers", file=sys.stderr)
        return 2
    if args.envoy_config is not None:
        if args.port == 0:
            print("--envoy-config needs the processor's port: give --port", file=sys.stderr)
            return 2
        _write_envoy_config(args, config)
    options = ServeOptions(
        host=args.host,
        port=args.port,
        set_destination=args.destination_endpoint,
        reuse_port=args.workers > 1,
        http_port=args.http_port,
        shared_access=SharedAccess() if args.workers > 1 else None,
    )
    if args.workers <= 1:
        _run_worker(config, args.config, options)
        return 0
    from mixroute.server import supervise

    sockets = Path(tempfile.mkdtemp(prefix="mixroute-extproc-workers-"))  # one /metrics
    sequence = SharedSequence()
    children: list[int] = []
    for index in range(args.workers):
        siblings = WorkerSet(index, args.workers, sockets, sequence)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_worker(config, args.config, dataclasses.replace(options, siblings=siblings))
            except BaseException:
                log.exception("extproc worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    try:
        return supervise(children)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    set_destination: bool = False  # send the balancer's pick in x-gateway-destination-endpoint
    reuse_port: bool = False
    http_port: int | None = None  # /health, /ready, /metrics
    shared_access: SharedAccess | None = None  # the workers' limits (access/shared.py)
    siblings: WorkerSet | None = None  # with --workers: one /metrics for all of them


def _write_envoy_config(args: argparse.Namespace, config: MixrouteConfig) -> None:
    from mixroute.extproc.envoy_config import (
        EnvoySettings,
        clusters_from_config,
        render_bootstrap,
    )

    clusters = clusters_from_config(config)
    default = config.routing.default_model
    settings = EnvoySettings(
        listen_port=args.envoy_port,
        admin_port=args.envoy_admin_port,
        clusters=clusters,
        processor=[f"{args.host}:{args.port}"],
        default_model=default if default in clusters else None,
        failure_mode_allow=args.failure_mode_allow,
        original_dst=args.destination_endpoint,
        buffer_limit_bytes=config.server.max_body_bytes,
    )
    args.envoy_config.write_text(render_bootstrap(settings))
    print(f"wrote {args.envoy_config}", file=sys.stderr)


def _run_worker(config: MixrouteConfig, config_path: Path | None, options: ServeOptions) -> None:
    try:
        import uvloop

        uvloop.run(serve(config, config_path, options))
    except ImportError:
        asyncio.run(serve(config, config_path, options))


async def serve(
    config: MixrouteConfig,
    config_path: Path | None,
    options: ServeOptions,
    *,
    started: asyncio.Future[int] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Build the gateway, then answer Envoy until ``stop`` (or SIGINT/SIGTERM).

    The port opens only once the gateway is ready (first health round done, embedding
    model loaded), so a connectable port means a processor that answers at full speed.
    ``started`` gets the bound port.
    """
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

    from mixroute.api.app import build_sibling_app
    from mixroute.extproc.pipeline import RequestPipeline
    from mixroute.extproc.processor import ExtProcessor
    from mixroute.gateway import Gateway

    gateway = Gateway(
        config, config_path, shared_access=options.shared_access, workers=options.siblings
    )
    await gateway.start()
    server: Any = None
    probes: web.AppRunner | None = None
    try:
        await _warm_up(gateway)
        if options.http_port is not None:
            if options.siblings is not None:
                await options.siblings.serve(build_sibling_app(gateway))
            probes = await _serve_probes(gateway, options)
        limit = config.server.max_body_bytes + 1024 * 1024
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if options.reuse_port else 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        pipeline = RequestPipeline(gateway, set_destination=options.set_destination)
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
            ExtProcessor(pipeline), server
        )
        port = server.add_insecure_port(f"{options.host}:{options.port}")
        await server.start()
        print(f"{READY_PREFIX} {options.host}:{port} pid {os.getpid()}", flush=True)
        if started is not None:
            started.set_result(port)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        gateway.draining = True  # /ready answers 503 while the gRPC server stops
        if server is not None:
            await server.stop(grace=2.0)
        if probes is not None:
            await probes.cleanup()
        if gateway.workers is not None:
            await gateway.workers.close()
        await gateway.stop()
        log.info("mixroute extproc stopped")


async def _serve_probes(gateway: Gateway, options: ServeOptions) -> web.AppRunner:
    """The same /health, /ready and /metrics handlers ``mixroute serve`` has, on their own
    HTTP port: Envoy talks gRPC to the processor, Kubernetes and Prometheus talk HTTP."""
    from aiohttp import web

    from mixroute.api import ops
    from mixroute.api.keys import GATEWAY

    app = web.Application()
    app[GATEWAY] = gateway
    app.router.add_get("/health", ops.health)
    app.router.add_get("/ready", ops.ready)
    app.router.add_get("/metrics", ops.metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.http_port, reuse_port=options.reuse_port)
    await site.start()
    return runner


async def _warm_up(gateway: Gateway, timeout_s: float = 30.0) -> None:
    """First health round (so routing sees live replicas) and one embedding (model loaded)."""
    runtime = gateway.runtime
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.prober.first_round_done.wait(), timeout_s)
    config = runtime.config
    if config.semantic_enabled() or gateway.cache is not None or gateway.guards is not None:
        assets = await gateway.semantic_assets()
        await assets.engine.embed("warm up")
