"""The aiohttp application of the simulator, and a runner to serve it on a socket.

``build_app`` wires one engine, one fault injector and the handlers into a fresh
application (no module-level state, so a test process can host many replicas).
``SimServer`` serves an app on a real port, with handler cancellation on so that a client
that disconnects frees its batch slot, as vLLM aborts requests of dropped connections.

Every response carries ``x-sim-replica`` (``--replica-name``, default ``host:port``) so
tests behind a gateway can see which replica served them.

With ``kv_events_port`` set, the prefix cache's changes are published as vLLM's KV events
(``kv_events``; pyzmq and msgpack are imported only then), and ``POST /reset_prefix_cache``
clears the cache as vLLM's does (which then publishes ``AllBlocksCleared``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import web

from mixroute.sim.engine import Engine
from mixroute.sim.faults import FaultInjector
from mixroute.sim.handlers import SimHandlers, json_response
from mixroute.sim.protocol import SimError
from mixroute.sim.settings import SimSettings

if TYPE_CHECKING:
    from mixroute.sim.kv_events import KVEventPublisher

HEADER_REPLICA = "x-sim-replica"
# Paths that answer during slow start: a scraper should see the replica, not an error.
_ALWAYS_OPEN = frozenset({"/metrics"})

logger = logging.getLogger("mixroute.sim")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReplicaName:
    """The replica's display name; settled once the listening port is known."""

    def __init__(self, value: str) -> None:
        self.value = value


SETTINGS_KEY = web.AppKey("mixroute_sim_settings", SimSettings)
ENGINE_KEY = web.AppKey("mixroute_sim_engine", Engine)
FAULTS_KEY = web.AppKey("mixroute_sim_faults", FaultInjector)
REPLICA_KEY = web.AppKey("mixroute_sim_replica", ReplicaName)


class KVEvents:
    """The app's KV-event publisher, if the settings ask for one."""

    def __init__(self, publisher: KVEventPublisher | None) -> None:
        self.publisher = publisher


KV_EVENTS_KEY = web.AppKey("mixroute_sim_kv_events", KVEvents)


def _default_replica_name(host: str, port: int) -> str:
    return f"{host}:{port}"


def _kv_event_publisher(settings: SimSettings, replica: ReplicaName) -> KVEventPublisher | None:
    if settings.kv_events_port is None:
        return None
    from mixroute.sim.kv_events import KVEventPublisher, default_topic

    def topic() -> str:
        if settings.kv_events_topic is not None:
            return settings.kv_events_topic
        return default_topic(replica.value, settings.model)

    return KVEventPublisher(
        host=settings.host,
        port=settings.kv_events_port,
        replay_port=settings.kv_events_replay_port,
        topic=topic,
        block_size=settings.block_size,
        encoding=settings.kv_events_encoding,
        buffer_steps=settings.kv_events_buffer_steps,
    )


def build_app(settings: SimSettings) -> web.Application:
    """A ready-to-run simulator application for ``settings``."""
    replica = ReplicaName(
        settings.replica_name or _default_replica_name(settings.host, settings.port)
    )
    publisher = _kv_event_publisher(settings, replica)
    engine = Engine(settings, publisher)
    faults = FaultInjector(settings)

    @web.middleware
    async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Render ``SimError`` and unexpected failures as OpenAI-shaped JSON errors."""
        try:
            return await handler(request)
        except SimError as exc:
            return json_response(exc.body(), status=exc.status)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            logger.exception("unexpected error in %s %s", request.method, request.path)
            error = SimError(500, "Internal simulator error.", "InternalServerError")
            return json_response(error.body(), status=500)

    @web.middleware
    async def slow_start_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse everything but /metrics while the replica is still "loading" or, when it
        flaps, in a down phase."""
        now = asyncio.get_running_loop().time()
        if request.path not in _ALWAYS_OPEN:
            message = None
            if faults.warming_up(now):
                message = "The model is still loading."
            elif faults.flapped_down(now):
                message = "The engine is down (simulated flapping)."
            if message is not None:
                error = SimError(503, message, "ServiceUnavailableError")
                return json_response(error.body(), status=503)
        return await handler(request)

    async def on_startup(app: web.Application) -> None:
        faults.mark_started(asyncio.get_running_loop().time())
        if publisher is not None:
            await publisher.start()

    async def on_cleanup(app: web.Application) -> None:
        if publisher is not None:
            await publisher.close()

    async def reset_prefix_cache(request: web.Request) -> web.Response:
        """vLLM's ``POST /reset_prefix_cache``: 200 with an empty body."""
        engine.reset_prefix_cache()
        return web.Response(status=200)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[HEADER_REPLICA] = replica.value

    app = web.Application(middlewares=[slow_start_middleware, errors_middleware])
    app[SETTINGS_KEY] = settings
    app[ENGINE_KEY] = engine
    app[FAULTS_KEY] = faults
    app[REPLICA_KEY] = replica
    app[KV_EVENTS_KEY] = KVEvents(publisher)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.on_response_prepare.append(on_prepare)
    app.router.add_post("/reset_prefix_cache", reset_prefix_cache)
    SimHandlers(settings, engine, faults).register(app)
    return app


class SimServer:
    """Serve a simulator on ``settings.host:settings.port`` (0 picks a free port).

    Usage::

        async with SimServer(SimSettings(model="m")) as sim:
            ...  # talk to sim.url
    """

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.app = build_app(settings)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulator is not started")
        return f"http://{self.settings.host}:{self.port}"

    @property
    def engine(self) -> Engine:
        return self.app[ENGINE_KEY]

    @property
    def replica_name(self) -> str:
        return self.app[REPLICA_KEY].value

    @property
    def kv_events(self) -> KVEventPublisher | None:
        """The KV-event publisher (its ``pub_address``/``replay_address`` once started)."""
        return self.app[KV_EVENTS_KEY].publisher

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            shutdown_timeout=self.settings.shutdown_timeout_s,
            access_log=None,
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        await site.start()
        address = runner.addresses[0]
        self.port = int(address[1])
        if self.settings.replica_name is None:
            self.app[REPLICA_KEY].value = _default_replica_name(self.settings.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
