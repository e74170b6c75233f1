"""The gateway's request pipeline, minus the proxying: what Envoy should do with a request.

Headers and the buffered body go in; out comes either a ``Forward`` (the model Envoy routes
on, the rewritten body, optionally the replica, and what to do with the answer) or a
``Reply`` the processor sends instead of the upstream (guard refusal, cache hit, error).
The steps are the gateway's own functions in the gateway's order: parse, choose the model
(aliases, ``MoM``/``auto`` semantic routing with system prompt, reasoning and tool
filtering), guards, cache; with ``access.enabled`` also the key, its models and routes, its
rate limits and the model's admission slot, as ``mixroute serve`` checks them.

With ``observability.tracing`` on, each run is one trace (continuing the client's
``traceparent``) with the stage spans of ``mixroute serve``; its root span covers the
processor's decision, and a forwarded request carries the trace on to the upstream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from mixroute import headers as h
from mixroute.access.admission import AdmissionGate
from mixroute.api.openai import PASSTHROUGH_PATHS, choose_model, model_list
from mixroute.api.parsing import model_from_multipart, parse_json_body
from mixroute.cache.policy import CachePlan, plan_cache_lookup
from mixroute.context import RequestContext
from mixroute.errors import GatewayError, bad_request, no_healthy_endpoint, rejection_reason
from mixroute.extproc.envoy_config import host_port
from mixroute.gateway import Gateway
from mixroute.guards.policy import check_guards
from mixroute.observability.recorder import CLIENT_CLOSED
from mixroute.observability.tracing import (
    RequestTrace,
    describe_cache,
    describe_decision,
    describe_guards,
)
from mixroute.proxy.usage import UsageTap
from mixroute.replies import Reply, error_reply, hit_reply, refusal_reply
from mixroute.runtime import Runtime

KIND_BY_PATH: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    **{path: "other" for path in PASSTHROUGH_PATHS},
}


def kind_for(path: str) -> str | None:
    """The gateway's name for what a path does, or None: not ours, Envoy passes it through."""
    return KIND_BY_PATH.get(path.split("?", 1)[0])


@dataclass(slots=True)
class Forward:
    """Send the request upstream: to ``model``'s cluster, or to ``destination`` when set."""

    ctx: RequestContext
    model: str
    destination: str | None
    body: bytes | None  # the rewritten body; None when the client's bytes go as they are
    plan: CachePlan | None  # store the answer in the cache when it completes
    slot: AdmissionGate | None = None  # the model's in-flight slot, released when it ends
    trace_headers: dict[str, str] = field(default_factory=dict)  # traceparent for upstream

    def release(self) -> None:
        """Give the in-flight slot back (once; the request has ended)."""
        if self.slot is not None:
            self.slot.release()
            self.slot = None


