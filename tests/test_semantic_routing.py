"""MoM through the gateway: classification, routes, system prompts, reasoning, fallbacks,
tool selection, the classify API and the route dry run. Real simulators, real SDK."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from helpers import RunningGateway, SimPool, start_gateway
from mixroute.config.loader import validate_config
from mixroute.demo import DEMO_MODELS, demo_config

MODELS = DEMO_MODELS


async def start(
    demo_sims: SimPool, gateways: list[RunningGateway], **changes: Any
) -> RunningGateway:
    data = demo_config(demo_sims.sims)  # type: ignore[arg-type]
    data["balancer"]["health"]["interval_s"] = 0.3
    data.update(changes)
    running = await start_gateway(validate_config(data))
    gateways.append(running)
    return running


@pytest.fixture
async def gw(demo_sims: SimPool, gateways: list[RunningGateway]) -> RunningGateway:
    return await start(demo_sims, gateways)


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0)
    gw.on_close.append(api.close)
    return api


async def echo(
    gw: RunningGateway, messages: list[dict[str, Any]], **extra: Any
) -> tuple[dict[str, Any], Any]:
    """Send through the gateway; the simulator echoes the body it received."""
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="MoM",
        messages=messages,
        extra_headers={"x-sim-echo": "1", "x-mixroute-debug": "1"},
        **extra,
    )
    completion = raw.parse()
    return json.loads(completion.choices[0].message.content or "{}")["body"], raw


@pytest.mark.parametrize(
    ("question", "model", "route", "category"),
    [
        ("What is the integral of x^2 * e^x dx?", "math-llm", "math", "math"),
        (
            "Why does my Python list comprehension raise a NameError?",
            "code-llm",
            "code",
            "computer science",
        ),
        (
            "Write a short poem about the smell of rain on a summer evening",
            "creative-llm",
            "creative",
            "other",
        ),
        (
            "What were the main causes of the French Revolution?",
            "general-llm",
            "general",
            "history",
        ),
    ],
)
async def test_mom_routes_by_domain(
    gw: RunningGateway, question: str, model: str, route: str, category: str
) -> None:
    body, raw = await echo(gw, [{"role": "user", "content": question}])
    assert raw.parse().model == model
    assert body["model"] == model
    assert raw.headers["x-mixroute-model"] == model
    assert raw.headers["x-mixroute-route"] == route
    assert raw.headers["x-mixroute-category"] == category
    assert 0 <= float(raw.headers["x-mixroute-confidence"]) <= 1


async def test_route_injects_system_prompt_and_reasoning(gw: RunningGateway) -> None:
    body, raw = await echo(
        gw,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Prove that the square root of 2 is irrational."},
        ],
    )
    assert raw.headers["x-mixroute-reasoning"] == "on"
    assert body["messages"][0]["role"] == "system"
    assert "mathematician" in body["messages"][0]["content"]
    assert body["messages"][1] == {"role": "system", "content": "Be brief."}  # insert mode
    assert body["chat_template_kwargs"] == {"thinking": True}  # math-llm is deepseek family


async def test_reasoning_off_is_explicit_for_gpt_oss(gw: RunningGateway) -> None:
    body, raw = await echo(
        gw, [{"role": "user", "content": "Refactor this JavaScript function to use async/await"}]
    )
    assert body["model"] == "code-llm"
    assert raw.headers["x-mixroute-reasoning"] == "off"
    assert body["reasoning_effort"] == "low"


async def test_follow_up_stays_in_its_route(gw: RunningGateway) -> None:
    body, raw = await echo(
        gw,
        [
            {"role": "user", "content": "What is the sum of the first n odd numbers for n = 3?"},
            {"role": "assistant", "content": "It is 9."},
            {"role": "user", "content": "and for n=5?"},
        ],
    )
    assert raw.headers["x-mixroute-route"] == "math"
    assert body["model"] == "math-llm"


async def test_explicit_model_is_untouched(gw: RunningGateway) -> None:
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="creative-llm",
        messages=[{"role": "user", "content": "integrate x dx"}],
        extra_headers={"x-sim-echo": "1"},
    )
    body = json.loads(raw.parse().choices[0].message.content or "{}")["body"]
    assert body == {
        "model": "creative-llm",
        "messages": [{"role": "user", "content": "integrate x dx"}],
    }
    assert "x-mixroute-route" not in raw.headers and "x-mixroute-category" not in raw.headers


async def test_streaming_carries_explain_headers(gw: RunningGateway) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.url + "/v1/chat/completions",
            json={
                "model": "auto",
                "stream": True,
                "messages": [{"role": "user", "content": "Solve 3x + 7 = 22 for x."}],
            },
        ) as response,
    ):
        assert response.headers["x-mixroute-route"] == "math"
        assert response.headers["x-mixroute-model"] == "math-llm"
        text = await response.text()
    assert text.rstrip().endswith("data: [DONE]")
    assert '"model":"math-llm"' in text.replace(" ", "")


async def test_model_fallback_when_no_endpoint(
    demo_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    data = demo_config(demo_sims.sims)  # type: ignore[arg-type]
    for endpoint in data["endpoints"]:
        if endpoint["model"] == "math-llm":
            endpoint["url"] = "http://127.0.0.1:9"  # nothing listens there
    data["balancer"]["health"] = {"interval_s": 0.2, "unhealthy_after": 1}
    gw = await start_gateway(validate_config(data))
    gateways.append(gw)
    body, raw = await echo(gw, [{"role": "user", "content": "Differentiate sin(x)*cos(x)."}])
    assert raw.headers["x-mixroute-route"] == "math"
    assert body["model"] == "general-llm"
    assert raw.headers["x-mixroute-fallback"] == "math-llm=no_endpoint"


async def test_model_fallback_on_context_length(
    demo_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    data = demo_config(demo_sims.sims)  # type: ignore[arg-type]
    data["models"]["math-llm"]["context_length"] = 64
    gw = await start_gateway(validate_config(data))
    gateways.append(gw)
    body, raw = await echo(
        gw,
        [{"role": "user", "content": "Find the eigenvalues of [[2, 1], [1, 2]]."}],
        max_tokens=200,
    )
    assert body["model"] == "general-llm"
    assert raw.headers["x-mixroute-fallback"] == "math-llm=context_length"


def tool(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": {}},
        },
    }


async def test_tool_selection_keeps_the_relevant_tool(gw: RunningGateway) -> None:
    tools = [
        tool("get_weather_forecast", "Weather forecast for a city for the next days"),
        tool("send_email", "Send an email to a recipient"),
        tool("create_calendar_event", "Create an event in the user's calendar"),
        tool("search_flights", "Search flights between two airports on a date"),
        tool("get_stock_price", "Latest stock price for a ticker symbol"),
        tool("translate_text", "Translate text into another language"),
        tool("play_music", "Play a song or playlist"),
        tool("convert_currency", "Convert an amount between currencies"),
    ]
    body, raw = await echo(
        gw, [{"role": "user", "content": "Will it rain in Seattle this weekend?"}], tools=tools
    )
    kept = [t["function"]["name"] for t in body["tools"]]
    assert "get_weather_forecast" in kept
    assert len(kept) < len(tools)
    assert raw.headers["x-mixroute-tools"] == f"{len(kept)}/{len(tools)}"
    body, _ = await echo(
        gw,
        [{"role": "user", "content": "Will it rain in Seattle?"}],
        tools=tools,
        tool_choice="required",
    )
    assert len(body["tools"]) == len(tools)  # only tool_choice auto/omitted is filtered


async def test_responses_and_messages_apis_are_routed(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gw.url + "/v1/responses",
            json={"model": "MoM", "input": "Solve the equation x^2 - 9 = 0"},
        ) as response:
            assert response.status == 200
            assert response.headers["x-mixroute-route"] == "math"
        async with session.post(
            gw.url + "/v1/messages",
            json={
                "model": "MoM",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "Write a limerick about a sleepy owl"}],
            },
        ) as response:
            assert response.status == 200
            assert response.headers["x-mixroute-route"] == "creative"


async def test_classify_intent_and_batch(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gw.url + "/api/v1/classify/intent",
            json={"text": "A ball is thrown straight up at 12 m/s. How high does it rise?"},
        ) as response:
            result = await response.json()
        assert result["classification"]["category"] == "physics"
        assert 0 <= result["classification"]["confidence"] <= 1
        assert result["classification"]["processing_time_ms"] > 0
        assert len(result["probabilities"]) == 14
        assert abs(sum(result["probabilities"].values()) - 1) < 1e-3
        async with session.post(
            gw.url + "/api/v1/classify/batch",
            json={
                "task": "intent",
                "texts": [
                    "Can my landlord keep my deposit for normal wear and tear?",
                    "Balance this: H2 + O2 -> H2O",
                ],
            },
        ) as response:
            batch = await response.json()
        assert [r["classification"]["category"] for r in batch["results"]] == ["law", "chemistry"]
        async with session.post(gw.url + "/api/v1/classify/intent", json={"txt": 1}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "text"


async def test_route_dry_run_explains_without_calling_a_backend(gw: RunningGateway) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.url + "/api/v1/route",
            json={"messages": [{"role": "user", "content": "Compute 17 * 23 step by step"}]},
        ) as response,
    ):
        decision = await response.json()
    assert decision["model"] == "math-llm" and decision["route"] == "math"
    assert decision["endpoint"] in ("math-llm-0", "math-llm-1")
    assert decision["request"]["messages"][0]["role"] == "system"
    assert decision["candidates"][0] == {"model": "math-llm", "score": 1.0}
    assert decision["signals"]["domain"]["math"] > 0.5


async def test_cost_and_decision_metrics(gw: RunningGateway) -> None:
    api = client(gw)
    await api.chat.completions.create(
        model="MoM", messages=[{"role": "user", "content": "Solve 2x = 10"}], max_tokens=10
    )
    stream = await api.chat.completions.create(
        model="MoM",
        messages=[{"role": "user", "content": "Solve 3x = 12"}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    [chunk async for chunk in stream]
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        text = await response.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['mixroute_tokens_total{kind="completion",model="math-llm"}'] == 20
    cost = samples['mixroute_cost_usd_total{model="math-llm",route="math"}']
    prompt = samples['mixroute_tokens_total{kind="prompt",model="math-llm"}']
    assert cost == pytest.approx((prompt * 0.5 + 20 * 2.0) / 1e6)
    assert samples['mixroute_route_decisions_total{model="math-llm",route="math"}'] == 2
    assert samples["mixroute_decision_duration_seconds_count"] == 2


async def test_auto_model_answers_are_cached(gw: RunningGateway) -> None:
    question = [{"role": "user", "content": "What is the derivative of tan(x)?"}]
    first = await client(gw).chat.completions.with_raw_response.create(
        model="MoM", messages=question, max_tokens=5
    )
    again = await client(gw).chat.completions.with_raw_response.create(
        model="MoM", messages=question, max_tokens=5
    )
    assert first.headers["x-mixroute-cache"] == "miss"
    assert again.headers["x-mixroute-cache"] == "hit"
    assert again.headers["x-mixroute-route"] == "math"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
