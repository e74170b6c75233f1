"""Replica selection policies.

Each policy has one method, ``pick(endpoints, request) -> endpoint``. The caller has already
filtered the list to available endpoints of the right model, so a policy only chooses.
Policy objects keep their own small state (a rotation counter, a hash ring) per process.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Protocol

from mixroute.balancer.endpoint import Endpoint
from mixroute.config.schema import SessionConfig
from mixroute.context import RequestContext


class RoutingPolicy(Protocol):
    name: str

    def pick(self, endpoints: Sequence[Endpoint], request: RequestContext) -> Endpoint: ...


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def load(endpoint: Endpoint) -> float:
    return endpoint.state.in_flight / endpoint.weight


class RoundRobin:
    """Smooth weighted round-robin (as in nginx): even interleaving, weights respected."""

    name = "round_robin"

    def __init__(self) -> None:
        self._current: dict[str, float] = {}
        self._counter = 0

    def pick(self, endpoints: Sequence[Endpoint], request: RequestContext) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        first_weight = endpoints[0].weight
        if all(e.weight == first_weight for e in endpoints):
            self._counter += 1
            return endpoints[self._counter % len(endpoints)]
        total = 0.0
        best: Endpoint | None = None
        best_score = -math.inf
        for endpoint in endpoints:
            score = self._current.get(endpoint.name, 0.0) + endpoint.weight
            self._current[endpoint.name] = score
            total += endpoint.weight
            if score > best_score:
                best, best_score = endpoint, score
        assert best is not None
        self._current[best.name] -= total
        if len(self._current) > 4 * len(endpoints):
            live = {e.name for e in endpoints}
            self._current = {k: v for k, v in self._current.items() if k in live}
        return best


class LeastOutstanding:
    """Fewest in-flight requests per unit of weight; ties rotate so an idle pool still spreads."""

    name = "least_outstanding"

    def __init__(self) -> None:
        self._counter = 0

    def pick(self, endpoints: Sequence[Endpoint], request: RequestContext) -> Endpoint:
        self._counter += 1
        count = len(endpoints)
        start = self._counter % count
        best = endpoints[start]
        best_load = load(best)
        for offset in range(1, count):
            candidate = endpoints[(start + offset) % count]
            candidate_load = load(candidate)
            if candidate_load < best_load:
                best, best_load = candidate, candidate_load
        return best


class PowerOfTwo:
    """Two random choices, keep the less loaded: near least-outstanding without a full scan."""

    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, endpoints: Sequence[Endpoint], request: RequestContext) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        first, second = self._rng.sample(range(len(endpoints)), 2)
        a, b = endpoints[first], endpoints[second]
        return a if load(a) <= load(b) else b


class HashRing:
    """A consistent-hash ring with virtual nodes, built from endpoint names only.

    Because it depends on names (not on process state), every gateway worker and replica
    builds the same ring and maps a session to the same endpoint without talking.
    """

    VIRTUAL_NODES = 160

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        points: list[tuple[int, int]] = []
        for index, endpoint in enumerate(endpoints):
            replicas = max(1, round(self.VIRTUAL_NODES * endpoint.weight))
            points.extend((stable_hash(f"{endpoint.name}#{v}"), index) for v in range(replicas))
        points.sort()
        self._hashes = [p[0] for p in points]
        self._owners = [p[1] for p in points]

    def walk(self, key: str) -> Iterator[int]:
        """Endpoint indexes in ring order from the key's position, each once, lazily."""
        start = bisect.bisect(self._hashes, stable_hash(key))
        seen: set[int] = set()
        total = len(self._owners)
        for step in range(total):
            owner = self._owners[(start + step) % total]
            if owner not in seen:
                seen.add(owner)
                yield owner


class SessionAffinity:
    """Consistent hashing with bounded load (Mirrokni et al., 2018).

    A session key goes to the first endpoint on the ring whose in-flight count is below
    ``load_factor`` times the mean (rounded up); requests without a key fall back to
    least-outstanding. When one of N endpoints leaves, only its ~1/N of sessions move.
    """

    name = "session"
    _MAX_RINGS = 64

    def __init__(self, settings: SessionConfig) -> None:
        self._settings = settings
        self._rings: OrderedDict[tuple[str, ...], HashRing] = OrderedDict()
        self._fallback = LeastOutstanding()

    def pick(self, endpoints: Sequence[Endpoint], request: RequestContext) -> Endpoint:
        key = request.session_key
        if key is None or len(endpoints) == 1:
            return self._fallback.pick(endpoints, request)
        ring = self._ring(endpoints)
        total_in_flight = sum(e.state.in_flight for e in endpoints)
        capacity = math.ceil(self._settings.load_factor * (total_in_flight + 1) / len(endpoints))
        first: int | None = None
        for index in ring.walk(key):
            if endpoints[index].state.in_flight < capacity:
                return endpoints[index]
            if first is None:
                first = index
        assert first is not None
        return endpoints[first]

    def _ring(self, endpoints: Sequence[Endpoint]) -> HashRing:
        names = tuple(e.name for e in endpoints)
        ring = self._rings.get(names)
        if ring is None:
            ring = HashRing(endpoints)
            self._rings[names] = ring
            if len(self._rings) > self._MAX_RINGS:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(names)
        return ring


def build_policy(name: str, session: SessionConfig) -> RoutingPolicy:
    if name == "round_robin":
        return RoundRobin()
    if name == "least_outstanding":
        return LeastOutstanding()
    if name == "power_of_two":
        return PowerOfTwo()
    if name == "session":
        return SessionAffinity(session)
    raise ValueError(f"unknown policy {name!r}")
