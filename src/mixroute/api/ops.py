"""Operations endpoints: liveness, readiness, metrics and the endpoint table."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from mixroute.api.keys import GATEWAY


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
    for endpoint in gateway.runtime.registry.all():
        gateway.metrics.endpoint_available.labels(endpoint.name, endpoint.model).set(
            1 if endpoint.is_available() else 0
        )
    gateway.metrics.prefix_index_blocks.set(len(gateway.runtime.prefix_index))
    # Refreshed here too: TTL and LRU evictions change the count without a store.
    gateway.metrics.cache_entries.set(gateway.cache.size() if gateway.cache is not None else 0)
    body = await asyncio.get_running_loop().run_in_executor(None, gateway.metrics.render)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def endpoints(request: web.Request) -> web.Response:
    runtime = request.app[GATEWAY].runtime
    table = [e.describe() for e in runtime.registry.all()]
    return web.Response(body=orjson.dumps({"endpoints": table}), content_type="application/json")
