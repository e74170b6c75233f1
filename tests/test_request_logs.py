"""The JSON request log: one line per finished request, with the decision, and the prompt only
when ``observability.logs.log_prompts`` is on."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from helpers import (
    RunningGateway,
    SimPool,
    config_for,
    endpoint,
    start_gateway,
    start_gateway_process,
)
from mixroute.observability.logs import REQUEST_LOGGER, JsonFormatter

PROMPT = "My secret plan: buy 17 zebras before the tenth of October, then tell nobody"


async def _gateway(sims: SimPool, gateways: list[RunningGateway], **logs: Any) -> RunningGateway:
    config = config_for(sims.sims, routing={"default_model": "alpha"}, observability={"logs": logs})
    running = await start_gateway(config)
    gateways.append(running)
    return running


async def _chat(base: str, request_id: str, stream: bool = False) -> int:
    body = {
        "model": "MoM",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 4,
        "stream": stream,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            base + "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
        ) as response,
    ):
        await response.read()
        return response.status


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == REQUEST_LOGGER]


async def test_one_line_per_request_without_the_prompt(
    shared_sims: SimPool, gateways: list[RunningGateway], caplog: pytest.LogCaptureFixture
) -> None:
    gw = await _gateway(shared_sims, gateways)
    caplog.set_level(logging.DEBUG)
    assert await _chat(gw.url, "req-logs-1") == 200
    assert await _chat(gw.url, "req-logs-2", stream=True) == 200
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.v1 + "/chat/completions", data=b"{broken") as response,
    ):
        assert response.status == 400

    lines = _request_lines(caplog)
    assert [line["request_id"] for line in lines[:2]] == ["req-logs-1", "req-logs-2"]
    assert len(lines) == 3
    first = lines[0]
    assert first["model"] == "alpha" and first["requested_model"] == "MoM"
    assert first["route"] == "default" and first["category"] == "other"
    assert first["endpoint"] in ("alpha-0", "alpha-1")
    assert first["status"] == 200 and first["error"] is None and first["attempts"] == 1
    assert first["latency_ms"] > 0 and first["stream"] is False
    assert lines[1]["stream"] is True
    assert lines[2]["status"] == 400 and lines[2]["error"] == "invalid_json"
    assert "prompt" not in first
    assert "zebras" not in caplog.text
    assert all("zebras" not in r.getMessage() for r in caplog.records)


async def test_prompt_logged_only_when_enabled_and_cut(
    shared_sims: SimPool, gateways: list[RunningGateway], caplog: pytest.LogCaptureFixture
) -> None:
    gw = await _gateway(shared_sims, gateways, log_prompts=True, prompt_chars=20)
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    assert await _chat(gw.url, "req-logs-3") == 200
    [line] = _request_lines(caplog)
    assert line["request_id"] == "req-logs-3"
    assert line["prompt"] == PROMPT[:20]  # the last user message, not the system prompt
    assert "zebras" not in caplog.text


async def test_request_log_can_be_turned_off(
    shared_sims: SimPool, gateways: list[RunningGateway], caplog: pytest.LogCaptureFixture
) -> None:
    gw = await _gateway(shared_sims, gateways, requests=False)
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    assert await _chat(gw.url, "req-logs-4") == 200
    assert _request_lines(caplog) == []


def test_json_formatter_writes_one_object_per_line() -> None:
    logger = logging.getLogger("mixroute.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(
            "mixroute.test", logging.ERROR, __file__, 1, "failed %s", ("twice",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "ERROR" and data["logger"] == "mixroute.test"
    assert data["msg"] == "failed twice" and "ValueError: boom" in data["exc"]
    assert data["ts"].endswith("+00:00")


async def test_serve_writes_json_lines_when_configured(
    shared_sims: SimPool, tmp_path: Path
) -> None:
    """``mixroute serve`` with ``format: json``: every line it logs is one JSON object, the
    request line among them."""
    config = {
        "endpoints": [endpoint(s) for s in shared_sims.sims],
        "routing": {"default_model": "alpha"},
        "observability": {"logs": {"format": "json"}},
    }
    path, log_path = tmp_path / "gateway.yaml", tmp_path / "gateway.log"
    path.write_text(yaml.safe_dump(config))
    process, url = start_gateway_process(path, log_path)
    try:
        assert await _chat(url, "req-logs-json") == 200
        deadline = time.monotonic() + 10
        while "req-logs-json" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(10)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any("listening on" in line["msg"] for line in lines)
    [request] = [line for line in lines if line.get("request_id") == "req-logs-json"]
    assert request["logger"] == REQUEST_LOGGER and request["model"] == "alpha"
    assert "zebras" not in log_path.read_text()
