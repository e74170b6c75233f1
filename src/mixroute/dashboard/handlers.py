"""Handlers of the web dashboard: the page, its static assets and its JSON APIs.

Auth: the page and its assets are public (they hold no data); every number it shows comes
from ``/api/v1/dashboard/*``, which the admin-key middleware guards like all of ``/api/``.
A browser cannot add a header to a navigation, so when ``server.admin_key`` is set the page
asks for the key once, keeps it in the tab's ``sessionStorage`` (gone when the tab closes,
never in a URL, a log line or a cookie the browser would send by itself) and sends it as
``x-mixroute-admin-key`` on each call. The page is served with a strict Content-Security-
Policy (its own scripts only, connections to this origin only) and renders data as text,
never as HTML.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from mixroute.api.keys import GATEWAY
from mixroute.dashboard.redact import redact_config
from mixroute.dashboard.stats import window_stats
from mixroute.errors import GatewayError, bad_request
from mixroute.observability.feed import RequestRecord
from mixroute.observability.workers import WorkerSet

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
MAX_FEED_LIMIT = 500
DEFAULT_FEED_LIMIT = 100
WINDOW_S = 120.0
BUCKET_S = 2.0

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def add_dashboard_routes(router: web.UrlDispatcher) -> None:
    """Register the page, its assets and its data APIs (``app.py`` calls this once)."""
    router.add_get("/dashboard", page)
    router.add_get("/dashboard/", page)
    router.add_get("/dashboard/{asset}", asset)
    router.add_get("/api/v1/dashboard/feed", feed)
    router.add_get("/api/v1/dashboard/state", state)
    router.add_get("/api/v1/dashboard/config", config)


def _require_enabled(request: web.Request) -> None:
    """``server.dashboard: false`` hides everything; read per request so a reload applies."""
    if not request.app[GATEWAY].runtime.config.server.dashboard:
        raise GatewayError(404, "The dashboard is turned off (server.dashboard).", code="not_found")


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), content_type="application/json", headers=_API_HEADERS
    )


async def page(request: web.Request) -> web.StreamResponse:
    _require_enabled(request)
    return _file("index.html")


async def asset(request: web.Request) -> web.StreamResponse:
    _require_enabled(request)
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise GatewayError(404, f"No dashboard asset {name!r}.", code="not_found")
    return _file(name)


def _file(name: str) -> web.FileResponse:
    """A file from ``static/``; only the names in ``ASSETS`` (no path from the client)."""
    response = web.FileResponse(STATIC_DIR / name, headers=_PAGE_HEADERS)
    response.content_type = ASSETS[name]
    response.charset = "utf-8"
    return response


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """A bounded integer query parameter; anything else is a 400, never a 500."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    expected = f"`{name}` must be an integer from {low} to {high}."
    if high >= 10**9:
        expected = f"`{name}` must be an integer of at least {low}."
    # ASCII digits only, and few of them: a megabyte of digits must not cost a parse.
    if _INTEGER.fullmatch(raw) is None:
        raise bad_request(expected, param=name)
    value = int(raw)
    if not low <= value <= high:
        raise bad_request(expected, param=name)
    return value


async def feed(request: web.Request) -> web.Response:
    """Records newer than ``after`` (a seq the caller already has), oldest first; with
    ``--workers N``, every worker's (observability/workers.py)."""
    _require_enabled(request)
    after = _int_param(request, "after", 0, 0, 10**18)
    limit = _int_param(request, "limit", DEFAULT_FEED_LIMIT, 1, MAX_FEED_LIMIT)
    gateway = request.app[GATEWAY]
    decisions = gateway.recorder.feed
    records = [r.to_dict() for r in decisions.recent(after, limit)]
    workers = gateway.workers
    if workers is None:
        newest = decisions.recent(0, 1)
        latest, worker = (newest[0].seq if newest else 0), os.getpid()
    else:
        # Numbered up to here means appended by now, in every worker: nothing numbered up to
        # ``latest`` can turn up after the caller has moved past it.
        latest, worker = workers.sequence.current(), workers.gateway_id
        for body in (await workers.ask_others(f"/feed?after={after}&limit={limit}")).values():
            records.extend(orjson.loads(body)["records"])
        records = sorted((r for r in records if r["seq"] <= latest), key=lambda r: r["seq"])
        records = records[-limit:]
    return _json(
        {
            "records": records,
            # A caller whose ``after`` is past this (the gateway restarted) starts over.
            "latest_seq": latest,
            # Whose seqs these are: the process, or with --workers N the whole gateway.
            "worker": worker,
        }
    )


