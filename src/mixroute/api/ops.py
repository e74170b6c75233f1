"""Operations endpoints: liveness, readiness, metrics and the endpoint table."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import orjson
from aiohttp import web

from mixroute.api.keys import GATEWAY
from mixroute.balancer.endpoint import Endpoint
from mixroute.gateway import Gateway
from mixroute.observability.metrics import Metrics


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    if gateway.draining:  # shutting down: take this instance out of rotation
        return web.json_response({"status": "draining"}, status=503)
    runtime = gateway.runtime
    if runtime.is_ready():
        return web.json_response({"status": "ready"})
    unavailable = [
        model
        for model in runtime.model_names()
        if not any(e.is_available() for e in runtime.registry.for_model(model))
    ]
    return web.json_response(
        {"status": "not ready", "models_without_endpoint": unavailable}, status=503
    )


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    body = await local_metrics(gateway)
    if gateway.workers is not None:  # --workers N: every worker's series (observability/workers.py)
        body = await gateway.workers.gather_metrics(body)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def own_metrics(request: web.Request) -> web.Response:
    """For a sibling worker: this worker's metrics alone (its unix socket only)."""
    return web.Response(body=await local_metrics(request.app[GATEWAY]))


async def local_metrics(gateway: Gateway) -> bytes:
    """This process's metrics, its gauges refreshed; rendered off the event loop."""
    _refresh_endpoint_gauges(gateway.metrics, gateway.runtime.registry.all())
    gateway.metrics.prefix_index_blocks.set(len(gateway.runtime.prefix_index))
    # Refreshed here too: TTL and LRU evictions change the count without a store.
    gateway.metrics.cache_entries.set(gateway.cache.size() if gateway.cache is not None else 0)
    return await asyncio.get_running_loop().run_in_executor(None, gateway.metrics.render)


def _refresh_endpoint_gauges(metrics: Metrics, endpoints: Iterable[Endpoint]) -> None:
    """Per-endpoint gauges from the endpoints as they are now: an endpoint that left (a
    reload, discovery) loses its series, and engine stats that the last scrape could not
    read are absent rather than the last value seen."""
    gauges = (
        metrics.endpoint_available,
        metrics.endpoint_queue,
        metrics.endpoint_running,
        metrics.endpoint_kv_usage,
        metrics.endpoint_prefix_hit_rate,
    )
    for gauge in gauges:
        gauge.clear()
    for endpoint in endpoints:
        name = endpoint.name
        metrics.endpoint_available.labels(name, endpoint.model).set(
            1 if endpoint.is_available() else 0
        )
        engine = endpoint.state.engine
        if engine is None:
            continue
        metrics.endpoint_queue.labels(name).set(engine.waiting)
        metrics.endpoint_running.labels(name).set(engine.running)
        metrics.endpoint_kv_usage.labels(name).set(engine.kv_usage)
        if engine.prefix_hit_rate is not None:
            metrics.endpoint_prefix_hit_rate.labels(name).set(engine.prefix_hit_rate)


async def endpoints(request: web.Request) -> web.Response:
    runtime = request.app[GATEWAY].runtime
    table = [e.describe() for e in runtime.registry.all()]
    return web.Response(body=orjson.dumps({"endpoints": table}), content_type="application/json")
