"""Config loading, validation messages, the check command, and hot reload."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from helpers import ROOT, RunningGateway, SimPool, endpoint, start_gateway
from mixroute.config.loader import (
    ConfigError,
    config_from_backends,
    load_config_file,
    parse_config_text,
)

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    environ = {"HOSTED_API_KEY": "k", "MIXROUTE_ADMIN_KEY": "a", **os.environ}
    config = load_config_file(path, environ=environ)
    assert config.endpoints


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 3


def problems(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, environ=environ or {})
    return str(info.value)


def test_errors_name_the_field_and_expectation() -> None:
    message = problems(
        """
server: {port: eighty}
endpoints:
  - {name: a, url: "ftp://host", model: m}
  - {name: b, url: "http://h:1", model: m, wieght: 2}
"""
    )
    assert "server.port: Input should be a valid integer" in message
    assert "endpoints[0].url: expected an http(s) URL" in message
    assert "endpoints[1].wieght: unknown field" in message


def test_cross_field_errors() -> None:
    assert "duplicate endpoint names ['a']" in problems(
        "endpoints: [{name: a, url: 'http://h:1', model: m},"
        " {name: a, url: 'http://h:2', model: m}]"
    )
    assert "routing.default_model: 'zzz' is not served" in problems(
        "endpoints: [{name: a, url: 'http://h:1', model: m}]\nrouting: {default_model: zzz}"
    )
    assert "models.q: no endpoint serves this model" in problems(
        "endpoints: [{name: a, url: 'http://h:1', model: m}]\nmodels: {q: {}}"
    )
    assert "aliases: 'm' is already a model" in problems(
        "endpoints: [{name: a, url: 'http://h:1', model: m},"
        " {name: b, url: 'http://h:2', model: n}]"
        "\nmodels: {n: {aliases: [m]}}"
    )
    assert "auth.mode 'replace' needs auth.api_key" in problems(
        "endpoints: [{name: a, url: 'http://h:1', model: m, auth: {mode: replace}}]"
    )
    assert "balancer.policy" in problems("balancer: {policy: random_walk}")
    assert "not valid YAML" in problems("endpoints: [")
    assert "top level must be a mapping" in problems("- a\n- b")


def test_env_interpolation() -> None:
    text = (
        "endpoints: [{name: a, url: '${UPSTREAM:-http://h:1}', model: m, "
        "auth: {mode: replace, api_key: '${KEY}'}}]"
    )
    config = parse_config_text(text, environ={"KEY": "sk-1"})
    assert config.endpoints[0].auth.api_key == "sk-1"
    assert config.endpoints[0].url == "http://h:1"
    assert "endpoints[0].auth.api_key: environment variable KEY is not set" in problems(text)


def test_backends_flag_names_replicas() -> None:
    config = config_from_backends(["m=http://h:1", "m=http://h:2", "n=http://h:3"])
    assert [e.name for e in config.endpoints] == ["m-0", "m-1", "n-0"]
    assert config.routing.default_model == "m"
    with pytest.raises(ConfigError, match="expected MODEL=URL"):
        config_from_backends(["just-a-url"])


def test_config_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("endpoints: [{name: a, url: 'http://h:1', model: m}]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints: [{name: a, url: 'nope', model: m}]\n")
    run = [sys.executable, "-m", "mixroute.cli", "config", "check"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2
    assert "endpoints[0].url" in failed.stderr


def write_config(path: Path, data: dict[str, object]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(data))
    temporary.replace(path)


async def wait_until(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


async def test_hot_reload_applies_rejects_and_keeps_state(
    shared_sims: SimPool, gateways: list[RunningGateway], tmp_path: Path
) -> None:
    alpha0, alpha1 = shared_sims.sims[0], shared_sims.sims[1]
    path = tmp_path / "config.yaml"
    data: dict[str, object] = {
        "server": {"reload_interval_s": 0.1},
        "endpoints": [endpoint(alpha0), endpoint(alpha1)],
        "balancer": {"health": {"interval_s": 0.5}},
    }
    write_config(path, data)
    gw = await start_gateway(load_config_file(path), config_path=path)
    gateways.append(gw)
    chat = {
        "model": "alpha",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 30,
        "stream": True,
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.post(gw.url + "/v1/chat/completions", json=chat) as response:
                assert response.status == 200
        first_runtime = gw.gateway.runtime
        # A slow stream in flight across both reloads must finish.
        in_flight = await session.post(
            gw.url + "/v1/chat/completions", json={**chat, "max_tokens": 200}
        )

        data["models"] = {"alpha": {"aliases": ["house-model"]}}
        write_config(path, data)
        await wait_until(lambda: gw.gateway.runtime is not first_runtime)
        async with session.post(
            gw.url + "/v1/chat/completions", json={**chat, "model": "house-model"}
        ) as response:
            assert response.status == 200
        requests_after_reload = gw.gateway.runtime.registry.get("alpha-0").state.requests
        assert requests_after_reload >= 2  # counters survived the reload

        second_runtime = gw.gateway.runtime
        path.write_text("endpoints: [{name: a, url: 'not a url', model: alpha}]\n")
        await asyncio.sleep(0.6)
        assert gw.gateway.runtime is second_runtime
        async with session.post(
            gw.url + "/v1/chat/completions", json={**chat, "model": "house-model"}
        ) as response:
            assert response.status == 200
        async with session.get(gw.url + "/metrics") as response:
            metrics = await response.text()
        assert 'mixroute_config_reloads_total{result="rejected"} 1.0' in metrics
        assert 'mixroute_config_reloads_total{result="applied"} 1.0' in metrics

        body = await in_flight.read()
        assert in_flight.status == 200 and body.rstrip().endswith(b"data: [DONE]")
        in_flight.release()
