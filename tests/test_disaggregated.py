"""Disaggregated prefill/decode end to end: prefill simulators issue kv_transfer_params, the
gateway carries them to a decode simulator, which then skips the prefill."""

from __future__ import annotations

import aiohttp
import openai

from helpers import RunningGateway, SimPool, endpoint, start_gateway
from mixroute.config.loader import validate_config

PROMPT = "Summarise the following contract clause for a customer. " * 30
SLOW_PREFILL = ("--prefill-ms-per-token", "0.5")


def pd_config(prefill: list, decode: list) -> object:  # type: ignore[type-arg]
    return validate_config(
        {
            "endpoints": [endpoint(s, role="prefill") for s in prefill]
            + [endpoint(s, role="decode") for s in decode],
            "balancer": {"health": {"interval_s": 0.5}},
        }
    )


async def test_prefill_then_decode_with_transferred_kv(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    prefill = [
        sim_pool.start("pd", f"prefill-{i}", "--role", "prefill", *SLOW_PREFILL) for i in range(2)
    ]
    decode = [
        sim_pool.start("pd", f"decode-{i}", "--role", "decode", *SLOW_PREFILL) for i in range(2)
    ]
    gw = await start_gateway(pd_config(prefill, decode))  # type: ignore[arg-type]
    gateways.append(gw)
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0)
    gw.on_close.append(api.close)
    raw = await api.chat.completions.with_raw_response.create(
        model="pd", messages=[{"role": "user", "content": PROMPT}], max_tokens=5
    )
    assert raw.headers["x-mixroute-prefill-endpoint"].startswith("prefill-")
    assert raw.headers["x-mixroute-endpoint"].startswith("decode-")
    assert float(raw.headers["x-sim-prefill-ms"]) == 0.0  # the decode side computed nothing
    assert raw.parse().usage.completion_tokens == 5  # type: ignore[union-attr]
    stream = await api.chat.completions.create(
        model="pd",
        messages=[{"role": "user", "content": PROMPT + " again"}],
        max_tokens=4,
        stream=True,
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Without transferred KV, a decode replica charges the full prefill:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            decode[0].url + "/v1/chat/completions",
            json={
                "model": "pd",
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "A request nobody prefilled. " * 40}],
            },
        ) as response,
    ):
        assert float(response.headers["x-sim-prefill-ms"]) > 50


async def test_no_prefill_or_decode_endpoint_is_a_clear_503(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    prefill = [sim_pool.start("pd", "prefill-0", "--role", "prefill")]
    decode = [sim_pool.start("pd", "decode-0", "--role", "decode")]
    gw = await start_gateway(pd_config(prefill, decode))  # type: ignore[arg-type]
    gateways.append(gw)
    body = {"model": "pd", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        prefill[0].kill()
        for name in ("prefill-0",):
            gw.gateway.runtime.registry.get(name).state.healthy = False  # type: ignore[union-attr]
        async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "no_prefill_endpoint"
        gw.gateway.runtime.registry.get("decode-0").state.healthy = False  # type: ignore[union-attr]
        async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "no_decode_endpoint"
