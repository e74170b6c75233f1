"""HTTP tests of the simulator served in-process on a real port."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from mixroute.sim import SimServer, SimSettings

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the gateway."}]}

Start = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


@pytest.fixture
async def start_sim() -> AsyncIterator[Start]:
    """Start simulators with fast defaults; every one is stopped at the end of the test."""
    servers: list[SimServer] = []

    async def start(**overrides: Any) -> SimServer:
        options: dict[str, Any] = {
            "model": MODEL,
            "decode_ms_per_token": 0.1,
            "replica_name": "replica-a",
        }
        options.update(overrides)
        server = SimServer(SimSettings(**options))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, **kwargs: Any
) -> tuple[int, Any, dict[str, str]]:
    async with session.post(url, json=body, **kwargs) as response:
        return response.status, await response.json(), dict(response.headers)


async def read_sse(response: aiohttp.ClientResponse) -> list[Any]:
    """Data payloads of an SSE stream; ``[DONE]`` kept as the string."""
    events: list[Any] = []
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            assert event.startswith(b"data: "), event
            data = event[len(b"data: ") :]
            events.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    assert buffer == b""
    return events


async def metric_value(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_chat_completion_shape_and_usage(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim()
    status, body, headers = await post(
        session, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 7}
    )
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 7
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7
    assert headers["x-sim-replica"] == "replica-a"
    assert int(headers["x-sim-prompt-tokens"]) == usage["prompt_tokens"]
    assert float(headers["x-sim-prefill-ms"]) >= 0

    # no max_tokens: the default length, and "stop"; same prompt gives the same text
    _, default, _ = await post(session, sim.url + "/v1/chat/completions", CHAT)
    _, again, _ = await post(session, sim.url + "/v1/chat/completions", CHAT)
    assert default["choices"][0]["finish_reason"] == "stop"
    assert default["usage"]["completion_tokens"] == 16
    assert default["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    # max_completion_tokens is honoured too
    _, newer, _ = await post(
        session, sim.url + "/v1/chat/completions", {**CHAT, "max_completion_tokens": 3}
    )
    assert newer["usage"]["completion_tokens"] == 3


async def test_text_completion_shape(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim(model="other", replica_name=None)
    status, body, headers = await post(
        session,
        sim.url + "/v1/completions",
        {"model": "other", "prompt": "Once upon", "max_tokens": 4},
    )
    assert status == 200
    assert body["object"] == "text_completion"
    assert body["model"] == "other"
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"].split()) == 4
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert headers["x-sim-replica"] == f"127.0.0.1:{sim.port}"
    # token-id prompts are accepted as they are
    _, ids, _ = await post(session, sim.url + "/v1/completions", {"prompt": [5, 6, 7]})
    assert ids["usage"]["prompt_tokens"] == 3


async def test_chat_stream_chunks_usage_and_done(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim()
    request = {**CHAT, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    async with session.post(sim.url + "/v1/chat/completions", json=request) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["x-sim-replica"] == "replica-a"
        events = await read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:6]]
    assert len(content) == 5
    final = chunks[6]
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["choices"][0]["delta"] == {}
    usage_chunk = chunks[7]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 5
    assert len(chunks) == 8
    # the streamed text equals the non-streamed one
    _, full, _ = await post(session, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 5})
    assert "".join(content) == full["choices"][0]["message"]["content"]


async def test_completion_stream_without_usage(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim()
    request = {"prompt": "abc", "max_tokens": 3, "stream": True}
    async with session.post(sim.url + "/v1/completions", json=request) as response:
        events = await read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["object"] for c in chunks] == ["text_completion"] * 4
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert all("usage" not in c for c in chunks)


async def test_embeddings_are_deterministic_unit_vectors(
    start_sim: Start, session: aiohttp.ClientSession
):
    sim = await start_sim()
    url = sim.url + "/v1/embeddings"
    status, body, _ = await post(session, url, {"model": MODEL, "input": ["hello world", "bye"]})
    assert status == 200
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    first = body["data"][0]["embedding"]
    assert len(first) == 384
    assert math.sqrt(sum(v * v for v in first)) == pytest.approx(1.0)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    _, single, _ = await post(session, url, {"input": "hello world"})
    assert single["data"][0]["embedding"] == first
    assert body["data"][1]["embedding"] != first
    _, encoded, _ = await post(session, url, {"input": "hello world", "encoding_format": "base64"})
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(first, abs=1e-6)
    _, small, _ = await post(session, url, {"input": "x", "dimensions": 8})
    assert len(small["data"][0]["embedding"]) == 8


async def test_models_and_health(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim()
    async with session.get(sim.url + "/v1/models") as response:
        body = await response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    assert body["data"][0]["object"] == "model"
    async with session.get(sim.url + "/health") as response:
        assert response.status == 200
        assert response.headers["x-sim-replica"] == "replica-a"


async def test_metrics_names_and_counters(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim()
    await post(session, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 4})
    async with session.get(sim.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
    ):
        assert f'{name}{{model_name="{MODEL}"' in text, name
    assert await metric_value(session, sim.url, "vllm:generation_tokens_total") == 4
    assert await metric_value(session, sim.url, "vllm:time_to_first_token_seconds_count") == 1
    assert await metric_value(session, sim.url, "vllm:num_requests_running") == 0


async def test_prefix_cache_hits_lower_prefill(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim(prefill_ms_per_token=0.5)
    long_prompt = " ".join(f"word{i}" for i in range(400))
    request = {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 1}
    url = sim.url + "/v1/chat/completions"
    _, _, cold = await post(session, url, request)
    hits_after_cold = await metric_value(session, sim.url, "vllm:prefix_cache_hits_total")
    _, _, warm = await post(session, url, request)
    hits_after_warm = await metric_value(session, sim.url, "vllm:prefix_cache_hits_total")
    assert int(cold["x-sim-cached-tokens"]) == 0
    assert int(warm["x-sim-cached-tokens"]) >= 400 - 16
    assert float(warm["x-sim-prefill-ms"]) < float(cold["x-sim-prefill-ms"]) / 10
    assert hits_after_cold == 0
    assert hits_after_warm == int(warm["x-sim-cached-tokens"])
    assert await metric_value(session, sim.url, "vllm:gpu_prefix_cache_hits_total") == (
        hits_after_warm
    )


async def _wait_metric(
    session: aiohttp.ClientSession, url: str, name: str, value: float, limit_s: float = 30.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while await metric_value(session, url, name) != value:
        assert loop.time() < deadline, f"{name} never reached {value}"
        await asyncio.sleep(0.01)


async def test_second_request_waits_for_a_batch_slot(
    start_sim: Start, session: aiohttp.ClientSession
):
    # the first request decodes for >= 2 s, so the second one must queue behind it
    sim = await start_sim(max_batch=1, decode_ms_per_token=20.0)
    url = sim.url + "/v1/chat/completions"
    first = asyncio.create_task(post(session, url, {**CHAT, "max_tokens": 100}))
    await _wait_metric(session, sim.url, "vllm:num_requests_running", 1)
    second = asyncio.create_task(post(session, url, {**CHAT, "max_tokens": 1}))
    await _wait_metric(session, sim.url, "vllm:num_requests_waiting", 1)
    (_, _, first_headers), (status, _, second_headers) = await asyncio.gather(first, second)
    assert status == 200
    assert float(first_headers["x-sim-queue-ms"]) == 0.0
    assert float(second_headers["x-sim-queue-ms"]) > 0.0
    assert await metric_value(session, sim.url, "vllm:num_requests_waiting") == 0


async def test_full_waiting_queue_answers_503(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim(max_batch=1, max_waiting=0, decode_ms_per_token=20.0)
    url = sim.url + "/v1/chat/completions"
    first = asyncio.create_task(post(session, url, {**CHAT, "max_tokens": 100}))
    await _wait_metric(session, sim.url, "vllm:num_requests_running", 1)
    status, body, _ = await post(session, url, CHAT)
    assert status == 503
    assert "queue" in body["error"]["message"]
    assert (await first)[0] == 200


async def test_validation_errors(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim(max_model_len=64)
    url = sim.url + "/v1/chat/completions"
    async with session.post(
        url, data=b"{not json", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == 400
    assert error["message"]

    status, body, _ = await post(session, url, {"model": MODEL})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body, _ = await post(session, url, {**CHAT, "max_tokens": 0})
    assert status == 400
    status, body, _ = await post(session, url, {**CHAT, "max_tokens": 1000})
    assert status == 400 and "maximum context length" in body["error"]["message"]

    status, body, _ = await post(session, url, {**CHAT, "model": "nope"})
    assert status == 404
    assert body["error"]["message"] == "The model `nope` does not exist."
    assert body["error"]["type"] == "NotFoundError"


async def test_error_rate_one_answers_500(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim(error_rate=1.0)
    status, body, headers = await post(session, sim.url + "/v1/chat/completions", CHAT)
    assert status == 500
    assert body["error"]["code"] == 500
    assert headers["x-sim-replica"] == "replica-a"
    async with session.get(sim.url + "/health") as response:
        assert response.status == 200


async def test_slow_start_then_healthy(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim(slow_start_s=0.5)
    async with session.get(sim.url + "/health") as response:
        assert response.status == 503
    status, _, _ = await post(session, sim.url + "/v1/chat/completions", CHAT)
    assert status == 503
    async with session.get(sim.url + "/metrics") as response:
        assert response.status == 200
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        async with session.get(sim.url + "/health") as response:
            if response.status == 200:
                break
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    status, _, _ = await post(session, sim.url + "/v1/chat/completions", CHAT)
    assert status == 200


async def test_hang_before_headers_frees_slot_on_disconnect(
    start_sim: Start, session: aiohttp.ClientSession
):
    sim = await start_sim(hang_rate=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await post(
            session,
            sim.url + "/v1/chat/completions",
            CHAT,
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    # the client gave up and closed the connection: the handler is cancelled
    await _wait_metric(session, sim.url, "vllm:num_requests_running", 0)


async def test_hang_mid_stream_sends_first_token_only(
    start_sim: Start, session: aiohttp.ClientSession
):
    sim = await start_sim(hang_rate=1.0, hang_mode="mid-stream")
    request = {**CHAT, "max_tokens": 5, "stream": True}
    async with session.post(sim.url + "/v1/chat/completions", json=request) as response:
        assert response.status == 200
        received = b""
        while received.count(b"\n\n") < 2:  # role chunk + first token
            received += await asyncio.wait_for(response.content.read(1024), 30)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(response.content.read(1024), 0.3)
    assert b"[DONE]" not in received


async def test_echo_returns_received_body_and_headers(
    start_sim: Start, session: aiohttp.ClientSession
):
    sim = await start_sim()
    request = {**CHAT, "max_tokens": 3}
    status, body, _ = await post(
        session,
        sim.url + "/v1/chat/completions",
        request,
        headers={"x-sim-echo": "1", "X-Custom": "yes"},
    )
    assert status == 200
    echoed = orjson.loads(body["choices"][0]["message"]["content"])
    assert echoed["body"] == request
    assert echoed["headers"]["x-custom"] == "yes"
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_no_latency_reports_zero_prefill(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim(no_latency=True, prefill_ms_per_token=50.0, decode_ms_per_token=50.0)
    _, body, headers = await post(session, sim.url + "/v1/chat/completions", CHAT)
    assert float(headers["x-sim-prefill-ms"]) == 0.0
    assert body["usage"]["completion_tokens"] == 16
    assert await metric_value(session, sim.url, "vllm:generation_tokens_total") == 16


async def test_minimal_extra_endpoints(start_sim: Start, session: aiohttp.ClientSession):
    sim = await start_sim()
    status, body, _ = await post(
        session, sim.url + "/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 2}
    )
    assert status == 200 and body["object"] == "response"
    assert body["output"][0]["content"][0]["type"] == "output_text"
    assert body["usage"]["output_tokens"] == 2

    status, body, _ = await post(
        session,
        sim.url + "/v1/messages",
        {
            "model": MODEL,
            "max_tokens": 3,
            "system": "be nice",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        },
    )
    assert status == 200 and body["type"] == "message"
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 3

    status, body, _ = await post(
        session,
        sim.url + "/v1/rerank",
        {
            "query": "red apple",
            "documents": ["blue sky", "red apple pie", {"text": "apple"}],
            "top_n": 2,
        },
    )
    assert status == 200
    assert [r["index"] for r in body["results"]] == [1, 2]

    status, body, _ = await post(
        session, sim.url + "/v1/score", {"text_1": "a b", "text_2": ["a b", "c"]}
    )
    assert status == 200
    assert [d["score"] for d in body["data"]] == [1.0, 0.0]

    status, body, _ = await post(session, sim.url + "/tokenize", {"prompt": "one two three"})
    assert status == 200 and body["count"] == 3 and len(body["tokens"]) == 3


async def test_openai_sdk_against_the_simulator(start_sim: Start):
    openai = pytest.importorskip("openai")
    sim = await start_sim()
    client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)
    try:
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert chat.usage is not None and chat.usage.completion_tokens == 4
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        usage = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text == chat.choices[0].message.content
        assert usage is not None and usage.completion_tokens == 4
        embedding = await client.embeddings.create(model=MODEL, input="hello")
        assert len(embedding.data[0].embedding) == 384
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="missing", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        await client.close()
