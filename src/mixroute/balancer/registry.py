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

    def add(self, endpoint: Endpoint) -> None:
        if endpoint.name in self._by_name:
            self.remove(endpoint.name)
        self._by_name[endpoint.name] = endpoint
        self._by_model.setdefault(endpoint.model, []).append(endpoint)

    def remove(self, name: str) -> Endpoint | None:
        endpoint = self._by_name.pop(name, None)
        if endpoint is not None:
            siblings = self._by_model[endpoint.model]
            siblings.remove(endpoint)
            if not siblings:
                del self._by_model[endpoint.model]
        return endpoint

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