class RequestPipeline:
    """One per process; ``run`` is called once per request with its own state."""

    def __init__(self, gateway: Gateway, *, set_destination: bool) -> None:
        self._gateway = gateway
        self._set_destination = set_destination
        self._pid = str(os.getpid())

    @property
    def key_headers(self) -> tuple[str, ...]:
        """The headers that may carry a client's API key (read only with access on)."""
        access = self._gateway.access
        return access.key_headers if access.enabled else ()

    async def run(
        self,
        kind: str,
        path: str,
        headers: Mapping[str, str],
        raw: bytes,
        remote: str | None = None,
    ) -> Forward | Reply:
        started = time.monotonic()
        runtime = self._gateway.runtime  # taken once: a reload mid-request does not apply
        request_id = _request_id(headers)
        holder: list[RequestContext] = []  # the context, once the body is parsed
        error = None
        path_only = path.split("?", 1)[0]
        trace = self._gateway.tracing.begin("POST", path_only, headers, request_id)
        verdict: Forward | Reply | None = None
        try:
            verdict = await self._run(
                kind, path, headers, raw, remote, runtime, request_id, started, holder, trace
            )
        except GatewayError as exc:
            self._gateway.metrics.rejected.labels(rejection_reason(exc)).inc()
            verdict, error = error_reply(exc, {h.REQUEST_ID: request_id}), exc.code
        finally:
            ctx = holder[0] if holder else None
            if isinstance(verdict, Forward):  # the trace goes on upstream, in the model server
                trace.inject(verdict.trace_headers)
                trace.finish(0, ctx, verdict.ctx.response_headers, None)
            elif isinstance(verdict, Reply):
                trace.finish(verdict.status, ctx, verdict.headers, error)
            else:  # an unexpected failure; the processor answers it with a 500
                trace.finish(500, ctx, None, "internal_error")
        if isinstance(verdict, Reply):  # answered here: the request ends now
            self._gateway.recorder.finish(
                request_id=request_id,
                path=path_only,
                started=started,
                ctx=holder[0] if holder else None,
                status=verdict.status,
                headers=verdict.headers,
                error=error,
            )
        return verdict

    def finish(self, forward: Forward, status: int) -> None:
        """Record a forwarded request once Envoy has relayed its answer (``status`` 0: the
        stream ended before the answer's headers, which the record counts as client closed)."""
        ctx = forward.ctx
        self._gateway.recorder.finish(
            request_id=ctx.request_id,
            path=ctx.path,
            started=ctx.started,
            ctx=ctx,
            status=status or CLIENT_CLOSED,
        )

    async def _run(
        self,
        kind: str,
        path: str,
        headers: Mapping[str, str],
        raw: bytes,
        remote: str | None,
        runtime: Runtime,
        request_id: str,
        started: float,
        holder: list[RequestContext],
        trace: RequestTrace,
    ) -> Forward | Reply:
        access = self._gateway.access
        principal = access.authenticate(headers, remote) if access.enabled else None
        if principal is not None:
            access.admit_request(principal)
        limit = runtime.config.server.max_body_bytes
        if len(raw) > limit:
            raise GatewayError(
                413,
                f"Request body of {len(raw)} bytes is larger than the {limit}-byte limit.",
                code="request_too_large",
            )
        content_type = headers.get("content-type", "")
        with trace.span("mixroute.parse"):
            body = _parse(raw, kind, content_type)
        requested = body["model"]
        ctx = RequestContext(
            request_id=request_id,
            path=path.split("?", 1)[0],
            requested_model=requested,
            model=requested,
            body=body,
            raw_body=raw,
            stream=body.get("stream") is True,
            # With access on the key decides the tenant (the cache scope), never a header.
            tenant=principal.tenant if principal is not None else headers.get(h.TENANT),
            debug=headers.get(h.DEBUG) == "1",
            started=started,
            trace=trace,
        )
        holder.append(ctx)
        if principal is not None:
            access.admit_tokens(principal, ctx)
        ctx.response_headers[h.REQUEST_ID] = request_id
        if ctx.debug:
            ctx.response_headers[h.WORKER] = self._pid
        gateway = self._gateway
        with trace.span("mixroute.decision") as span:
            await choose_model(ctx, runtime, kind, content_type, gateway.metrics)
            describe_decision(span, ctx)
        if principal is not None:
            access.check_model(principal, ctx)
        with trace.span("mixroute.guards") as span:
            refusal = await check_guards(ctx, runtime, gateway)
            describe_guards(span, ctx, refusal is not None)
        if refusal is not None:
            return refusal_reply(ctx, refusal)
        if principal is not None:  # a guard may have rerouted the request to another model
            access.check_model(principal, ctx)
        bypass = headers.get(h.CACHE_CONTROL, "").lower() == "no-cache"
        with trace.span("mixroute.cache") as span:
            lookup = await plan_cache_lookup(ctx, runtime, gateway, bypass=bypass)
            describe_cache(span, ctx, lookup.hit is not None)
        if lookup.hit is not None and lookup.key is not None:
            return hit_reply(ctx, lookup.key, lookup.hit)
        destination, upstream_model = None, ctx.model
        if self._set_destination:
            with trace.span("mixroute.balancer"):
                destination, upstream_model = _pick(ctx, runtime)
        rewritten = None
        multipart = content_type.startswith("multipart/")
        if not multipart and (ctx.body_changed or upstream_model != ctx.requested_model):
            ctx.body["model"] = upstream_model
            rewritten = orjson.dumps(ctx.body)
        if ctx.on_usage is not None:  # tokens per minute: the completion is charged too
            ctx.tap = UsageTap(ctx.tap, ctx.on_usage)
        slot = await access.take_slot(ctx.model, principal)  # last: nothing after may fail
        return Forward(ctx, ctx.model, destination, rewritten, lookup.plan, slot)

    def list_models(self, headers: Mapping[str, str], remote: str | None) -> Reply:
        """``GET /v1/models`` as the gateway answers it (the default model's replicas behind
        Envoy would list only themselves)."""
        try:
            body = model_list(self._gateway, headers, remote)
        except GatewayError as exc:
            self._gateway.metrics.rejected.labels(rejection_reason(exc)).inc()
            return error_reply(exc)
        return Reply(200, {"content-type": "application/json"}, body)


def _parse(raw: bytes, kind: str, content_type: str) -> dict[str, Any]:
    """As the gateway parses (``api/openai.py``): JSON, or the model field of a form upload."""
    if kind == "other" and content_type.startswith("multipart/"):
        model = model_from_multipart(raw)
        if not model:
            raise bad_request("The form has no `model` field.", param="model")
        return {"model": model}
    return parse_json_body(raw, kind)


def _pick(ctx: RequestContext, runtime: Runtime) -> tuple[str, str]:
    """The balancer's pick for ``ctx.model``: (``host:port`` for Envoy, the served name)."""
    name = runtime.pick_endpoint(ctx.model)
    endpoint = runtime.registry.get(name) if name is not None else None
    if endpoint is None:
        raise no_healthy_endpoint(ctx.model)
    ctx.response_headers[h.ENDPOINT] = endpoint.name
    return host_port(endpoint.url), endpoint.config.upstream_model


def _request_id(headers: Mapping[str, str]) -> str:
    given = headers.get(h.REQUEST_ID)
    if given and len(given) <= 128 and given.isprintable():
        return given
    return os.urandom(16).hex()