async def own_feed(request: web.Request) -> web.Response:
    """For a sibling worker: this worker's records after ``after`` (its unix socket only)."""
    after = _int_param(request, "after", 0, 0, 10**18)
    limit = _int_param(request, "limit", DEFAULT_FEED_LIMIT, 1, MAX_FEED_LIMIT)
    records = request.app[GATEWAY].recorder.feed.recent(after, limit)
    return _json({"records": [r.to_dict() for r in records]})


async def own_load(request: web.Request) -> web.Response:
    """For a sibling worker: what this worker has sent each endpoint (its unix socket only)."""
    endpoints = request.app[GATEWAY].runtime.registry.all()
    return _json({e.name: {k: getattr(e.state, k) for k in _LOAD} for e in endpoints})


_LOAD = ("in_flight", "requests", "failures")


async def state(request: web.Request) -> web.Response:
    """Models and their endpoints (health, load, breaker, engine stats) and recent traffic."""
    _require_enabled(request)
    gateway = request.app[GATEWAY]
    runtime = gateway.runtime
    settings = runtime.config
    decisions = gateway.recorder.feed
    records = decisions.recent(0, max(1, len(decisions)))
    loads: dict[str, dict[str, int]] = {}  # the other workers' load per endpoint, summed
    if gateway.workers is not None:
        records, loads = await _siblings_view(gateway.workers, records)
    now = time.time()
    window = window_stats(records, now, WINDOW_S, BUCKET_S)
    by_endpoint = window.pop("endpoints")
    by_model = window.pop("models")
    models = []
    for name in sorted(set(runtime.model_names()) | set(settings.models)):
        endpoints = []
        for endpoint in runtime.registry.for_model(name):
            described = endpoint.describe()
            for key, value in loads.get(endpoint.name, {}).items():
                described[key] = _as_int(described[key]) + value
            described["url"] = endpoint.url
            described["role"] = endpoint.config.role
            described["window"] = by_endpoint.get(endpoint.name)
            endpoints.append(described)
        model_settings = settings.models.get(name)
        models.append(
            {
                "name": name,
                "aliases": list(model_settings.aliases) if model_settings else [],
                "policy": (model_settings.policy if model_settings else None)
                or settings.balancer.policy,
                "endpoints": endpoints,
                "available": sum(1 for e in endpoints if e["available"]),
                "in_flight": sum(_as_int(e["in_flight"]) for e in endpoints),
                "window": by_model.get(name),
            }
        )
    every = [e for m in models for e in m["endpoints"]]
    return _json(
        {
            "time": now,
            "worker": os.getpid(),
            "ready": runtime.is_ready(),
            "auto_models": list(settings.routing.auto_models),
            "default_model": settings.routing.default_model,
            "routes": [r.name for r in settings.routes],
            "cache": settings.cache.enabled,
            "guards": {
                "pii": settings.guards.pii.action if settings.guards.pii.enabled else "off",
                "jailbreak": settings.guards.jailbreak.action
                if settings.guards.jailbreak.enabled
                else "off",
            },
            "totals": {
                "models": len(models),
                "endpoints": len(every),
                "available": sum(1 for e in every if e["available"]),
                "in_flight": sum(_as_int(e["in_flight"]) for e in every),
                "requests": sum(_as_int(e["requests"]) for e in every),
                "failures": sum(_as_int(e["failures"]) for e in every),
                "records": max((r.seq for r in records), default=0),
            },
            "models": models,
            "window": window,
        }
    )


def _as_int(value: object) -> int:
    return value if isinstance(value, int) else 0


async def _siblings_view(
    workers: WorkerSet, records: list[RequestRecord]
) -> tuple[list[RequestRecord], dict[str, dict[str, int]]]:
    """Every worker's recent records (for the traffic window) and the other workers' load
    per endpoint (health and breakers stay this worker's view: each worker probes)."""
    feeds, load_answers = await asyncio.gather(
        workers.ask_others(f"/feed?after=0&limit={MAX_FEED_LIMIT}"), workers.ask_others("/load")
    )
    merged = list(records)
    for body in feeds.values():
        merged.extend(RequestRecord(**r) for r in orjson.loads(body)["records"])
    loads: dict[str, dict[str, int]] = {}
    for body in load_answers.values():
        for name, load in orjson.loads(body).items():
            into = loads.setdefault(name, dict.fromkeys(_LOAD, 0))
            for key in _LOAD:
                into[key] += int(load.get(key, 0))
    return merged, loads


async def config(request: web.Request) -> web.Response:
    """The running config as JSON, with every secret masked (see ``redact``)."""
    _require_enabled(request)
    running = request.app[GATEWAY].runtime.config
    return _json({"config": redact_config(running.model_dump(mode="json"))})
