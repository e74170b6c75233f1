"""Every Prometheus metric the gateway exports, declared in one place.

Names start with ``mixroute_`` and never reuse ``vllm:`` names. Labels are bounded sets
(model, endpoint, route, status class); prompt text and user ids never become labels.
docs/metrics.md lists each metric; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Time per output token: a decode step is milliseconds to a few hundred milliseconds.
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
# Label sets are bounded by the config; this only guards against a bug that makes them not.
MAX_REMEMBERED_CHILDREN = 10_000


class Metrics:
    """One registry per gateway process (no global default registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mixroute_requests",
            "Requests answered by the gateway, by public model, endpoint and HTTP status class.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.requests_by_route = Counter(
            "mixroute_requests_by_route",
            "Every finished inference request (answered, refused, cached, failed, client "
            "closed), by model, route, category and HTTP status class.",
            ["model", "route", "category", "status"],
            registry=r,
        )
        self.request_errors = Counter(
            "mixroute_request_errors",
            "Failed inference requests, by the OpenAI error code of the answer (a fixed set; "
            "anything else is 'other').",
            ["code"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "mixroute_time_to_first_token_seconds",
            "Request received to the first generated token relayed (streams) or to the whole "
            "upstream answer (non-streamed).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "mixroute_time_per_output_token_seconds",
            "Streams only: (last token chunk - first token chunk) / (completion tokens - 1).",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "mixroute_request_duration_seconds",
            "Time from request received to last byte sent.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_first_byte = Histogram(
            "mixroute_upstream_first_byte_seconds",
            "Time until the upstream's response headers arrived.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "mixroute_upstream_errors",
            "Failed upstream attempts, by kind (connect, timeout, status_5xx, stream_broken).",
            ["endpoint", "kind"],
            registry=r,
        )
        self.retries = Counter(
            "mixroute_retries",
            "Attempts beyond the first for one client request.",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "mixroute_endpoint_in_flight",
            "Requests this process has open to the endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_available = Gauge(
            "mixroute_endpoint_available",
            "1 when the endpoint passes health checks and its circuit breaker is not open.",
            ["endpoint", "model"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "mixroute_client_disconnects",
            "Client connections closed before the response was complete.",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "mixroute_rejected_requests",
            "Requests refused before routing, by reason (bad_request, too_large, "
            "unknown_model, no_endpoint, unauthorized, rate_limited, forbidden, queue_full, "
            "queue_timeout).",
            ["reason"],
            registry=r,
        )
        self.config_reloads = Counter(
            "mixroute_config_reloads",
            "Config file reloads, by result (applied, rejected).",
            ["result"],
            registry=r,
        )

        self.route_decisions = Counter(
            "mixroute_route_decisions",
            "Auto-model (MoM) decisions, by route and chosen model.",
            ["route", "model"],
            registry=r,
        )
        self.decision_duration = Histogram(
            "mixroute_decision_duration_seconds",
            "Time of the semantic decision (embedding, signals, rules) for one request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_fallbacks = Counter(
            "mixroute_model_fallbacks",
            "Candidate models skipped by a route, by reason (no_endpoint, context_length).",
            ["model", "reason"],
            registry=r,
        )
        self.tokens = Counter(
            "mixroute_tokens",
            "Tokens per model and kind (prompt, completion): from usage when the answer has "
            "it, else streamed completion tokens counted one per content chunk.",
            ["model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "mixroute_cost_usd",
            "Estimated spend from usage and the configured per-model prices.",
            ["model", "route"],
            registry=r,
        )

        self.cache_lookups = Counter(
            "mixroute_cache_lookups",
            "Semantic cache lookups, by result (hit, miss, bypass).",
            ["result"],
            registry=r,
        )
        self.cache_lookup_duration = Histogram(
            "mixroute_cache_lookup_seconds",
            "Cache lookup time (exact path and vector search; the embedding is not included).",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=r,
        )
        self.cache_stores = Counter(
            "mixroute_cache_stores", "Complete answers written to the cache.", registry=r
        )
        self.cache_errors = Counter(
            "mixroute_cache_errors",
            "Cache lookups and stores that failed or timed out (served as misses), by "
            "operation (lookup, store).",
            ["operation"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "mixroute_cache_entries", "Entries in the cache (this process's view).", registry=r
        )
        self.cache_evictions = Counter(
            "mixroute_cache_evictions",
            "Entries removed, by reason (lru, ttl).",
            ["reason"],
            registry=r,
        )

        self.guard_decisions = Counter(
            "mixroute_guard_decisions",
            "Guard outcomes, by guard (pii, jailbreak) and action (pass, allowed, flag, block, "
            "redact, reroute, error).",
            ["guard", "action"],
            registry=r,
        )
        self.pii_entities = Counter(
            "mixroute_pii_requests",
            "Requests in which a PII type was found (type names only, never values).",
            ["type"],
            registry=r,
        )

        self.endpoint_queue = Gauge(
            "mixroute_endpoint_engine_waiting",
            "Requests waiting in the endpoint's engine queue (scraped from its /metrics).",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_running = Gauge(
            "mixroute_endpoint_engine_running",
            "Requests running in the endpoint's engine batch (scraped).",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_kv_usage = Gauge(
            "mixroute_endpoint_engine_kv_usage_ratio",
            "KV-cache usage of the endpoint's engine, 0..1 (scraped, either vLLM generation).",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_prefix_hit_rate = Gauge(
            "mixroute_endpoint_engine_prefix_hit_ratio",
            "The engine's prefix-cache hit rate between the last two scrapes.",
            ["endpoint"],
            registry=r,
        )
        self.balancer_picks = Counter(
            "mixroute_balancer_picks",
            "Endpoints picked by the balancer, by policy and endpoint.",
            ["policy", "endpoint"],
            registry=r,
        )
        self.prefix_index_blocks = Gauge(
            "mixroute_prefix_index_blocks",
            "Prompt blocks held by the estimated prefix index (bounded).",
            registry=r,
        )

        for value in vars(self).values():
            if isinstance(value, MetricWrapperBase) and value._labelnames:
                remember_children(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def remember_children(metric: MetricWrapperBase) -> None:
    """Make ``metric.labels(...)`` a dict lookup after the first call per label set.

    prometheus_client validates, stringifies and takes a lock on every ``labels()`` call
    (0.7 us here); the hot path makes about ten per request, always from the same bounded
    label sets, and the profile showed them at 5% of the gateway's CPU.
    """
    children: dict[tuple[str, ...], Any] = {}
    find: Callable[..., Any] = metric.labels
    clear_family: Callable[[], None] = metric.clear

    def clear() -> None:
        children.clear()
        clear_family()

    def labels(*values: str) -> Any:
        child = children.get(values)
        if child is None:
            child = find(*values)
            if len(children) < MAX_REMEMBERED_CHILDREN:
                children[values] = child
        return child

    setattr(metric, "labels", labels)  # noqa: B010 (instance attributes over the methods)
    setattr(metric, "clear", clear)  # noqa: B010
