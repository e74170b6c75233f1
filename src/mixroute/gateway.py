"""The gateway object: the one place where the process's long-lived parts are built.

It owns the upstream ``ClientSession``, the metrics registry, the config watcher and the
current ``Runtime``; handlers reach it through the aiohttp app.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from mixroute.access.service import AccessControl
from mixroute.access.shared import SharedAccess
from mixroute.balancer.discovery.kubernetes import DiscoveryError, KubernetesDiscovery
from mixroute.cache.service import CacheService
from mixroute.config.loader import ConfigError
from mixroute.config.schema import EndpointConfig, GuardsConfig, MixrouteConfig
from mixroute.config.watcher import ConfigWatcher
from mixroute.guards.service import GuardService
from mixroute.observability.feed import DecisionFeed
from mixroute.observability.logs import RequestLogger
from mixroute.observability.metrics import Metrics
from mixroute.observability.recorder import RequestRecorder
from mixroute.observability.tracing import NO_TRACING, Tracing, build_tracing
from mixroute.observability.workers import WorkerSet
from mixroute.proxy.forward import Forwarder
from mixroute.runtime import Runtime
from mixroute.semantic.assets import SemanticAssets, load_assets
from mixroute.semantic.router import SemanticRouter

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

log = logging.getLogger(__name__)


class Gateway:
    def __init__(
        self,
        config: MixrouteConfig,
        config_path: Path | None = None,
        span_processor: SpanProcessor | None = None,
        shared_access: SharedAccess | None = None,
        workers: WorkerSet | None = None,
    ) -> None:
        """``span_processor`` replaces the OTLP exporter of tracing (tests record in memory);
        ``shared_access`` and ``workers``: what this worker shares with the other
        ``--workers`` (rate-limit levels and in-flight counts; the sockets and sequence of
        one /metrics and one dashboard, observability/workers.py)."""
        self.tracing: Tracing = NO_TRACING
        self._span_processor = span_processor
        self.metrics = Metrics()
        self.recorder = RequestRecorder(
            self.metrics,
            DecisionFeed(sequence=workers.sequence.next if workers is not None else None),
            RequestLogger(lambda: self.runtime.config.observability.logs),
        )
        self._initial_config = config
        self._config_path = config_path
        self._session: aiohttp.ClientSession | None = None
        self._runtime: Runtime | None = None
        self._forwarder: Forwarder | None = None
        self._watcher: ConfigWatcher | None = None
        self._assets: SemanticAssets | None = None
        self.cache: CacheService | None = None
        self.guards: GuardService | None = None
        self._api_guards: GuardService | None = None
        self._assets_lock = asyncio.Lock()
        self._discovery: KubernetesDiscovery | None = None
        # Set on SIGTERM/SIGINT (server.drain): /ready answers 503 so that load balancers
        # stop sending while the requests in flight finish.
        self.draining = False
        self.workers = workers
        # Keys, rate-limit buckets and admission gates: rebuilt on every reload from the
        # previous one, so unchanged keys keep their windows (access/service.py).
        self._shared_access = shared_access
        self.access = AccessControl(
            config.access, list(config.access.keys), config.aliases(), {}, shared=shared_access
        )

    def runtime_config_max_body(self) -> int:
        """The body limit is fixed at start (aiohttp reads it once); reloads cannot raise it."""
        return self._initial_config.server.max_body_bytes

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "gateway not started"
        return self._runtime

    @property
    def forwarder(self) -> Forwarder:
        assert self._forwarder is not None, "gateway not started"
        return self._forwarder

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "gateway not started"
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        self._forwarder = Forwarder(self._session, self.metrics)
        self.tracing = build_tracing(
            self._initial_config.observability.tracing, self._span_processor
        )
        self._runtime = await self._build_runtime(self._initial_config, previous=None)
        await self._update_discovery(self._initial_config)
        self._runtime.start()
        if self._config_path is not None:
            self._watcher = ConfigWatcher(
                self._config_path,
                self._initial_config.server.reload_interval_s,
                self.apply_config,
                self._reload_rejected,
            )
            self._watcher.start()

    async def stop(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
        if self._discovery is not None:
            await self._discovery.stop()
        if self._runtime is not None:
            await self._runtime.stop()
        if self._session is not None:
            await self._session.close()
        if self._assets is not None:
            self._assets.close()
        if self.cache is not None:
            await self.cache.close()
        for guards in (self.guards, self._api_guards):
            if guards is not None:
                guards.close()
        await self.tracing.shutdown()

    async def apply_config(self, config: MixrouteConfig) -> None:
        """Swap in a runtime built from ``config``; requests in flight keep the old one."""
        old = self.runtime
        try:
            new = await self._build_runtime(config, previous=old)
        except Exception as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self._reload_rejected(ConfigError(str(exc)))
            return
        if old.prober.first_round_done.is_set():
            new.prober.first_round_done.set()
        # No await between this sync and the swap: no discovery change can fall in between.
        self._sync_discovered(new, previous=old)
        new.start()
        self._runtime = new
        try:
            await self._update_discovery(config)
        except DiscoveryError as exc:
            log.error("kubernetes discovery could not start: %s", exc)
        self.metrics.config_reloads.labels("applied").inc()
        await old.stop()

    async def semantic_assets(self, config: MixrouteConfig | None = None) -> SemanticAssets:
        """The embedding engine and heads, loaded on first use and reused across reloads."""
        config = config or self.runtime.config
        async with self._assets_lock:
            return await self._load_assets_unlocked(config)

    async def _load_assets_unlocked(self, config: MixrouteConfig) -> SemanticAssets:
        current = self._assets
        if current is not None and current.fits(config.semantic.embedding, config.signals):
            return current
        fresh = await asyncio.to_thread(load_assets, config.semantic.embedding, config.signals)
        self._assets = fresh
        if current is not None:
            current.close()
        return fresh

    async def _build_runtime(self, config: MixrouteConfig, previous: Runtime | None) -> Runtime:
        access = await AccessControl.build(
            config, self._config_path, previous=self.access, shared=self._shared_access
        )
        runtime = Runtime(config, self.session, self.metrics, previous=previous)
        if config.semantic_enabled():
            assets = await self.semantic_assets(config)
            runtime.router = await SemanticRouter.build(config, assets.engine, assets.domain_head)
        await self._update_cache(config)
        await self._update_guards(config)
        self.access = access
        return runtime

    async def guard_service_for_api(self) -> GuardService:
        """Guards for the classify API: the running ones, or (first use) both detectors with
        default settings, so the API answers even when the request path has guards off."""
        current = self.guards
        if current is not None and current.pii is not None and current.jailbreak is not None:
            return current
        async with self._assets_lock:
            if self._api_guards is None:
                engine = (await self._load_assets_unlocked(self.runtime.config)).engine
                settings = GuardsConfig(
                    pii=self.runtime.config.guards.pii.model_copy(update={"enabled": True}),
                    jailbreak=self.runtime.config.guards.jailbreak.model_copy(
                        update={"enabled": True}
                    ),
                )
                self._api_guards = await GuardService.build(settings, engine)
            return self._api_guards

    async def _update_guards(self, config: MixrouteConfig) -> None:
        if self.guards is not None and self.guards.fits(config.guards):
            return
        old, self.guards = self.guards, None
        settings = config.guards
        if settings.pii.enabled or settings.jailbreak.enabled:
            engine = (
                (await self.semantic_assets(config)).engine if settings.jailbreak.enabled else None
            )
            self.guards = await GuardService.build(settings, engine)
        if old is not None:
            old.close()

    async def _update_cache(self, config: MixrouteConfig) -> None:
        """Keep the cache (and its entries) across reloads unless its settings changed."""
        if self.cache is not None and self.cache.fits(config.cache):
            return
        old, self.cache = self.cache, None
        if config.cache.enabled:
            assets = await self.semantic_assets(config)
            self.cache = await CacheService.build(
                config.cache, assets.engine.dimension, self.metrics
            )
        if old is not None:
            await old.close()

    async def _update_discovery(self, config: MixrouteConfig) -> None:
        """Start, restart or stop Kubernetes discovery when its settings change."""
        wanted = config.discovery.kubernetes
        current = self._discovery
        if current is not None and current.config == wanted:
            return
        if current is not None:
            await current.stop()
            self._discovery = None
            self._on_discovered([])
        if wanted is not None:
            discovery = KubernetesDiscovery(wanted, self._on_discovered, self.session)
            await discovery.start()
            self._discovery = discovery

    def _on_discovered(self, configs: list[EndpointConfig]) -> None:
        runtime = self.runtime
        added, removed = runtime.registry.sync(
            configs, runtime.config.balancer.circuit_breaker, source="kubernetes"
        )
        if added or removed:
            log.info("kubernetes discovery: added %s, removed %s", added, removed)

    def _sync_discovered(self, runtime: Runtime, previous: Runtime) -> None:
        """A rebuilt registry holds only static endpoints: put the discovered ones back,
        keeping each one's state (health, breaker, counters) when its name and URL held."""
        if self._discovery is None:
            return
        configs = self._discovery.current()
        runtime.registry.sync(configs, runtime.config.balancer.circuit_breaker, "kubernetes")
        for config in configs:
            old, new = previous.registry.get(config.name), runtime.registry.get(config.name)
            if (
                old is not None
                and new is not None
                and old.url == new.url
                and previous.registry.source_of(config.name) == "kubernetes"
                and runtime.registry.source_of(config.name) == "kubernetes"
            ):
                new.state = old.state
                new.state.breaker.settings = runtime.config.balancer.circuit_breaker

    def _reload_rejected(self, error: ConfigError) -> None:
        self.metrics.config_reloads.labels("rejected").inc()
