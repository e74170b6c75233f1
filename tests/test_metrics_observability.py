"""Per-request metrics as a Prometheus scrape shows them: requests by model/route/category/
status, errors by code, tokens for every model (streams without usage too), TTFT and TPOT."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml
from prometheus_client import Gauge
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    ROOT,
    RunningGateway,
    SimPool,
    config_for,
    endpoint,
    free_port,
    get_on_a_new_connection,
    post_on_a_new_connection,
    start_gateway,
    start_workers,
    wait_for_status,
)
from mixroute.context import RequestContext
from mixroute.observability.metrics import Metrics
from mixroute.observability.recorder import error_code
from mixroute.proxy.usage import StreamUsageWatcher


@pytest.fixture
async def gw(shared_sims: SimPool, gateways: list[RunningGateway]) -> RunningGateway:
    running = await start_gateway(
        config_for(shared_sims.sims, routing={"default_model": "alpha"})  # no pricing anywhere
    )
    gateways.append(running)
    return running


async def scrape(gw: RunningGateway) -> list[tuple[str, dict[str, str], float]]:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        text = await response.text()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = labels.items()
    return sum(v for n, got, v in samples if n == name and all(got.get(k) == w for k, w in wanted))


async def test_requests_tokens_and_token_timings(gw: RunningGateway) -> None:
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0)
    gw.on_close.append(api.close)
    whole = await api.chat.completions.create(
        model="MoM", messages=[{"role": "user", "content": "Say hi"}], max_tokens=5
    )
    assert whole.usage is not None
    stream = await api.chat.completions.create(  # no include_usage: tokens are counted
        model="alpha", messages=[{"role": "user", "content": "Count"}], max_tokens=6, stream=True
    )
    assert len([c async for c in stream if c.choices and c.choices[0].delta.content]) == 6
    with_usage = await api.chat.completions.create(
        model="beta",
        messages=[{"role": "user", "content": "Count more"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    [usage] = [c.usage async for c in with_usage if c.usage is not None]
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )

    samples = await scrape(gw)
    by_route = "mixroute_requests_by_route_total"
    assert value(samples, by_route, model="alpha", route="default", category="other") == 1
    assert value(samples, by_route, model="alpha", route="", status="2xx") == 1
    assert value(samples, by_route, model="beta", status="2xx") == 1
    assert value(samples, by_route, model="", status="4xx") == 1
    assert value(samples, "mixroute_request_errors_total", code="model_not_found") == 1
    assert value(samples, "mixroute_request_errors_total") == 1
    # Client text never becomes a label value.
    assert not any("no-such-model" in v for _, labels, _ in samples for v in labels.values())

    tokens = "mixroute_tokens_total"
    assert value(samples, tokens, model="alpha", kind="completion") == 5 + 6
    assert value(samples, tokens, model="alpha", kind="prompt") == whole.usage.prompt_tokens
    assert value(samples, tokens, model="beta", kind="completion") == 4
    assert value(samples, tokens, model="beta", kind="prompt") == usage.prompt_tokens > 0

    ttft = "mixroute_time_to_first_token_seconds"
    assert value(samples, ttft + "_count", model="alpha") == 2
    assert value(samples, ttft + "_count", model="beta") == 1
    assert 0 < value(samples, ttft + "_sum") < 10
    tpot = "mixroute_time_per_output_token_seconds"
    assert value(samples, tpot + "_count", model="alpha") == 1  # streams only
    assert value(samples, tpot + "_count", model="beta") == 1
    assert 0 < value(samples, tpot + "_sum") < 5


async def test_bad_json_is_counted_by_code(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.v1 + "/chat/completions", data=b"{nope") as response:
            assert response.status == 400
        samples = await scrape(gw)
    assert value(samples, "mixroute_request_errors_total", code="invalid_json") == 1
    assert value(samples, "mixroute_requests_by_route_total", model="", status="4xx") == 1


def test_error_codes_are_bounded() -> None:
    ctx = RequestContext("r", "/v1/chat/completions", "m", "m", {}, b"", False)
    assert error_code(200, None, ctx, {}) is None
    assert error_code(499, None, None, {}) == "client_closed"
    assert error_code(502, None, ctx, {}) == "upstream_status_5xx"
    assert error_code(400, None, ctx, {"x-mixroute-blocked": "jailbreak"}) == "jailbreak_blocked"
    ctx.error_code = "upstream_stream_broken"
    assert error_code(200, None, ctx, {}) == "upstream_stream_broken"
    assert error_code(400, "something_new", ctx, {}) == "other"


def test_error_codes_in_source_are_known() -> None:
    """Every literal error code in the gateway is in the recorder's set (else it would be
    counted as 'other')."""
    from mixroute.observability.recorder import ERROR_CODES

    found: set[str] = set()
    for path in (ROOT / "src" / "mixroute").rglob("*.py"):
        if "sim" in path.relative_to(ROOT / "src" / "mixroute").parts[:1]:
            continue
        found |= set(re.findall(r'\bcode="([a-z_0-9]+)"', path.read_text()))
    # Codes of answers outside the inference path (aiohttp's own 404/405, the admin API).
    outside = {"not_found", "method_not_allowed", "http_error", "invalid_admin_key"}
    assert found - outside - ERROR_CODES == set()


def test_stream_watcher_counts_tokens_across_chunk_borders() -> None:
    events = [
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"usage":null}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
        b"data: [DONE]\n\n",
    ]
    raw = b"".join(events)
    watcher = StreamUsageWatcher()
    for at, start in enumerate(range(0, len(raw), 7)):  # borders fall inside events
        watcher.feed(raw[start : start + 7], float(at))
    assert watcher.text_events == 2
    assert watcher.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert watcher.first_text_at is not None and watcher.last_text_at is not None
    assert watcher.first_text_at < watcher.last_text_at


def test_every_gauge_is_set_somewhere() -> None:
    """A declared gauge that nothing sets would export a constant lie (or nothing)."""
    metrics = Metrics()
    gauges = [name for name, m in vars(metrics).items() if isinstance(m, Gauge)]
    assert gauges
    source = "\n".join(
        p.read_text()
        for p in Path(ROOT / "src" / "mixroute").rglob("*.py")
        if p.name != "metrics.py"
    )
    for name in gauges:
        direct = rf"\.{name}(\.labels\([^)]*\))?\.(set|inc|dec)\("
        held = re.search(rf"(\w+) = [\w.]+\.{name}\.labels\(", source)
        assert re.search(direct, source) or (
            held and re.search(rf"\b{held.group(1)}\.(set|inc|dec)\(", source)
        ), f"gauge {name} is never set"


async def test_token_timing_values_and_a_client_that_leaves(
    sim_pool: SimPool, gateways: list[RunningGateway], caplog: pytest.LogCaptureFixture
) -> None:
    """TPOT matches the engine's decode step; a client gone mid-stream is counted once, as
    ``client_closed``, in the metrics and the request log."""
    sim_pool.start("paced", "paced-0", "--decode-ms-per-token", "20")
    gw = await start_gateway(config_for(sim_pool.sims))
    gateways.append(gw)
    caplog.set_level(logging.INFO, logger="mixroute.requests")
    body = {
        "model": "paced",
        "messages": [{"role": "user", "content": "Count"}],
        "stream": True,
        "max_tokens": 10,
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.v1 + "/chat/completions", json=body) as response:
            await response.read()
        body["max_tokens"] = 200
        async with session.post(gw.v1 + "/chat/completions", json=body) as response:
            await response.content.readline()  # the first event, then leave
            response.close()
        for _ in range(100):
            if len([r for r in caplog.records if r.name == "mixroute.requests"]) == 2:
                break
            await asyncio.sleep(0.05)
        samples = await scrape(gw)
    tpot = "mixroute_time_per_output_token_seconds"
    mean = value(samples, tpot + "_sum") / value(samples, tpot + "_count")
    assert 0.015 < mean < 0.06  # 20 ms per decode step, plus scheduling noise
    assert value(samples, "mixroute_request_errors_total", code="client_closed") == 1
    assert value(samples, "mixroute_request_errors_total") == 1
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mixroute.requests"]
    assert [line["error"] for line in lines] == [None, "client_closed"]


async def test_one_scrape_counts_every_worker(shared_sims: SimPool, tmp_path: Path) -> None:
    """``serve --workers 2`` shares one port: whichever worker a scrape lands on answers with
    both workers' series (label ``worker``), so the totals are the gateway's."""
    alpha = [s for s in shared_sims.sims if s.model == "alpha"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"endpoints": [endpoint(s) for s in alpha]}))
    process, url = await asyncio.to_thread(start_workers, path)
    try:
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        served_by: set[str] = set()
        for _ in range(16):  # a new connection each time: either worker may take it
            status, headers, _ = await post_on_a_new_connection(
                url + "/v1/chat/completions", body, {"x-mixroute-debug": "1"}
            )
            assert status == 200
            served_by.add(headers["x-mixroute-worker"])
        assert len(served_by) == 2
        for _ in range(6):
            text = await get_on_a_new_connection(url + "/metrics")
            samples = [
                (s.name, s.labels, s.value)
                for family in text_string_to_metric_families(text)
                for s in family.samples
            ]
            requests = [
                (labels, v) for name, labels, v in samples if name == "mixroute_requests_total"
            ]
            assert {labels["worker"] for labels, _ in requests} == {"0", "1"}
            assert sum(v for _, v in requests) == 16
            assert value(samples, "mixroute_workers_answering") == 2
    finally:
        process.terminate()
        assert await asyncio.to_thread(process.wait, 20) == 0


async def test_one_processor_scrape_counts_every_extproc_worker(
    shared_sims: SimPool, tmp_path: Path
) -> None:
    """The same for ``mixroute extproc --workers 2 --http-port``: one scrape, both workers."""
    alpha = [s for s in shared_sims.sims if s.model == "alpha"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"endpoints": [endpoint(s) for s in alpha]}))
    grpc_port, http_port = free_port(), free_port()
    argv = ["--config", str(path), "--port", str(grpc_port), "--workers", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "mixroute.extproc", *argv, "--http-port", str(http_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        await asyncio.to_thread(wait_for_status, url + "/ready", 200, 60)
        for _ in range(4):
            text = await get_on_a_new_connection(url + "/metrics")
            workers = {
                s.labels.get("worker")
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "mixroute_endpoint_available"
            }
            assert workers == {"0", "1"}, text[:2000]
    finally:
        process.terminate()
        assert await asyncio.to_thread(process.wait, 20) == 0
