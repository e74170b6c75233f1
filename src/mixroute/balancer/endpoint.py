"""One upstream server and the facts this process keeps about it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mixroute.config.schema import CircuitBreakerConfig, EndpointConfig

if TYPE_CHECKING:
    from mixroute.balancer.stats import EngineStats


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Passive ejection with exponential back-off.

    ``failure_threshold`` consecutive failures open the breaker for ``base * 2**k`` seconds
    (capped), where k counts ejections since the last success. When the time is up one trial
    request is let through (half-open): success closes the breaker, failure re-opens it for
    twice as long.
    """

    settings: CircuitBreakerConfig
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    ejections: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False

    def allows(self, now: float) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now >= self.open_until
        return not self.trial_in_flight

    def on_attempt(self, now: float) -> None:
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            self.trial_in_flight = True

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.ejections = 0
        self.trial_in_flight = False

    def record_failure(self, now: float) -> None:
        self.consecutive_failures += 1
        self.trial_in_flight = False
        threshold_hit = self.consecutive_failures >= self.settings.failure_threshold
        if self.state is BreakerState.HALF_OPEN or threshold_hit:
            duration = min(
                self.settings.base_ejection_s * 2**self.ejections, self.settings.max_ejection_s
            )
            self.ejections += 1
            self.state = BreakerState.OPEN
            self.open_until = now + duration


@dataclass(slots=True)
class EndpointState:
    """Mutable state; it outlives a config reload that keeps the endpoint's name and URL."""

    breaker: CircuitBreaker
    healthy: bool = True
    probe_failures: int = 0
    probe_successes: int = 0
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    last_probe: float = field(default=0.0)
    engine: EngineStats | None = None  # scraped from the endpoint's /metrics, when enabled


class Endpoint:
    """An upstream that serves one public model.

    The config part is immutable and replaced on reload; ``state`` is carried across.
    """

    __slots__ = ("config", "state")

    def __init__(self, config: EndpointConfig, state: EndpointState) -> None:
        self.config = config
        self.state = state

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def weight(self) -> float:
        return self.config.weight

    def is_available(self, now: float | None = None) -> bool:
        return self.state.healthy and self.state.breaker.allows(
            time.monotonic() if now is None else now
        )

    def begin(self, now: float) -> None:
        self.state.breaker.on_attempt(now)
        self.state.in_flight += 1
        self.state.requests += 1

    def end(self) -> None:
        self.state.in_flight -= 1

    def record_success(self) -> None:
        self.state.breaker.record_success()

    def record_failure(self, reason: str, now: float | None = None) -> None:
        self.state.failures += 1
        self.state.last_error = reason
        self.state.breaker.record_failure(time.monotonic() if now is None else now)

    def describe(self) -> dict[str, object]:
        breaker = self.state.breaker
        return {
            "name": self.name,
            "model": self.model,
            "weight": self.weight,
            "labels": dict(self.config.labels),
            "healthy": self.state.healthy,
            "available": self.is_available(),
            "circuit": breaker.state.value,
            "in_flight": self.state.in_flight,
            "requests": self.state.requests,
            "failures": self.state.failures,
            "last_error": self.state.last_error,
            "engine": None
            if self.state.engine is None
            else {
                "running": self.state.engine.running,
                "waiting": self.state.engine.waiting,
                "kv_usage": round(self.state.engine.kv_usage, 4),
                "prefix_hit_rate": self.state.engine.prefix_hit_rate,
            },
        }

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, model={self.model!r})"
