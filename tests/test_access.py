"""Access control with real simulators and the real openai SDK: keys, models, tenants, limits,
what goes upstream and what never comes back."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from helpers import (
    RunningGateway,
    SimPool,
    config_for,
    endpoint,
    free_port,
    post_on_a_new_connection,
    start_gateway,
    start_workers,
)
from mixroute.access.keys import hash_key
from mixroute.access.service import AccessControl
from mixroute.access.shared import SharedBuckets, bucket_tag
from mixroute.config.loader import ConfigError, validate_config

KEY_A = "mr-test-key-alpha-only"
KEY_B = "mr-test-key-tenant-b"
KEY_SLOW = "mr-test-key-two-rpm"
KEY_TOKENS = "mr-test-key-100-tpm"
ADMIN = "admin-secret-1"
UPSTREAM_SECRET = "upstream-secret-9f3a"


def keys(**overrides: dict[str, Any]) -> list[dict[str, Any]]:
    base: dict[str, dict[str, Any]] = {
        "a": {"hash": hash_key(KEY_A), "tenant": "team-a", "models": ["alpha"]},
        "b": {"hash": hash_key(KEY_B), "tenant": "team-b"},
        "slow": {"hash": hash_key(KEY_SLOW), "rpm": 2},
        "tokens": {"hash": hash_key(KEY_TOKENS), "tpm": 100},
    }
    for name, extra in overrides.items():
        base[name] = {**base.get(name, {}), **extra}
    return [{"name": name, **fields} for name, fields in base.items()]


@pytest.fixture
async def gw(shared_sims: SimPool, gateways: list[RunningGateway]) -> RunningGateway:
    alpha = [s for s in shared_sims.sims if s.model == "alpha"]
    beta = [s for s in shared_sims.sims if s.model == "beta"]
    config = validate_config(
        {
            "server": {"admin_key": ADMIN},
            "endpoints": [endpoint(s) for s in alpha]
            + [endpoint(s, auth={"mode": "replace", "api_key": UPSTREAM_SECRET}) for s in beta],
            "balancer": {"health": {"interval_s": 0.5}},
            "routing": {"default_model": "beta"},
            "access": {"enabled": True, "keys": keys()},
        }
    )
    running = await start_gateway(config)
    gateways.append(running)
    return running


def sdk(gw: RunningGateway, key: str) -> openai.AsyncOpenAI:
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    gw.on_close.append(api.close)
    return api


async def chat(api: openai.AsyncOpenAI, model: str = "alpha", **extra: Any) -> Any:
    extra.setdefault("max_tokens", 4)
    return await api.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **extra
    )


def rejected(gw: RunningGateway, reason: str) -> float:
    value = gw.gateway.metrics.rejected.labels(reason)._value.get()
    return float(value)


async def test_missing_or_unknown_key_is_401_before_the_body_is_read(gw: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        await chat(sdk(gw, "mr-not-a-key"))
    assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert info.value.body["type"] == "authentication_error"  # type: ignore[index]
    async with aiohttp.ClientSession() as http:
        # No key and a body that is not even JSON: the answer is 401, not 400.
        async with http.post(gw.v1 + "/chat/completions", data=b"{not json") as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "invalid_api_key"
        async with http.get(gw.v1 + "/models") as response:
            assert response.status == 401
    assert rejected(gw, "unauthorized") >= 2


async def test_key_in_x_api_key_and_models_list_filtered(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        async with http.post(
            gw.v1 + "/chat/completions", json=body, headers={"x-api-key": KEY_A}
        ) as response:
            assert response.status == 200
    listed = {m.id async for m in sdk(gw, KEY_A).models.list()}
    assert listed == {"alpha", "MoM", "auto"}


async def test_model_and_route_not_allowed_is_403(gw: RunningGateway) -> None:
    api = sdk(gw, KEY_A)
    assert (await chat(api, "alpha")).headers["x-mixroute-model"] == "alpha"
    with pytest.raises(openai.PermissionDeniedError) as info:
        await chat(api, "beta")
    assert info.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    assert info.value.body["type"] == "permission_error"  # type: ignore[index]
    # MoM decides beta (the default model): the decision is checked too.
    with pytest.raises(openai.PermissionDeniedError) as info:
        await chat(api, "MoM")
    assert "route `default`" in info.value.body["message"]  # type: ignore[index]
    assert rejected(gw, "forbidden") == 2


async def test_rpm_exceeded_is_429_with_honest_retry_after(gw: RunningGateway) -> None:
    api = sdk(gw, KEY_SLOW)
    first, second = await chat(api), await chat(api)
    # OpenAI's x-ratelimit-* headers say what is left after each request.
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"] in ("59s", "1m0s")
    assert "x-ratelimit-limit-tokens" not in second.headers  # this key has no tpm
    with pytest.raises(openai.RateLimitError) as info:
        await chat(api)
    body = info.value.body
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"  # type: ignore[index]
    # 2 per minute: one request frees up every 30 s, and the bucket is empty now.
    retry_after = int(info.value.response.headers["retry-after"])
    assert 29 <= retry_after <= 30
    assert rejected(gw, "rate_limited") == 1
    # Another key is not affected.
    await chat(sdk(gw, KEY_B))


async def test_tokens_per_minute_charge_the_completion_after_it_ends(gw: RunningGateway) -> None:
    api = sdk(gw, KEY_TOKENS)
    raw = await chat(api, max_tokens=40)
    assert raw.headers["x-ratelimit-limit-tokens"] == "100"
    assert 0 < int(raw.headers["x-ratelimit-remaining-tokens"]) < 100  # the prompt estimate
    first = raw.parse()
    assert first.usage.completion_tokens == 40
    # Only the prompt estimate is charged up front, so this one still goes ...
    stream = await api.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=60, stream=True
    )
    pieces = [chunk async for chunk in stream]  # no usage chunk: text events are counted
    assert len(pieces) >= 60
    # ... and now 40 + 60 completion tokens and two prompts are more than 100 per minute.
    with pytest.raises(openai.RateLimitError) as info:
        await chat(api)
    assert info.value.body["type"] == "tokens"  # type: ignore[index]
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60


async def test_client_key_never_reaches_the_upstream(gw: RunningGateway) -> None:
    api = sdk(gw, KEY_B)
    echo = {"x-sim-echo": "1", "x-api-key": KEY_B}
    seen = json.loads(
        (await chat(api, "alpha", extra_headers=echo)).parse().choices[0].message.content
    )
    assert "authorization" not in seen["headers"]  # auth mode forward: dropped with access on
    assert "x-api-key" not in seen["headers"]
    seen = json.loads(
        (await chat(api, "beta", extra_headers=echo)).parse().choices[0].message.content
    )
    assert seen["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"  # replace mode
    assert KEY_B not in json.dumps(seen)


async def test_upstream_credentials_never_leak(
    shared_sims: SimPool, gateways: list[RunningGateway], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"http://127.0.0.1:{free_port()}"
    auth = {"mode": "replace", "api_key": UPSTREAM_SECRET}
    config = validate_config(
        {
            "server": {"admin_key": ADMIN},
            "endpoints": [
                {"name": "gone-0", "url": dead, "model": "gone", "auth": auth},
                *(endpoint(s, auth=auth) for s in shared_sims.sims if s.model == "alpha"),
            ],
            "balancer": {"health": {"enabled": False}},
            "access": {"enabled": True, "keys": keys()},
        }
    )
    assert UPSTREAM_SECRET not in repr(config) and UPSTREAM_SECRET not in str(config)
    gw = await start_gateway(config)
    gateways.append(gw)
    api = sdk(gw, KEY_B)
    with pytest.raises(openai.APIStatusError) as info:
        await chat(api, "gone")
    assert info.value.status_code == 502
    assert UPSTREAM_SECRET not in info.value.response.text
    ok = await chat(api, "alpha")
    assert UPSTREAM_SECRET not in ok.http_response.text
    assert UPSTREAM_SECRET not in json.dumps(dict(ok.headers))
    async with aiohttp.ClientSession() as http:
        # An API key is not an admin key.
        headers = {"authorization": f"Bearer {KEY_B}"}
        async with http.get(gw.url + "/api/v1/endpoints", headers=headers) as response:
            assert response.status == 401
        headers = {"x-mixroute-admin-key": ADMIN}
        async with http.get(gw.url + "/api/v1/endpoints", headers=headers) as response:
            assert response.status == 200
            table = await response.text()
    assert "gone-0" in table and UPSTREAM_SECRET not in table
    assert all(UPSTREAM_SECRET not in repr(e.describe()) for e in gw.gateway.runtime.registry.all())
    assert UPSTREAM_SECRET not in caplog.text and KEY_B not in caplog.text


async def test_tenant_comes_from_the_key_not_the_header(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sim = sim_pool.start("alpha", "alpha-0")
    config = config_for(
        [sim],
        cache={"enabled": True},
        access={"enabled": True, "keys": keys()},
    )
    gw = await start_gateway(config)
    gateways.append(gw)
    question = "What is the boiling point of water at sea level?"

    async def ask(key: str, headers: dict[str, str] | None = None) -> Any:
        return await sdk(gw, key).chat.completions.with_raw_response.create(
            model="alpha",
            messages=[{"role": "user", "content": question}],
            max_tokens=6,
            extra_headers=headers or {},
        )

    assert (await ask(KEY_A)).headers["x-mixroute-cache"] == "miss"
    assert (await ask(KEY_A)).headers["x-mixroute-cache"] == "hit"
    # Tenant B names tenant A's scope in the header: the key's tenant wins, no hit.
    spoofed = await ask(KEY_B, {"x-mixroute-tenant": "team-a"})
    assert spoofed.headers["x-mixroute-cache"] == "miss"
    assert "x-mixroute-endpoint" in spoofed.headers
    assert (await ask(KEY_B)).headers["x-mixroute-cache"] == "hit"  # B's own entry now
    tenants = [r.tenant for r in gw.gateway.recorder.feed.recent()]
    assert tenants == ["team-a", "team-a", "team-b", "team-b"]


async def test_keys_file_is_read_and_reloaded_and_windows_survive(
    shared_sims: SimPool, gateways: list[RunningGateway], tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        yaml.safe_dump([{"name": "filed", "hash": hash_key("mr-from-file"), "rpm": 1}])
    )
    data = {
        "endpoints": [endpoint(s) for s in shared_sims.sims],
        "balancer": {"health": {"interval_s": 0.5}},
        "access": {"enabled": True, "keys_file": "keys.yaml", "keys": keys()},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    gw = await start_gateway(validate_config(data), config_path)
    gateways.append(gw)
    filed = sdk(gw, "mr-from-file")
    await chat(filed)
    with pytest.raises(openai.RateLimitError):
        await chat(filed)
    # A reload (the same keys) must not reset the window.
    await gw.gateway.apply_config(validate_config(data))
    with pytest.raises(openai.RateLimitError):
        await chat(filed)
    # The keys file changes with the next config reload: the old key is gone.
    keys_file.write_text(yaml.safe_dump([{"name": "next", "hash": hash_key("mr-next")}]))
    await gw.gateway.apply_config(validate_config(data))
    await chat(sdk(gw, "mr-next"))
    with pytest.raises(openai.AuthenticationError):
        await chat(filed)
    # A broken keys file is rejected as a whole reload; the running keys stay.
    keys_file.write_text(yaml.safe_dump([{"name": "bad", "key": "mr-plaintext"}]))
    await gw.gateway.apply_config(validate_config(data))
    await chat(sdk(gw, "mr-next"))
    assert gw.gateway.metrics.config_reloads.labels("rejected")._value.get() == 1


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    return str(info.value)


def test_config_holds_hashes_only_and_names_bad_fields() -> None:
    base = {"endpoints": [{"name": "a-0", "url": "http://127.0.0.1:1", "model": "alpha"}]}
    text = problems({**base, "access": {"keys": [{"name": "k", "key": "mr-plain"}]}})
    assert "access.keys[0]" in text and "plaintext" in text and "mixroute keys" in text
    text = problems({**base, "access": {"keys": [{"name": "k", "hash": "mr-plain"}]}})
    assert "access.keys[0].hash: expected sha256:<64 hex digits>" in text
    assert "mr-plain" not in text  # the rejected value (maybe a real key) is not echoed
    bad_model = {"name": "k", "hash": hash_key("x"), "models": ["alpha", "gamma"]}
    text = problems({**base, "access": {"keys": [bad_model]}})
    assert "access.keys[0].models: 'gamma' is not served" in text
    bad_route = {"name": "k", "hash": hash_key("x"), "routes": ["math"]}
    assert "access.keys[0].routes: unknown route 'math'" in problems(
        {**base, "access": {"keys": [bad_route]}}
    )
    twice = [{"name": "k", "hash": hash_key("x")}, {"name": "k", "hash": hash_key("y")}]
    assert "duplicate key names ['k']" in problems({**base, "access": {"keys": twice}})
    ok = validate_config(
        {**base, "access": {"keys": [{"name": "k", "hash": hash_key("x"), "models": ["al*"]}]}}
    )
    assert ok.access.keys[0].tenant_name == "k"


async def test_keys_file_errors_name_the_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"name": "k", "hash": hash_key("x"), "models": ["gamma"]}]))
    config = validate_config(
        {
            "endpoints": [{"name": "a-0", "url": "http://127.0.0.1:1", "model": "alpha"}],
            "access": {"enabled": True, "keys_file": str(path)},
        }
    )
    with pytest.raises(ConfigError) as info:
        await AccessControl.build(config, None, None)
    assert f"access.keys_file {path}: [0].models: 'gamma' is not served" in str(info.value)
    path.write_text(json.dumps([{"name": "k", "hash": "sha256:zz"}]))
    with pytest.raises(ConfigError) as info:
        await AccessControl.build(config, None, None)
    assert "[0].hash: expected sha256" in str(info.value)


async def test_anonymous_clients_when_allowed(
    shared_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    config = config_for(
        [s for s in shared_sims.sims if s.model == "alpha"],
        access={
            "enabled": True,
            "keys": keys(a={"models": ["*"]}),
            "anonymous": {"allowed": True, "unknown_keys": "anonymous", "rpm": 1},
        },
    )
    gw = await start_gateway(config)
    gateways.append(gw)
    async with aiohttp.ClientSession() as http:
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        spoof = {"x-mixroute-tenant": "team-a"}
        async with http.post(gw.v1 + "/chat/completions", json=body, headers=spoof) as response:
            assert response.status == 200
        # An unknown key is served as anonymous here, so it shares the address's bucket.
        with pytest.raises(openai.RateLimitError):
            await chat(sdk(gw, "unused"))
    await chat(sdk(gw, KEY_A))  # a real key has its own (unlimited) bucket
    # The refused request never got as far as a tenant (it is refused before the body).
    tenants = [r.tenant for r in gw.gateway.recorder.feed.recent()]
    assert tenants == ["anonymous", None, "team-a"]


def test_keys_cli_prints_a_key_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    from mixroute.cli import main

    assert main(["keys", "new"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[0].removeprefix("key:").strip()
    digest = lines[1].removeprefix("hash:").strip()
    assert key.startswith("mr-") and len(key) > 40
    assert digest == hash_key(key)
    assert main(["keys", "hash", "--key", key]) == 0
    assert capsys.readouterr().out.strip() == digest
    # What the CLI prints is what a config accepts.
    config = validate_config(
        {
            "endpoints": [{"name": "a-0", "url": "http://127.0.0.1:1", "model": "alpha"}],
            "access": {"enabled": True, "keys": [{"name": "k", "hash": digest}]},
        }
    )
    assert config.access.keys[0].hash == digest


async def test_limits_hold_for_the_gateway_not_per_worker(
    shared_sims: SimPool, tmp_path: Path
) -> None:
    """``serve --workers 2``: the kernel spreads connections over both workers, and a key
    with 20 requests per minute still gets 20, not 20 per worker."""
    alpha = [s for s in shared_sims.sims if s.model == "alpha"]
    config = {
        "endpoints": [endpoint(s) for s in alpha],
        "access": {"enabled": True, "keys": keys(slow={"rpm": 20})},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process, url = await asyncio.to_thread(start_workers, path)
    try:
        statuses: list[int] = []
        remaining: list[int] = []
        workers: set[str] = set()
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        headers = {"authorization": f"Bearer {KEY_SLOW}", "x-mixroute-debug": "1"}
        for _ in range(40):  # a new connection each time: either worker may take it
            status, answer, _ = await post_on_a_new_connection(
                url + "/v1/chat/completions", body, headers
            )
            statuses.append(status)
            if status == 200:
                workers.add(answer["x-mixroute-worker"])
                remaining.append(int(answer["x-ratelimit-remaining-requests"]))
        # A minute's allowance and at most one more refilled while the 40 went by.
        assert 20 <= statuses.count(200) <= 21, statuses
        assert set(statuses) == {200, 429}
        assert len(workers) == 2, "both workers should have answered the key"
        assert remaining[0] == 19 and remaining == sorted(remaining, reverse=True), remaining
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 20)


def test_shared_buckets_are_one_bucket_across_a_fork_and_stay_bounded() -> None:
    store = SharedBuckets(8)
    now = time.monotonic()
    bucket = store.bucket(bucket_tag("key", "requests", 60), 60)
    assert bucket.try_take(1, now) == 0
    child = os.fork()
    if child == 0:  # another worker takes ten more from the same bucket
        same = store.bucket(bucket_tag("key", "requests", 60), 60)
        os._exit(0 if all(same.try_take(1, now) == 0 for _ in range(10)) else 1)
    _, status = os.waitpid(child, 0)
    assert status == 0
    assert bucket.level(now) == 49
    # An empty bucket says how long until one more request fits (60 a minute: 1 s each).
    bucket.take(49, now)
    assert bucket.try_take(1, now) == pytest.approx(1.0)
    # Nine buckets in eight slots: the least recently used one is forgotten (starts full).
    for index in range(8):
        store.bucket(bucket_tag("other", index), 60).take(5, now + 1 + index)
    assert bucket.level(now + 20) == 60


def test_a_stuck_shared_lock_stops_limiting_instead_of_stopping_the_gateway(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mixroute.access import shared

    monkeypatch.setattr(shared, "LOCK_TIMEOUT_S", 0.05)
    store = SharedBuckets(8)
    bucket = store.bucket(bucket_tag("key", "requests", 1), 1)
    now = time.monotonic()
    assert bucket.try_take(1, now) == 0
    assert bucket.try_take(1, now) > 0  # one a minute: the second waits
    store._lock.acquire()  # as a worker killed inside the lock leaves it
    with caplog.at_level(logging.ERROR, logger="mixroute.access.shared"):
        assert bucket.try_take(1, now) == 0
    assert "lock is stuck" in caplog.text
    started = time.monotonic()  # found out once: later requests do not wait for it again
    assert all(bucket.try_take(1, now) == 0 for _ in range(100))
    assert time.monotonic() - started < 0.05
