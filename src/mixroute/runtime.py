"""The runtime: everything built from one config, swapped whole on reload.

Request handlers take ``gateway.runtime`` once at the start and use that object to the end,
so a reload never changes the rules half-way through a request. Endpoint state (health,
breakers, counters) is carried from the old runtime to the new one by endpoint name + URL.
"""

from __future__ import annotations

import time

import aiohttp

from mixroute.balancer.exact_prefix import KVEventTracking
from mixroute.balancer.health import HealthProber
from mixroute.balancer.policies import RoutingPolicy, build_policy
from mixroute.balancer.prefix import PrefixIndex
from mixroute.balancer.registry import EndpointRegistry
from mixroute.balancer.stats import StatsScraper
from mixroute.config.schema import MixrouteConfig
from mixroute.context import Decision, RequestContext
from mixroute.observability.metrics import Metrics
from mixroute.semantic.router import SemanticRouter


class Runtime:
    def __init__(
        self,
        config: MixrouteConfig,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        previous: Runtime | None = None,
    ) -> None:
        self.config = config
        self.registry: EndpointRegistry = EndpointRegistry.from_configs(
            config.endpoints,
            config.balancer.circuit_breaker,
            previous.registry if previous else None,
        )
        self.auto_models = frozenset(config.routing.auto_models)
        self._aliases = config.aliases()
        self._policies: dict[str, RoutingPolicy] = {}
        self.prober = HealthProber(self.registry, config.balancer.health, session)
        balancer = config.balancer
        self.prefix_index: PrefixIndex = (
            previous.prefix_index
            if previous is not None and previous.config.balancer.prefix == balancer.prefix
            else PrefixIndex(balancer.prefix.max_index_blocks)
        )
        self._metrics = metrics
        self.kv = KVEventTracking(config) if any(e.kv_events for e in config.endpoints) else None
        self.scraper: StatsScraper | None = None
        if self._wants_stats():
            stats = balancer.stats
            self.scraper = StatsScraper(
                self.registry, session, stats.interval_s, stats.timeout_s, stats.path
            )
        self.router: SemanticRouter | None = None

    def _wants_stats(self) -> bool:
        stats = self.config.balancer.stats
        if stats.enabled is not None:
            return stats.enabled
        names = {self.config.balancer.policy} | {
            m.policy for m in self.config.models.values() if m.policy
        }
        return bool(names & {"load_aware", "kv_aware"})

    def start(self) -> None:
        self.prober.start()
        if self.scraper is not None:
            self.scraper.start()
        if self.kv is not None:
            self.kv.start()

    async def stop(self) -> None:
        await self.prober.stop()
        if self.scraper is not None:
            await self.scraper.stop()
        if self.kv is not None:
            await self.kv.stop()

    def is_auto(self, model: str) -> bool:
        return model in self.auto_models

    def resolve_model(self, requested: str) -> str | None:
        """The public model a requested name refers to (itself or an alias), or None."""
        if self.registry.for_model(requested):
            return requested
        return self._aliases.get(requested)

    def has_available_endpoint(self, model: str) -> bool:
        now = time.monotonic()
        return any(e.is_available(now) for e in self.registry.for_model(model))

    def pick_endpoint(self, model: str) -> str | None:
        """Pick-only: the endpoint a request for ``model`` would go to now, by name."""
        now = time.monotonic()
        candidates = [e for e in self.registry.for_model(model) if e.is_available(now)]
        if not candidates:
            return None
        ctx = RequestContext("dry-run", "", model, model, {}, b"", False)
        return self.policy_for(model).pick(candidates, ctx).name

    def policy_for(self, model: str) -> RoutingPolicy:
        """The model's policy, built on first use (discovery may add models at any time)."""
        policy = self._policies.get(model)
        if policy is None:
            settings = self.config.models.get(model)
            name = settings.policy if settings and settings.policy else self.config.balancer.policy
            policy = build_policy(name, self.config.balancer, self.prefix_index)
            self._policies[model] = policy
        return policy

    def decide_auto(self) -> Decision | None:
        """Until routes exist, every auto request goes to ``routing.default_model``."""
        default = self.config.routing.default_model
        if default is None:
            return None
        model = self._aliases.get(default, default)
        return Decision(model=model, route="default", category="other", confidence=0.0)

    def model_names(self) -> list[str]:
        return self.registry.models()

    def is_ready(self) -> bool:
        """Ready when health has been probed once and every model has an available endpoint."""
        if not self.prober.first_round_done.is_set():
            return False
        return all(
            any(e.is_available() for e in self.registry.for_model(m)) for m in self.model_names()
        )
