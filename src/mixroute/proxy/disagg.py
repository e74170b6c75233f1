"""Disaggregated prefill and decode (xPyD), the way vLLM's NIXL/P2P connectors expect it.

A model whose endpoints include ``role: prefill`` ones is served in two steps: the prompt
goes to a prefill endpoint as a non-streamed request with ``max_tokens: 1`` and
``kv_transfer_params: {"do_remote_decode": true, ...}``; the ``kv_transfer_params`` in its
answer (where the KV blocks are) go with the original request to a decode endpoint, whose
answer (streamed or not) goes to the client. Both sides are balanced by the model's policy;
a prefill failure is retried on another prefill endpoint, like any attempt.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from mixroute.balancer.endpoint import Endpoint
from mixroute.context import RequestContext
from mixroute.errors import GatewayError
from mixroute.runtime import Runtime

PREFILL_REQUEST_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def split_roles(endpoints: list[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]] | None:
    """(prefill, decode) endpoints, or None when the model is not disaggregated."""
    prefill = [e for e in endpoints if e.config.role == "prefill"]
    if not prefill:
        return None
    return prefill, [e for e in endpoints if e.config.role in ("decode", "both")]


def prefill_body(body: dict[str, Any], model: str) -> bytes:
    prefill = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    prefill["model"] = model
    prefill["max_tokens"] = 1
    if "max_completion_tokens" in prefill:
        prefill["max_completion_tokens"] = 1
    prefill["kv_transfer_params"] = dict(PREFILL_REQUEST_PARAMS)
    return orjson.dumps(prefill)


async def run_prefill(
    session: aiohttp.ClientSession,
    path: str,
    ctx: RequestContext,
    endpoints: list[Endpoint],
    runtime: Runtime,
    headers: dict[str, str],
) -> tuple[Endpoint, dict[str, Any]]:
    """Prefill on one endpoint (retrying others); returns it and its kv_transfer_params."""
    policy = runtime.policy_for(ctx.model)
    timeouts = runtime.config.timeouts
    tried: set[str] = set()
    last = "no prefill endpoint is available"
    for attempt in range(runtime.config.balancer.retry.max_attempts):
        now = time.monotonic()
        candidates = [e for e in endpoints if e.name not in tried and e.is_available(now)]
        if not candidates:
            break
        endpoint = policy.pick(candidates, ctx)
        tried.add(endpoint.name)
        if attempt:
            await asyncio.sleep(runtime.config.balancer.retry.backoff_s * 2 ** (attempt - 1))
        endpoint.begin(now)
        try:
            async with asyncio.timeout(timeouts.first_byte_s):
                async with session.post(
                    endpoint.url + path,
                    data=prefill_body(ctx.body, endpoint.config.upstream_model),
                    headers={**headers, "Content-Type": "application/json"},
                ) as response:
                    payload = await response.read()
                    status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            endpoint.record_failure("prefill")
            last = f"prefill on {endpoint.name} failed: {type(exc).__name__}"
            continue
        finally:
            endpoint.end()
        if status >= 500:
            endpoint.record_failure("prefill_5xx")
            last = f"prefill on {endpoint.name} answered {status}"
            continue
        if status >= 400:
            raise GatewayError(
                status,
                f"The prefill endpoint {endpoint.name} refused the request ({status}).",
                error_type="upstream_error",
                code="prefill_rejected",
            )
        endpoint.record_success()
        try:
            params = orjson.loads(payload).get("kv_transfer_params")
        except (orjson.JSONDecodeError, AttributeError):
            params = None
        if not isinstance(params, dict):
            raise GatewayError(
                502,
                f"The prefill endpoint {endpoint.name} returned no "
                "kv_transfer_params; is it running with a KV connector?",
                error_type="upstream_error",
                code="prefill_without_kv_params",
            )
        return endpoint, params
    raise GatewayError(
        503,
        f"Disaggregated model `{ctx.model}`: {last}.",
        error_type="service_unavailable",
        code="no_prefill_endpoint",
    )
