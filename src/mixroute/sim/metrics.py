"""vLLM-compatible Prometheus metrics, written by hand.

Gateways scrape ``/metrics`` and parse vLLM's metric names, so the names matter more
than anything else here. vLLM renamed some series over time; both generations are
exported so a gateway written against either works:

=========================================  =========================================
old name (vLLM v0, still seen in the wild)  new name (vLLM v1)
=========================================  =========================================
``vllm:gpu_cache_usage_perc``               ``vllm:kv_cache_usage_perc``
``vllm:gpu_prefix_cache_queries_total``     ``vllm:prefix_cache_queries_total``
``vllm:gpu_prefix_cache_hits_total``        ``vllm:prefix_cache_hits_total``
=========================================  =========================================

Prefix cache queries and hits are counted in tokens, as vLLM v1 does. The text is built
by hand rather than through ``prometheus_client`` because its default registry is
process-global and several simulators may live in one test process. Counters follow the
client library's exposition: ``# TYPE`` and samples carry the ``_total`` suffix.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# vLLM's buckets for vllm:time_to_first_token_seconds.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
# vLLM's buckets for vllm:e2e_request_latency_seconds.
E2E_BUCKETS: tuple[float, ...] = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "abort")


class Histogram:
    """Cumulative-bucket histogram, the Prometheus way."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # last slot: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) pairs, ending with +Inf."""
        result: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.buckets, math.inf), self._counts, strict=True):
            running += count
            result.append((bound, running))
        return result


@dataclass
class EngineCounters:
    """Monotonic counters and histograms the engine updates as requests progress."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    request_success: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0)
    )
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))


@dataclass(frozen=True, slots=True)
class EngineGauges:
    """Point-in-time engine state."""

    running: int
    waiting: int
    kv_cache_usage: float


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Static KV cache configuration, exported like vLLM's ``cache_config_info``."""

    block_size: int
    num_gpu_blocks: int
    enable_prefix_caching: bool


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in pairs) + "}"


class _Writer:
    def __init__(self, model_name: str) -> None:
        self._base = (("model_name", model_name),)
        self._lines: list[str] = []

    def header(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, extra: Sequence[tuple[str, str]] = ()) -> None:
        self._lines.append(f"{name}{_labels((*self._base, *extra))} {_format_value(value)}")

    def gauge(self, name: str, value: float, help_text: str) -> None:
        self.header(name, "gauge", help_text)
        self.sample(name, value)

    def counter(self, name: str, value: float, help_text: str) -> None:
        self.header(f"{name}_total", "counter", help_text)
        self.sample(f"{name}_total", value)

    def histogram(self, name: str, histogram: Histogram, help_text: str) -> None:
        self.header(name, "histogram", help_text)
        for bound, count in histogram.cumulative():
            self.sample(f"{name}_bucket", count, (("le", _format_value(bound)),))
        self.sample(f"{name}_count", histogram.count)
        self.sample(f"{name}_sum", histogram.sum)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def render_metrics(
    model_name: str, counters: EngineCounters, gauges: EngineGauges, cache: CacheConfig
) -> str:
    """The Prometheus text exposition (format 0.0.4) of one simulated replica."""
    out = _Writer(model_name)
    out.gauge(
        "vllm:num_requests_running",
        gauges.running,
        "Number of requests in model execution batches.",
    )
    out.gauge(
        "vllm:num_requests_waiting", gauges.waiting, "Number of requests waiting to be processed."
    )
    out.gauge(
        "vllm:gpu_cache_usage_perc",
        gauges.kv_cache_usage,
        "GPU KV-cache usage. 1 means 100 percent usage (old name).",
    )
    out.gauge(
        "vllm:kv_cache_usage_perc",
        gauges.kv_cache_usage,
        "KV-cache usage. 1 means 100 percent usage.",
    )
    out.counter(
        "vllm:gpu_prefix_cache_queries",
        counters.prefix_cache_queries,
        "GPU prefix cache queries, in terms of number of queried tokens (old name).",
    )
    out.counter(
        "vllm:gpu_prefix_cache_hits",
        counters.prefix_cache_hits,
        "GPU prefix cache hits, in terms of number of cached tokens (old name).",
    )
    out.counter(
        "vllm:prefix_cache_queries",
        counters.prefix_cache_queries,
        "Prefix cache queries, in terms of number of queried tokens.",
    )
    out.counter(
        "vllm:prefix_cache_hits",
        counters.prefix_cache_hits,
        "Prefix cache hits, in terms of number of cached tokens.",
    )
    out.counter("vllm:prompt_tokens", counters.prompt_tokens, "Number of prefill tokens processed.")
    out.counter(
        "vllm:generation_tokens",
        counters.generation_tokens,
        "Number of generation tokens processed.",
    )
    out.header("vllm:request_success_total", "counter", "Count of successfully processed requests.")
    for reason, count in counters.request_success.items():
        out.sample("vllm:request_success_total", count, (("finished_reason", reason),))
    out.histogram(
        "vllm:time_to_first_token_seconds",
        counters.ttft,
        "Histogram of time to first token in seconds.",
    )
    out.histogram(
        "vllm:e2e_request_latency_seconds",
        counters.e2e,
        "Histogram of end to end request latency in seconds.",
    )
    out.header("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig.")
    out.sample(
        "vllm:cache_config_info",
        1.0,
        (
            ("block_size", str(cache.block_size)),
            ("enable_prefix_caching", str(cache.enable_prefix_caching)),
            ("num_gpu_blocks", str(cache.num_gpu_blocks)),
        ),
    )
    return out.text()
