"""Which endpoints serve which model.

Discovery sources (static config today, Kubernetes later) write here; the proxy and the
policies only read. State objects are keyed by (name, url) so that a rebuilt registry keeps
health, breaker and counters for endpoints that did not change.
"""

from __future__ import annotations

from collections.abc import Iterable

from mixroute.balancer.endpoint import CircuitBreaker, Endpoint, EndpointState
from mixroute.config.schema import CircuitBreakerConfig, EndpointConfig


class EndpointRegistry:
    def __init__(self, endpoints: Iterable[Endpoint] = ()) -> None:
        self._by_name: dict[str, Endpoint] = {}
        self._by_model: dict[str, list[Endpoint]] = {}
        self._sources: dict[str, str] = {}
        for endpoint in endpoints:
            self.add(endpoint)

    @classmethod
    def from_configs(
        cls,
        configs: Iterable[EndpointConfig],
        breaker_settings: CircuitBreakerConfig,
        previous: EndpointRegistry | None = None,
    ) -> EndpointRegistry:
        endpoints = []
        for config in configs:
            old = previous.get(config.name) if previous else None
            if old is not None and old.url == config.url:
                state = old.state
                state.breaker.settings = breaker_settings
            else:
                state = EndpointState(breaker=CircuitBreaker(breaker_settings))
            endpoints.append(Endpoint(config, state))
        return cls(endpoints)

    def sync(
        self,
        configs: Iterable[EndpointConfig],
        breaker_settings: CircuitBreakerConfig,
        source: str,
    ) -> tuple[list[str], list[str]]:
        """Make the endpoints that came from ``source`` exactly ``configs``.

        Discovery sources (Kubernetes) call this on every change; endpoints whose name and
        URL are unchanged keep their state. Endpoints from other sources (static config) are
        never touched. Returns the names added and removed.
        """
        wanted = {c.name: c for c in configs}
        current = {n for n, s in self._sources.items() if s == source}
        removed = sorted(current - set(wanted))
        for name in removed:
            self.remove(name)
        added = []
        for name, config in wanted.items():
            old = self._by_name.get(name)
            if old is not None and self._sources.get(name) != source:
                continue  # a static endpoint of the same name wins
            if old is not None and old.config == config:
                continue
            state = (
                old.state
                if old is not None and old.url == config.url
                else EndpointState(breaker=CircuitBreaker(breaker_settings))
            )
            self.add(Endpoint(config, state), source=source)
            if old is None:
                added.append(name)
        return added, removed

    def add(self, endpoint: Endpoint, source: str = "static") -> None:
        if endpoint.name in self._by_name:
            self.remove(endpoint.name)
        self._by_name[endpoint.name] = endpoint
        self._sources[endpoint.name] = source
        self._by_model.setdefault(endpoint.model, []).append(endpoint)

    def remove(self, name: str) -> Endpoint | None:
        endpoint = self._by_name.pop(name, None)
        self._sources.pop(name, None)
        if endpoint is not None:
            siblings = self._by_model[endpoint.model]
            siblings.remove(endpoint)
            if not siblings:
                del self._by_model[endpoint.model]
        return endpoint

    def source_of(self, name: str) -> str | None:
        return self._sources.get(name)

    def get(self, name: str) -> Endpoint | None:
        return self._by_name.get(name)

    def for_model(self, model: str) -> list[Endpoint]:
        return self._by_model.get(model, [])

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def all(self) -> list[Endpoint]:
        return list(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)
