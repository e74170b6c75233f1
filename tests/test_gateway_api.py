"""The OpenAI surface of the gateway, exercised with the real openai SDK and real simulators."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from helpers import (
    RunningGateway,
    SimPool,
    config_for,
    config_from_yaml,
    endpoint,
    start_gateway,
)
from mixroute.config.loader import validate_config


@pytest.fixture
async def gw(shared_sims: SimPool, gateways: list[RunningGateway]) -> RunningGateway:
    config = config_for(
        shared_sims.sims,
        models={"alpha": {"aliases": ["gpt-4o-mini"]}},
        routing={"default_model": "alpha"},
    )
    running = await start_gateway(config)
    gateways.append(running)
    return running


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    """An SDK client closed with the gateway (see the ``gateways`` fixture)."""
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key="test-key", max_retries=0)
    gw.on_close.append(api.close)
    return api


async def test_chat_non_stream_through_sdk(gw: RunningGateway) -> None:
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="beta", messages=[{"role": "user", "content": "Say hi"}], max_tokens=5
    )
    completion = raw.parse()
    assert completion.model == "beta"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert raw.headers["x-mixroute-model"] == "beta"
    assert raw.headers["x-mixroute-endpoint"] in {"beta-0", "beta-1"}
    assert len(raw.headers["x-request-id"]) >= 16
    assert "x-mixroute-category" not in raw.headers  # explicit model: no decision to explain


async def test_chat_stream_with_usage(gw: RunningGateway) -> None:
    stream = await client(gw).chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 6


async def test_completions_stream_and_not(gw: RunningGateway) -> None:
    api = client(gw)
    whole = await api.completions.create(model="alpha", prompt="Once upon", max_tokens=4)
    assert whole.choices[0].text and whole.usage is not None
    pieces = [
        c
        async for c in await api.completions.create(
            model="alpha", prompt="Once upon", max_tokens=4, stream=True
        )
    ]
    assert "".join(c.choices[0].text for c in pieces if c.choices)


async def test_embeddings_explicit_and_auto_rejected(gw: RunningGateway) -> None:
    api = client(gw)
    result = await api.embeddings.create(model="alpha", input=["one", "two"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    with pytest.raises(openai.BadRequestError) as info:
        await api.embeddings.create(model="MoM", input="one")
    assert "embedding model" in str(info.value)


async def test_models_lists_pool_and_auto_names(gw: RunningGateway) -> None:
    models = {m.id async for m in client(gw).models.list()}
    assert models == {"alpha", "beta", "MoM", "auto"}


async def test_auto_model_goes_to_default_and_explains(gw: RunningGateway) -> None:
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="MoM", messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.parse().model == "alpha"
    assert raw.headers["x-mixroute-model"] == "alpha"
    assert raw.headers["x-mixroute-route"] == "default"
    assert raw.headers["x-mixroute-category"] == "other"
    assert 0.0 <= float(raw.headers["x-mixroute-confidence"]) <= 1.0
    assert raw.headers["x-mixroute-reasoning"] == "off"


async def test_alias_resolves_to_model(gw: RunningGateway) -> None:
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-sim-echo": "1"},
    )
    seen = json.loads(raw.parse().choices[0].message.content or "")
    assert seen["body"]["model"] == "alpha"
    assert raw.headers["x-mixroute-model"] == "alpha"


async def test_unknown_model_is_404(gw: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client(gw).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_request_id_and_headers_forwarded(gw: RunningGateway) -> None:
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="alpha",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={
            "x-sim-echo": "1",
            "x-request-id": "trace-abc-123",
            "x-mixroute-tenant": "team-a",
        },
    )
    seen = json.loads(raw.parse().choices[0].message.content or "")
    assert raw.headers["x-request-id"] == "trace-abc-123"
    assert seen["headers"]["x-request-id"] == "trace-abc-123"
    assert seen["headers"]["authorization"] == "Bearer test-key"
    assert "x-mixroute-tenant" not in seen["headers"]
    assert "keep-alive" not in seen["headers"]


async def test_authorization_replaced_and_dropped(
    shared_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    alpha0, beta0 = shared_sims.sims[0], shared_sims.sims[2]
    config = config_from_yaml(
        {
            "endpoints": [
                endpoint(alpha0, auth={"mode": "replace", "api_key": "${UPSTREAM_KEY:-secret-1}"}),
                endpoint(beta0, auth={"mode": "drop"}),
            ],
        }
    )
    gw = await start_gateway(config)
    gateways.append(gw)
    api = client(gw)
    for model, expected in (("alpha", "Bearer secret-1"), ("beta", None)):
        reply = await api.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-sim-echo": "1"},
        )
        seen = json.loads(reply.choices[0].message.content or "")
        assert seen["headers"].get("authorization") == expected


async def test_served_model_name_rewritten_both_ways(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sim = sim_pool.start("SmolLM2-135M-Instruct.Q4_1.gguf", "small-0")
    config = validate_config(
        {
            "endpoints": [
                {
                    "name": "small-0",
                    "url": sim.url,
                    "model": "small",
                    "served_model": "SmolLM2-135M-Instruct.Q4_1.gguf",
                }
            ],
        }
    )
    gw = await start_gateway(config)
    gateways.append(gw)
    api = client(gw)
    whole = await api.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "x"}], max_tokens=3
    )
    assert whole.model == "small"
    chunks = [
        c
        async for c in await api.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
        )
    ]
    assert chunks and {c.model for c in chunks} == {"small"}


async def test_passthrough_paths_reach_model(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/tokenize", json={"model": "beta", "prompt": "a b"}) as r:
            assert r.status == 200
            assert r.headers["x-mixroute-model"] == "beta"
        async with session.post(
            gw.url + "/v1/responses", json={"model": "nope", "input": "x"}
        ) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "model_not_found"


BAD_BODIES = [
    (b'{"model": "alpha", "messages": [', 400, "invalid_json"),
    (b'{"model": "alpha"}', 400, "missing_field"),
    (b'{"model": "alpha", "messages": "hi"}', 400, "invalid_request"),
    (b'{"model": 7, "messages": []}', 400, "invalid_request"),
    (
        b'{"model": "alpha", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
        400,
        "invalid_request",
    ),
    (b'["not", "an", "object"]', 400, "invalid_request"),
    (
        b'{"model": "alpha", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        "invalid_json",
    ),
    (b"", 400, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
async def test_bad_input_is_openai_shaped(
    gw: RunningGateway, body: bytes, status: int, code: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.url + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
        ) as response,
    ):
        assert response.status == status
        payload = await response.json()
    assert payload["error"]["code"] == code
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"]


async def test_oversized_body_413_while_others_keep_streaming(
    shared_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    config = config_for(shared_sims.sims, server={"max_body_bytes": 4096})
    gw = await start_gateway(config)
    gateways.append(gw)
    api = client(gw)
    stream = await api.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "long"}], max_tokens=40, stream=True
    )
    async with aiohttp.ClientSession() as session:
        big = (
            b'{"model": "alpha", "messages": [{"role": "user", "content": "'
            + b"x" * 10000
            + b'"}]}'
        )
        async with session.post(gw.url + "/v1/chat/completions", data=big) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == "request_too_large"
        async with session.post(gw.url + "/v1/chat/completions", data=b"{{{") as response:
            assert response.status == 400
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_no_healthy_endpoint_is_503(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sim = sim_pool.start("gamma", "gamma-0")
    config = config_for([sim], balancer={"health": {"interval_s": 0.1, "unhealthy_after": 1}})
    gw = await start_gateway(config)
    gateways.append(gw)
    sim.kill()
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(gw.url + "/ready") as ready:
                if ready.status == 503:
                    break
            await asyncio.sleep(0.05)
        assert ready.status == 503
    with pytest.raises(openai.InternalServerError) as info:
        await client(gw).chat.completions.create(
            model="gamma", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 503
    assert info.value.body["code"] == "no_healthy_endpoint"  # type: ignore[index]


async def test_hung_backend_times_out(sim_pool: SimPool, gateways: list[RunningGateway]) -> None:
    sim = sim_pool.start("slow", "slow-0", "--hang")
    config = config_for([sim], timeouts={"first_byte_s": 1.0})
    gw = await start_gateway(config)
    gateways.append(gw)
    started = asyncio.get_running_loop().time()
    with pytest.raises(openai.APIStatusError) as info:
        await client(gw).chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 504
    assert asyncio.get_running_loop().time() - started < 10


async def test_stream_idle_timeout_ends_with_error_event(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sim = sim_pool.start("slow", "slow-0", "--hang", "--hang-mode", "mid-stream")
    config = config_for([sim], timeouts={"idle_s": 1.0})
    gw = await start_gateway(config)
    gateways.append(gw)
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        text = (await asyncio.wait_for(response.read(), 15)).decode()
    assert '"code":"upstream_stream_broken"' in text
    assert text.rstrip().endswith("data: [DONE]")


async def test_client_disconnect_cancels_upstream(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sim = sim_pool.start("talky", "talky-0", "--decode-ms-per-token", "50")
    config = config_for([sim])
    gw = await start_gateway(config)
    gateways.append(gw)
    body = {
        "model": "talky",
        "stream": True,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "go on"}],
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
            await response.content.readline()
            assert await running_requests(session, sim.url) == 1
        for _ in range(100):  # the client is gone: the simulator's batch must empty
            if await running_requests(session, sim.url) == 0:
                break
            await asyncio.sleep(0.05)
        assert await running_requests(session, sim.url) == 0
    assert gw.gateway.runtime.registry.get("talky-0").state.in_flight == 0  # type: ignore[union-attr]


async def running_requests(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no vllm:num_requests_running in simulator metrics")


async def test_metrics_use_own_prefix(gw: RunningGateway) -> None:
    await client(gw).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "x"}]
    )
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        text = await response.text()
    assert 'mixroute_requests_total{endpoint="alpha-' in text
    names = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert names and all(name.startswith("mixroute_") for name in names)
    assert "x" not in {v for line in text.splitlines() for v in line.split('"')[1::2]}


async def test_admin_key_guards_admin_api(
    shared_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    config = config_from_yaml(
        {
            "endpoints": [endpoint(s) for s in shared_sims.sims],
            "server": {"admin_key": "${ADMIN_KEY:-s3cret}"},
        }
    )
    gw = await start_gateway(config)
    gateways.append(gw)
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/api/v1/endpoints") as response:
            assert response.status == 401
            assert (await response.json())["error"]["type"] == "authentication_error"
        async with session.get(
            gw.url + "/api/v1/endpoints", headers={"x-mixroute-admin-key": "s3cret"}
        ) as response:
            assert response.status == 200
            names = {e["name"] for e in (await response.json())["endpoints"]}
    assert names == {"alpha-0", "alpha-1", "beta-0", "beta-1"}
