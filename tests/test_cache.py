"""The semantic cache: keys, the second check, the memory index, capture and replay, and the
gateway path end to end (stream <-> JSON replay, no errors or truncated streams cached)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest

from helpers import RunningGateway, SimPool, config_for, start_gateway
from mixroute.cache.capture import AnswerCapture
from mixroute.cache.check import agree, facts
from mixroute.cache.key import cache_request
from mixroute.cache.memory import MemoryCache
from mixroute.cache.replay import as_sse
from mixroute.cache.store import CachedAnswer
from mixroute.config.schema import CacheConfig

SETTINGS = CacheConfig(enabled=True)


def key(body: dict[str, Any], tenant: str | None = None, allow_sampled: bool = True) -> Any:
    text = body["messages"][-1]["content"]
    return cache_request(
        body,
        model="m",
        route="",
        tenant=tenant,
        settings=SETTINGS,
        allow_sampled=allow_sampled,
        text=text,
    )


def chat(*turns: str, **extra: Any) -> dict[str, Any]:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    return {"model": "m", "messages": messages, **extra}


def test_key_scope_covers_what_changes_the_answer() -> None:
    base = key(chat("What is a monad?"))
    assert base.scope == key(chat("Explain monads")).scope
    assert base.exact != key(chat("Explain monads")).exact
    assert base.scope != key(chat("What is a monad?", temperature=0.7)).scope
    assert base.scope != key(chat("What is a monad?", max_tokens=5)).scope
    assert base.scope != key(chat("What is a monad?"), tenant="team-b").scope
    assert base.scope != key(chat("Hi", "Hello!", "What is a monad?")).scope
    with_system = chat("What is a monad?")
    with_system["messages"].insert(0, {"role": "system", "content": "Answer in French."})
    assert base.scope != key(with_system).scope
    assert (
        base.scope
        != key(
            chat("What is a monad?", tools=[{"type": "function", "function": {"name": "f"}}])
        ).scope
    )


def test_not_cacheable_requests() -> None:
    assert key(chat("a", "b")) is None  # ends with an assistant turn
    assert key(chat("What is a monad?", n=2)) is None
    assert key(chat("What is a monad?"), allow_sampled=False) is None
    assert key(chat("What is a monad?", temperature=0), allow_sampled=False) is not None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("convert 5 miles to km", "convert 8 miles to km"),
        ("What is the capital of Austria?", "What is the capital of Australia?"),
        ("which foods are safe for dogs", "which foods are not safe for dogs"),
        ("100 F in C", "100 C in F"),
        ("reverse a string in Python", "reverse a string in Rust"),
        ("is Java faster than Python", "is Python faster than Java"),
        ("weather tomorrow in Oslo", "weather yesterday in Oslo"),
        ("pros of remote work", "cons of remote work"),
    ],
)
def test_second_check_rejects_near_misses(a: str, b: str) -> None:
    assert not agree(facts(a), facts(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I reverse a list in Python?", "how can i reverse a python list"),
        ("What's 12 * 13?", "what is 12 * 13"),
        ("Tell me about the Eiffel Tower", "Give me some facts about the Eiffel Tower"),
    ],
)
def test_second_check_accepts_paraphrases(a: str, b: str) -> None:
    assert agree(facts(a), facts(b))


def unit_vector(seed: int, dimension: int = 8) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dimension).astype(np.float32)
    return vector / np.linalg.norm(vector)


ANSWER = CachedAnswer(
    "m", "forty-two", "stop", {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
)


@pytest.mark.parametrize("hnsw_above", [10_000, 4])
def test_memory_cache_exact_semantic_ttl_and_lru(hnsw_above: int) -> None:
    now = [0.0]
    settings = CacheConfig(enabled=True, max_entries=20, ttl_s=10, hnsw_above=hnsw_above)
    cache = MemoryCache(settings, dimension=8, clock=lambda: now[0])
    stored = key(chat("What is the answer?"))
    vector = unit_vector(1)
    cache.store_now(stored, vector, ANSWER)
    hit = cache.lookup_now(stored, vector, 0.9)
    assert hit is not None and hit.exact
    similar = key(chat("What is the answer, please?"))
    nearby = vector + 0.05 * unit_vector(2)
    hit = cache.lookup_now(similar, (nearby / np.linalg.norm(nearby)).astype(np.float32), 0.9)
    assert hit is not None and not hit.exact and hit.similarity > 0.9
    assert cache.lookup_now(similar, unit_vector(3), 0.9) is None
    for index in range(30):  # LRU keeps the bound
        cache.store_now(key(chat(f"question {index}")), unit_vector(100 + index), ANSWER)
    assert cache.size() == 20
    assert cache.lookup_now(stored, vector, 0.9) is None  # evicted as least recently used
    recent = key(chat("question 29"))
    assert cache.lookup_now(recent, unit_vector(129), 0.9) is not None
    now[0] = 11.0  # past the TTL
    assert cache.lookup_now(recent, unit_vector(129), 0.9) is None


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


def test_capture_stream_strips_usage_and_replays() -> None:
    capture = AnswerCapture("m", strip_usage_event=True, store_tool_calls=False)
    stream = (
        sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "Hello "}}]},
            {"choices": [{"index": 0, "delta": {"content": "world"}, "finish_reason": "stop"}]},
            {
                "choices": [],
                "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
            },
        )
        + b"data: [DONE]\n\n"
    )
    seen = b"".join(capture.on_chunk(stream[i : i + 7]) for i in range(0, len(stream), 7))
    seen += capture.flush()
    capture.on_stream_end(complete=True)
    assert b'"usage"' not in seen and b"[DONE]" in seen and b"world" in seen
    assert capture.answer == CachedAnswer(
        "m", "Hello world", "stop", {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    )
    events = as_sse("m", "Hello world", "stop", capture.answer.usage, include_usage=True)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert len({p["id"] for p in payloads}) == 1
    assert (
        "".join(p["choices"][0]["delta"].get("content", "") for p in payloads[:-1] if p["choices"])
        == "Hello world"
    )
    assert payloads[-1]["usage"]["total_tokens"] == 6 and events[-1] == b"data: [DONE]\n\n"


def test_capture_ignores_broken_and_tool_streams() -> None:
    broken = AnswerCapture("m", strip_usage_event=False, store_tool_calls=False)
    broken.on_chunk(sse({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}))
    broken.on_stream_end(complete=False)
    assert broken.answer is None
    tools = AnswerCapture("m", strip_usage_event=False, store_tool_calls=False)
    tools.on_chunk(
        sse(
            {
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [{"id": "1"}]}, "finish_reason": "stop"}
                ]
            }
        )
    )
    tools.on_stream_end(complete=True)
    assert tools.answer is None
    error = AnswerCapture("m", strip_usage_event=False, store_tool_calls=False)
    error.on_body(500, b'{"error": {"message": "boom"}}')
    assert error.answer is None


@pytest.fixture
async def cached_gw(sim_pool: SimPool, gateways: list[RunningGateway]) -> RunningGateway:
    sim = sim_pool.start("alpha", "alpha-0")
    config = config_for([sim], cache={"enabled": True, "similarity_threshold": 0.85})
    running = await start_gateway(config)
    gateways.append(running)
    return running


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0)
    gw.on_close.append(api.close)
    return api


async def ask(gw: RunningGateway, text: str, **extra: Any) -> tuple[str, dict[str, str], Any]:
    headers = extra.pop("extra_headers", {})
    extra.setdefault("max_tokens", 8)
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="alpha",
        messages=[{"role": "user", "content": text}],
        extra_headers={"x-mixroute-debug": "1", **headers},
        **extra,
    )
    completion = raw.parse()
    return completion.choices[0].message.content or "", dict(raw.headers), completion


async def test_json_hit_then_semantic_hit_then_near_miss(cached_gw: RunningGateway) -> None:
    first, headers, original = await ask(cached_gw, "How do I reverse a list in Python?")
    assert headers["x-mixroute-cache"] == "miss"
    again, headers, replay = await ask(cached_gw, "How do I reverse a list in Python?")
    assert headers["x-mixroute-cache"] == "hit" and again == first
    assert replay.id != original.id and replay.usage == original.usage
    assert replay.choices[0].finish_reason == original.choices[0].finish_reason
    assert "x-mixroute-endpoint" not in headers
    paraphrase, headers, _ = await ask(cached_gw, "how can i reverse a python list")
    assert headers["x-mixroute-cache"] == "hit" and paraphrase == first
    assert 0.85 <= float(headers["x-mixroute-cache-similarity"]) < 1
    await ask(cached_gw, "convert 5 miles to km")
    _, headers, _ = await ask(cached_gw, "convert 8 miles to km")
    assert headers["x-mixroute-cache"] == "miss"


async def test_stream_is_stored_and_replayed_both_ways(cached_gw: RunningGateway) -> None:
    api = client(cached_gw)
    stream = await api.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "Name three primary colours"}],
        max_tokens=6,
        stream=True,
    )
    chunks = [c async for c in stream]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    text, headers, completion = await ask(cached_gw, "Name three primary colours", max_tokens=6)
    assert headers["x-mixroute-cache"] == "hit" and text == streamed
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    replay = await api.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "Name three primary colours"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    replayed = [c async for c in replay]
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == streamed
    assert replayed[-1].usage is not None and replayed[-1].usage.completion_tokens == 6
    assert len({c.id for c in replayed}) == 1


async def test_bypass_tenant_and_history_scopes(cached_gw: RunningGateway) -> None:
    await ask(cached_gw, "What is a closure?")
    _, headers, _ = await ask(
        cached_gw, "What is a closure?", extra_headers={"x-mixroute-cache-control": "no-cache"}
    )
    assert headers["x-mixroute-cache"] == "miss"
    _, headers, _ = await ask(
        cached_gw, "What is a closure?", extra_headers={"x-mixroute-tenant": "other-team"}
    )
    assert headers["x-mixroute-cache"] == "miss"
    raw = await client(cached_gw).chat.completions.with_raw_response.create(
        model="alpha",
        max_tokens=8,
        messages=[
            {"role": "user", "content": "We are talking about JavaScript."},
            {"role": "assistant", "content": "OK."},
            {"role": "user", "content": "What is a closure?"},
        ],
    )
    assert raw.headers["x-mixroute-cache"] == "miss"


async def test_errors_and_truncated_streams_are_not_cached(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sim = sim_pool.start("alpha", "alpha-0", "--crash-after", "0")
    config = config_for([sim], cache={"enabled": True}, balancer={"health": {"interval_s": 30}})
    gw = await start_gateway(config)
    gateways.append(gw)
    body = {
        "model": "alpha",
        "stream": True,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Tell me a fact"}],
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
            assert b"upstream_stream_broken" in await response.read()
        await asyncio.sleep(0.2)
        async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
            assert response.headers.get("x-mixroute-cache") != "hit"
            await response.read()
    entries = gw.gateway.cache
    assert entries is not None
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        assert "mixroute_cache_stores_total 0.0" in await response.text()
