"""Replica selection: every policy is a small pipeline of filters, weighted scorers, a picker.

A policy has one method, ``pick(endpoints, request) -> endpoint``; the caller has already
kept only available endpoints of the right model. Inside, a ``Scheduler`` (in the spirit of
the Gateway API Inference Extension's scheduler):

1. **filters** drop endpoints that must not take this request (over the bounded load);
   if a filter would drop every endpoint, it is ignored rather than failing the request;
2. **scorers** rate each remaining endpoint in 0..1 (higher is better) and are summed with
   their weights from config;
3. a **picker** chooses: the best total (ties rotate), two random choices, or plain
   weighted round-robin.

The named policies are compositions of these parts; ``explain`` keeps the last scores so
debug headers can show why an endpoint won.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mixroute.balancer.endpoint import Endpoint
from mixroute.balancer.prefix import PrefixIndex, chunk_hashes, render_prompt
from mixroute.config.schema import BalancerConfig, SessionConfig
from mixroute.context import RequestContext


class RoutingPolicy(Protocol):
    name: str

    def pick(self, endpoints: Sequence[Endpoint], request: RequestContext) -> Endpoint: ...


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def load(endpoint: Endpoint) -> float:
    return endpoint.state.in_flight / endpoint.weight


# --------------------------------------------------------------------------- filters


class Filter(Protocol):
    def keep(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[Endpoint]: ...


class BoundedLoad:
    """No endpoint above ``factor`` times the mean in-flight load (rounded up): the cap that
    keeps affinity (session, prefix) from piling everything on one replica."""

    def __init__(self, factor: float, only_with_session: bool = False) -> None:
        self._factor = factor
        self._only_with_session = only_with_session

    def keep(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[Endpoint]:
        if self._only_with_session and request.session_key is None:
            return list(endpoints)
        total = sum(e.state.in_flight for e in endpoints)
        capacity = math.ceil(self._factor * (total + 1) / len(endpoints))
        return [e for e in endpoints if e.state.in_flight < capacity]


class NotSaturated:
    """Drop endpoints whose engine reports a long queue or a nearly full KV cache."""

    def __init__(self, max_waiting: float, max_kv_usage: float) -> None:
        self._max_waiting = max_waiting
        self._max_kv = max_kv_usage

    def keep(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[Endpoint]:
        return [
            e
            for e in endpoints
            if e.state.engine is None
            or (
                e.state.engine.waiting <= self._max_waiting
                and e.state.engine.kv_usage <= self._max_kv
            )
        ]


# --------------------------------------------------------------------------- scorers


class Scorer(Protocol):
    name: str

    def scores(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[float]: ...


class InFlightScorer:
    """The gateway's own in-flight count per unit of weight (fewer is better)."""

    name = "in_flight"

    def scores(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[float]:
        return [1.0 / (1.0 + load(e)) for e in endpoints]


class QueueScorer:
    """The engine's waiting + running requests, scraped (fewer is better); endpoints
    without stats score by the gateway's in-flight count instead."""

    name = "queue"

    def scores(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[float]:
        out = []
        for e in endpoints:
            engine = e.state.engine
            depth = e.state.in_flight if engine is None else engine.waiting + engine.running
            out.append(1.0 / (1.0 + depth / e.weight))
        return out


class KVPressureScorer:
    """Free KV cache (1 - usage), scraped; unknown counts as half full."""

    name = "kv"

    def scores(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[float]:
        return [0.5 if e.state.engine is None else 1.0 - e.state.engine.kv_usage for e in endpoints]


class PrefixScorer:
    """Fraction of the prompt's leading blocks an endpoint is believed to hold.

    Below ``min_blocks`` matched blocks every endpoint scores 0, so load alone decides.
    ``exact`` (KV events) is consulted first when the engines publish them; the estimated
    index is the fallback.
    """

    name = "prefix"

    def __init__(
        self, index: PrefixIndex, block_chars: int, max_blocks: int, min_blocks: int
    ) -> None:
        self.index = index
        self._block_chars = block_chars
        self._max_blocks = max_blocks
        self._min_blocks = min_blocks

    def hashes(self, request: RequestContext) -> list[bytes]:
        if request.prefix_hashes is None:
            request.prefix_hashes = chunk_hashes(
                render_prompt(request.body), self._block_chars, self._max_blocks
            )
        return request.prefix_hashes

    def scores(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[float]:
        if request.kv_matches is not None:  # exact, from the engines' KV events
            held, total = request.kv_matches
            if total and max(held.get(e.name, 0) for e in endpoints) >= self._min_blocks:
                return [held.get(e.name, 0) / total for e in endpoints]
            if total:
                return [0.0] * len(endpoints)
        hashes = self.hashes(request)
        if not hashes:
            return [0.0] * len(endpoints)
        matched = self.index.match(hashes, [e.name for e in endpoints])
        best = max(matched.values(), default=0)
        if best < self._min_blocks:
            return [0.0] * len(endpoints)
        return [matched[e.name] / len(hashes) for e in endpoints]

    def record(self, endpoint: Endpoint, request: RequestContext) -> None:
        self.index.record(self.hashes(request), endpoint.name)


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


class SessionScorer:
    """Consistent hashing: the key's first endpoint clockwise on the ring scores 1, the next
    ones less. Rings are cached per endpoint set (bounded)."""

    name = "session"
    _MAX_RINGS = 64

    def __init__(self) -> None:
        self._rings: OrderedDict[tuple[str, ...], HashRing] = OrderedDict()

    def scores(self, endpoints: Sequence[Endpoint], request: RequestContext) -> list[float]:
        key = request.session_key
        if key is None:
            return [0.0] * len(endpoints)
        names = tuple(sorted(e.name for e in endpoints))
        ring = self._rings.get(names)
        if ring is None:
            by_name = sorted(endpoints, key=lambda e: e.name)
            ring = HashRing(by_name)
            self._rings[names] = ring
            if len(self._rings) > self._MAX_RINGS:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(names)
        rank = {names[index]: position for position, index in enumerate(ring.walk(key))}
        return [1.0 / (1 + rank[e.name]) for e in endpoints]


# --------------------------------------------------------------------------- pickers


class Picker(Protocol):
    def choose(self, endpoints: Sequence[Endpoint], totals: Sequence[float]) -> Endpoint: ...


class BestScore:
    """The highest total; ties rotate, so equal endpoints share the traffic."""

    def __init__(self) -> None:
        self._counter = 0

    def choose(self, endpoints: Sequence[Endpoint], totals: Sequence[float]) -> Endpoint:
        self._counter += 1
        count = len(endpoints)
        start = self._counter % count
        best = start
        for offset in range(1, count):
            index = (start + offset) % count
            if totals[index] > totals[best] + 1e-12:
                best = index
        return endpoints[best]


class TwoChoices:
    """Two random endpoints, keep the better total: near-best without a full comparison."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, endpoints: Sequence[Endpoint], totals: Sequence[float]) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        first, second = self._rng.sample(range(len(endpoints)), 2)
        return endpoints[first] if totals[first] >= totals[second] else endpoints[second]


class WeightedRotation:
    """Smooth weighted round-robin (as in nginx): even interleaving, weights respected."""

    def __init__(self) -> None:
        self._current: dict[str, float] = {}
        self._counter = 0

    def choose(self, endpoints: Sequence[Endpoint], totals: Sequence[float]) -> Endpoint:
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


# --------------------------------------------------------------------------- scheduler


@dataclass
class Scheduler:
    name: str
    filters: list[Filter] = field(default_factory=list)
    scorers: list[tuple[Scorer, float]] = field(default_factory=list)
    picker: Picker = field(default_factory=BestScore)

    def pick(self, endpoints: Sequence[Endpoint], request: RequestContext) -> Endpoint:
        candidates: Sequence[Endpoint] = endpoints
        for step in self.filters:
            kept = step.keep(candidates, request)
            if kept:
                candidates = kept
        totals = [0.0] * len(candidates)
        parts: dict[str, list[float]] = {}
        for scorer, weight in self.scorers:
            values = scorer.scores(candidates, request)
            parts[scorer.name] = values
            for index, value in enumerate(values):
                totals[index] += weight * value
        chosen = self.picker.choose(candidates, totals)
        if request.debug and parts:
            request.balancer_scores = ",".join(
                f"{e.name}={totals[i]:.3f}("
                + " ".join(f"{name}={values[i]:.2f}" for name, values in parts.items())
                + ")"
                for i, e in enumerate(candidates)
            )
        for scorer, _ in self.scorers:
            if isinstance(scorer, PrefixScorer):
                scorer.record(chosen, request)
        return chosen


def RoundRobin() -> Scheduler:
    return Scheduler("round_robin", picker=WeightedRotation())


def LeastOutstanding() -> Scheduler:
    return Scheduler("least_outstanding", scorers=[(InFlightScorer(), 1.0)])


def PowerOfTwo(rng: random.Random | None = None) -> Scheduler:
    return Scheduler("power_of_two", scorers=[(InFlightScorer(), 1.0)], picker=TwoChoices(rng))


def SessionAffinity(settings: SessionConfig) -> Scheduler:
    """Consistent hashing with bounded load (Mirrokni et al., 2018); requests without a key
    fall back to least in-flight (the small in-flight weight only breaks ties)."""
    return Scheduler(
        "session",
        filters=[BoundedLoad(settings.load_factor, only_with_session=True)],
        scorers=[(SessionScorer(), 1.0), (InFlightScorer(), 0.01)],
    )


def build_policy(
    name: str, settings: BalancerConfig, index: PrefixIndex | None = None
) -> Scheduler:
    """The named policy; ``index`` is the runtime's shared estimated prefix index."""
    if name == "round_robin":
        return RoundRobin()
    if name == "least_outstanding":
        return LeastOutstanding()
    if name == "power_of_two":
        return PowerOfTwo()
    if name == "session":
        return SessionAffinity(settings.session)
    weights = settings.weights
    saturated = NotSaturated(settings.saturation.max_waiting, settings.saturation.max_kv_usage)
    bounded = BoundedLoad(settings.prefix.load_factor)
    if name == "load_aware":
        return Scheduler(
            name,
            filters=[saturated],
            scorers=[
                (QueueScorer(), weights.queue),
                (KVPressureScorer(), weights.kv),
                (InFlightScorer(), weights.in_flight),
            ],
        )
    assert index is not None, "prefix-aware policies need the runtime's prefix index"
    prefix = PrefixScorer(
        index,
        settings.prefix.block_chars,
        settings.prefix.max_blocks,
        settings.prefix.min_match_blocks,
    )
    if name == "prefix":
        return Scheduler(
            name,
            filters=[bounded],
            scorers=[(prefix, weights.prefix), (InFlightScorer(), weights.in_flight)],
        )
    if name == "kv_aware":
        return Scheduler(
            name,
            filters=[saturated, bounded],
            scorers=[
                (prefix, weights.prefix),
                (QueueScorer(), weights.queue),
                (KVPressureScorer(), weights.kv),
                (InFlightScorer(), weights.in_flight),
            ],
        )
    raise ValueError(f"unknown policy {name!r}")
