"""Build the aiohttp application around a ``Gateway``."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from mixroute import headers as h
from mixroute.api import classify, openai, ops, spec
from mixroute.api.keys import GATEWAY
from mixroute.dashboard import add_dashboard_routes
from mixroute.dashboard import handlers as dashboard_handlers
from mixroute.errors import GatewayError, rejection_reason
from mixroute.gateway import Gateway

log = logging.getLogger(__name__)

_ADMIN_PREFIXES = ("/api/", "/admin/")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as an OpenAI-shaped error; nothing escapes as a bare 500 page."""
    try:
        if request.path.startswith(_ADMIN_PREFIXES):
            _check_admin_key(request)
        return await handler(request)
    except GatewayError as exc:
        request.app[GATEWAY].metrics.rejected.labels(rejection_reason(exc)).inc()
        return exc.response({h.REQUEST_ID: openai.request_id_for(request)})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        error = GatewayError(
            exc.status,
            exc.reason,
            code=code.get(exc.status, "http_error"),
            error_type="invalid_request_error",
        )
        return error.response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return GatewayError(
            500,
            "Internal gateway error; the request id is in the logs.",
            error_type="server_error",
            code="internal_error",
        ).response({h.REQUEST_ID: openai.request_id_for(request)})


def _check_admin_key(request: web.Request) -> None:
    expected = request.app[GATEWAY].runtime.config.server.admin_key
    if expected is None:
        return
    given = request.headers.get(h.ADMIN_KEY, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise GatewayError(
            401,
            f"This endpoint needs the admin key in the {h.ADMIN_KEY} header.",
            error_type="authentication_error",
            code="invalid_admin_key",
        )


def build_app(gateway: Gateway) -> web.Application:
    max_body = gateway.runtime_config_max_body()
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body)
    app[GATEWAY] = gateway

    async def on_startup(app: web.Application) -> None:
        await gateway.start()

    async def on_cleanup(app: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    router = app.router
    router.add_post("/v1/chat/completions", openai.chat_completions)
    router.add_post("/v1/completions", openai.completions)
    router.add_post("/v1/embeddings", openai.embeddings)
    router.add_get("/v1/models", openai.list_models)
    for path in openai.PASSTHROUGH_PATHS:
        router.add_post(path, openai.passthrough)
    router.add_get("/health", ops.health)
    router.add_get("/ready", ops.ready)
    router.add_get("/metrics", ops.metrics)
    router.add_get("/openapi.json", spec.openapi)
    router.add_get("/api/v1/endpoints", ops.endpoints)
    router.add_post("/api/v1/classify/intent", classify.classify_intent)
    router.add_post("/api/v1/classify/batch", classify.classify_batch)
    router.add_post("/api/v1/classify/pii", classify.classify_pii)
    router.add_post("/api/v1/classify/security", classify.classify_security)
    router.add_post("/api/v1/route", classify.route_dry_run)
    add_dashboard_routes(router)
    return app


def build_sibling_app(gateway: Gateway) -> web.Application:
    """What a worker answers its sibling workers on its unix socket (observability/
    workers.py): its own metrics, feed and endpoint load, for the one view of all workers."""
    app = web.Application(middlewares=[error_middleware])
    app[GATEWAY] = gateway
    app.router.add_get("/metrics", ops.own_metrics)
    app.router.add_get("/feed", dashboard_handlers.own_feed)
    app.router.add_get("/load", dashboard_handlers.own_load)
    return app
