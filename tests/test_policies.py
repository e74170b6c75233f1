"""Replica selection policies and the circuit breaker, as pure objects."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mixroute.balancer.endpoint import BreakerState, CircuitBreaker, Endpoint, EndpointState
from mixroute.balancer.policies import (
    LeastOutstanding,
    PowerOfTwo,
    RoundRobin,
    SessionAffinity,
    build_policy,
)
from mixroute.balancer.prefix import PrefixIndex
from mixroute.config.schema import (
    POLICY_NAMES,
    BalancerConfig,
    CircuitBreakerConfig,
    EndpointConfig,
    SessionConfig,
)
from mixroute.context import RequestContext


def make_endpoints(count: int, weights: list[float] | None = None) -> list[Endpoint]:
    endpoints = []
    for index in range(count):
        config = EndpointConfig(
            name=f"e{index}",
            url=f"http://127.0.0.1:{9000 + index}",
            model="m",
            weight=weights[index] if weights else 1.0,
        )
        endpoints.append(Endpoint(config, EndpointState(CircuitBreaker(CircuitBreakerConfig()))))
    return endpoints


def request(session: str | None = None) -> RequestContext:
    return RequestContext(
        "id", "/v1/chat/completions", "m", "m", {}, b"", False, session_key=session
    )


def test_round_robin_spreads_evenly() -> None:
    endpoints = make_endpoints(3)
    policy = RoundRobin()
    picks = Counter(policy.pick(endpoints, request()).name for _ in range(300))
    assert picks == {"e0": 100, "e1": 100, "e2": 100}


def test_round_robin_respects_weights_smoothly() -> None:
    endpoints = make_endpoints(2, weights=[1.0, 3.0])
    policy = RoundRobin()
    sequence = [policy.pick(endpoints, request()).name for _ in range(8)]
    assert Counter(sequence) == {"e0": 2, "e1": 6}
    assert "e1e1e1e1" not in "".join(sequence)  # interleaved, not bursts


def test_least_outstanding_prefers_idle() -> None:
    endpoints = make_endpoints(3)
    endpoints[0].state.in_flight = 5
    endpoints[1].state.in_flight = 1
    endpoints[2].state.in_flight = 3
    assert LeastOutstanding().pick(endpoints, request()).name == "e1"


def test_least_outstanding_rotates_ties() -> None:
    endpoints = make_endpoints(3)
    policy = LeastOutstanding()
    assert {policy.pick(endpoints, request()).name for _ in range(6)} == {"e0", "e1", "e2"}


def test_power_of_two_never_picks_the_most_loaded() -> None:
    endpoints = make_endpoints(3)
    endpoints[2].state.in_flight = 50
    policy = PowerOfTwo(random.Random(7))
    picks = Counter(policy.pick(endpoints, request()).name for _ in range(500))
    assert picks["e2"] == 0 and picks["e0"] > 100 and picks["e1"] > 100


def test_session_is_sticky_and_spread() -> None:
    endpoints = make_endpoints(4)
    policy = SessionAffinity(SessionConfig())
    owners = {f"user-{i}": policy.pick(endpoints, request(f"user-{i}")).name for i in range(400)}
    for user, owner in list(owners.items())[:50]:
        assert policy.pick(endpoints, request(user)).name == owner
    spread = Counter(owners.values())
    assert len(spread) == 4 and min(spread.values()) > 50


def test_session_affinity_agrees_across_instances() -> None:
    """Two processes (here: two policy objects) map the same user to the same endpoint."""
    endpoints_a, endpoints_b = make_endpoints(5), make_endpoints(5)
    a, b = SessionAffinity(SessionConfig()), SessionAffinity(SessionConfig())
    for i in range(200):
        assert (
            a.pick(endpoints_a, request(f"u{i}")).name == b.pick(endpoints_b, request(f"u{i}")).name
        )


@pytest.mark.parametrize("count", [3, 4, 8])
def test_session_moves_about_one_nth_when_an_endpoint_leaves(count: int) -> None:
    endpoints = make_endpoints(count)
    policy = SessionAffinity(SessionConfig())
    users = [f"user-{i}" for i in range(4000)]
    before = {u: policy.pick(endpoints, request(u)).name for u in users}
    survivors = endpoints[1:]
    after = {u: policy.pick(survivors, request(u)).name for u in users}
    moved = sum(before[u] != after[u] for u in users) / len(users)
    lost = sum(before[u] == "e0" for u in users) / len(users)
    assert moved == pytest.approx(lost)  # only the departed endpoint's sessions move
    assert moved == pytest.approx(1 / count, abs=0.35 / count)


def test_session_bounded_load_spills_a_hot_endpoint() -> None:
    endpoints = make_endpoints(3)
    policy = SessionAffinity(SessionConfig(load_factor=1.25))
    owner = policy.pick(endpoints, request("hot-user"))
    owner.state.in_flight = 10
    spilled = policy.pick(endpoints, request("hot-user"))
    assert spilled is not owner
    owner.state.in_flight = 0
    assert policy.pick(endpoints, request("hot-user")) is owner


def test_session_without_key_falls_back_to_least_outstanding() -> None:
    endpoints = make_endpoints(2)
    endpoints[0].state.in_flight = 3
    assert SessionAffinity(SessionConfig()).pick(endpoints, request()).name == "e1"


def test_build_policy_by_name() -> None:
    index = PrefixIndex(1000)
    for name in POLICY_NAMES:
        assert build_policy(name, BalancerConfig(), index).name == name


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    breaker = CircuitBreaker(
        CircuitBreakerConfig(failure_threshold=2, base_ejection_s=1.0, max_ejection_s=3.0)
    )
    breaker.record_failure(now=0.0)
    assert breaker.allows(0.0)
    breaker.record_failure(now=0.0)
    assert breaker.state is BreakerState.OPEN and not breaker.allows(0.5)
    assert breaker.allows(1.0)  # time is up: one trial may go
    breaker.on_attempt(1.0)
    assert breaker.state is BreakerState.HALF_OPEN and not breaker.allows(1.0)
    breaker.record_failure(now=1.0)  # trial failed: open twice as long
    assert not breaker.allows(2.9) and breaker.allows(3.0)
    breaker.on_attempt(3.0)
    breaker.record_failure(now=3.0)
    assert not breaker.allows(5.9) and breaker.allows(6.0)  # capped at max_ejection_s
    breaker.on_attempt(6.0)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allows(6.0)
    assert breaker.ejections == 0
