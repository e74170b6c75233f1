"""Token usage and spend, read from upstream answers for models that have prices.

Only models with ``pricing`` pay for this: their answers are parsed (JSON) or watched for
the usage chunk (SSE, present when the client asked for ``stream_options.include_usage``).
"""

from __future__ import annotations

from typing import Any

import orjson

from mixroute.config.schema import PricingConfig
from mixroute.observability.metrics import Metrics


def usage_from_json(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return usage if isinstance(usage, dict) else None


class StreamUsageWatcher:
    """Keeps the last SSE event that carries ``usage`` (it comes at the end of a stream)."""

    def __init__(self) -> None:
        self._tail = b""
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        if b'"usage"' not in data:
            self._tail = data[-64:]
            return
        for line in data.split(b"\n"):
            if line.startswith(b"data: {") and b'"usage"' in line:
                found = usage_from_json(line[6:])
                if found:
                    self.usage = found
        self._tail = data[data.rfind(b"\n") + 1 :]


def account(
    metrics: Metrics, model: str, route: str, pricing: PricingConfig, usage: dict[str, Any]
) -> None:
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return
    metrics.tokens.labels(model, "prompt").inc(prompt)
    metrics.tokens.labels(model, "completion").inc(completion)
    cost = prompt * pricing.prompt_per_million + completion * pricing.completion_per_million
    metrics.cost.labels(model, route).inc(cost / 1_000_000)
