"""The classify API: the semantic layer's answers without calling any model.

``processing_time_ms`` is the server's whole time for the call, from handler entry to the
response body being ready, so it includes queueing for the embedding thread.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from mixroute.api.keys import GATEWAY
from mixroute.api.parsing import parse_json_body, read_body
from mixroute.errors import bad_request
from mixroute.semantic.router import SemanticRouter

MAX_BATCH_TEXTS = 256


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    runtime = request.app[GATEWAY].runtime
    raw = await read_body(request, runtime.config.server.max_body_bytes)
    return parse_json_body(raw, "api")


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str):
        raise bad_request("`text` is required and must be a string.", param="text")
    return text


async def _router(request: web.Request) -> SemanticRouter:
    gateway = request.app[GATEWAY]
    runtime = gateway.runtime
    if runtime.router is not None:
        return runtime.router
    assets = await gateway.semantic_assets()
    return await SemanticRouter.build(runtime.config, assets.engine, assets.domain_head)


async def _intent(router: SemanticRouter, text: str) -> dict[str, Any]:
    started = time.perf_counter()
    vector = await router.engine.embed(text)
    category, confidence, probabilities, _ = router.domain.evaluate(vector)
    return {
        "classification": {
            "category": category,
            "confidence": round(confidence, 4),
            "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
        },
        "probabilities": {k: round(v, 4) for k, v in probabilities.items()},
    }


async def classify_intent(request: web.Request) -> web.Response:
    started = time.perf_counter()
    text = _text(await _body(request))
    result = await _intent(await _router(request), text)
    result["classification"]["processing_time_ms"] = round(
        (time.perf_counter() - started) * 1000, 3
    )
    return _json(result)


async def _pii(request: web.Request, text: str) -> dict[str, Any]:
    started = time.perf_counter()
    guards = await request.app[GATEWAY].guard_service_for_api()
    entities = await guards.find_pii([{"role": "user", "content": text}])
    return {
        "has_pii": bool(entities),
        "entities": [
            {"type": e.type, "start": e.start, "end": e.end, "score": round(e.score, 3)}
            for _, e in entities
        ],
        "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
    }


async def _security(request: web.Request, text: str) -> dict[str, Any]:
    started = time.perf_counter()
    guards = await request.app[GATEWAY].guard_service_for_api()
    score = await guards.jailbreak_score([text], {})
    return {
        "is_jailbreak": score >= guards.jailbreak_threshold,
        "score": round(score, 4),
        "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
    }


async def classify_pii(request: web.Request) -> web.Response:
    started = time.perf_counter()
    result = await _pii(request, _text(await _body(request)))
    result["processing_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return _json(result)


async def classify_security(request: web.Request) -> web.Response:
    started = time.perf_counter()
    result = await _security(request, _text(await _body(request)))
    result["processing_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return _json(result)


async def _intent_task(request: web.Request, text: str) -> dict[str, Any]:
    return await _intent(await _router(request), text)


TASKS = {
    "intent": _intent_task,
    "pii": _pii,
    "security": _security,
    "jailbreak": _security,
}


async def classify_batch(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = await _body(request)
    task = body.get("task", "intent")
    handler = TASKS.get(task) if isinstance(task, str) else None
    if handler is None:
        raise bad_request(f"`task` must be one of {sorted(TASKS)}.", param="task")
    texts = body.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise bad_request("`texts` must be a list of strings.", param="texts")
    if len(texts) > MAX_BATCH_TEXTS:
        raise bad_request(f"At most {MAX_BATCH_TEXTS} texts per batch.", param="texts")
    results = [await handler(request, text) for text in texts]
    return _json(
        {
            "task": task,
            "results": results,
            "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
        }
    )


async def route_dry_run(request: web.Request) -> web.Response:
    """The full decision for a chat request, as the gateway would make it, without a backend."""
    started = time.perf_counter()
    gateway = request.app[GATEWAY]
    runtime = gateway.runtime
    raw = await read_body(request, runtime.config.server.max_body_bytes)
    body = parse_json_body(raw, "route")
    router = await _router(request)
    outcome = await router.decide(
        "chat", "/v1/chat/completions", body, runtime.has_available_endpoint
    )
    await router.apply(outcome, "/v1/chat/completions", body)
    if outcome.model is not None:
        body["model"] = outcome.model
    signals = outcome.signals
    endpoint = runtime.pick_endpoint(outcome.model) if outcome.model else None
    return _json(
        {
            "model": outcome.model,
            "route": outcome.route_name,
            "category": signals.category,
            "confidence": round(signals.confidence, 4),
            "reasoning": outcome.reasoning,
            "route_score": round(outcome.route_strength, 4),
            "matched_routes": outcome.matched_routes,
            "candidates": [{"model": m, "score": s} for m, s in outcome.candidates],
            "fallbacks": [{"model": m, "reason": r} for m, r in outcome.skipped],
            "endpoint": endpoint,
            "tools": outcome.tools.header() if outcome.tools else None,
            "signals": {
                "domain": {k: round(v, 4) for k, v in signals.probabilities.items()},
                "keywords": [k for k, v in signals.keywords.items() if v],
                "embeddings": {k: round(v, 4) for k, v in signals.embeddings.items()},
                "categories": {k: round(v, 4) for k, v in signals.categories.items()},
                "context": [k for k, v in signals.contexts.items() if v],
                "prompt_tokens": signals.prompt_tokens,
            },
            "request": body,
            "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
        }
    )
