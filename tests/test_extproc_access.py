"""Access control in the Envoy layout: the real Envoy binary, ``python -m mixroute.extproc``
with keys, limits and an admission limit, real simulators and the real openai SDK.

Two processors behind two Envoys: ``keys`` (keys required; per-key models, tenants, rpm,
tpm; ``alpha`` takes one request at a time with no queue) and ``anonymous`` (no key needed,
two requests per minute per client address, which Envoy passes as ``source.address``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from helpers import SimPool, Topology, endpoint, free_port, stop_process, wait_for_status, wait_port
from mixroute.access.keys import hash_key
from mixroute.config.loader import validate_config
from mixroute.extproc.envoy_config import clusters_from_config

pytestmark = pytest.mark.timeout(60)

KEY_A = "mr-envoy-key-alpha-only"
KEY_B = "mr-envoy-key-team-b"
KEY_B2 = "mr-envoy-key-team-b-again"
KEY_SLOW = "mr-envoy-key-two-rpm"
KEY_TOKENS = "mr-envoy-key-100-tpm"


def keys_config() -> dict[str, Any]:
    return {
        "enabled": True,
        "keys": [
            {"name": "a", "hash": hash_key(KEY_A), "tenant": "team-a", "models": ["alpha"]},
            {"name": "b", "hash": hash_key(KEY_B), "tenant": "team-b"},
            {"name": "b2", "hash": hash_key(KEY_B2), "tenant": "team-b"},
            {"name": "slow", "hash": hash_key(KEY_SLOW), "rpm": 2},
            {"name": "tokens", "hash": hash_key(KEY_TOKENS), "tpm": 100},
        ],
    }


@pytest.fixture(scope="module")
def envoys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    workdir = tmp_path_factory.mktemp("extproc-access")
    pool = SimPool()
    top = Topology()
    try:
        sims = [
            pool.start("alpha", "alpha-0", "--decode-ms-per-token", "10", wait=False),
            pool.start("beta", "beta-0", wait=False),
        ]
        for sim in sims:
            sim.wait_healthy()
        base: dict[str, Any] = {
            "endpoints": [endpoint(s) for s in sims],
            "balancer": {"health": {"interval_s": 0.5}},
            "routing": {"default_model": "beta"},
            "models": {"alpha": {"max_in_flight": 1, "max_queue": 0}},
            "cache": {"enabled": True},
        }
        configs = {
            "keys": {**base, "access": keys_config()},
            "anonymous": {
                **base,
                "access": {
                    "enabled": True,
                    "anonymous": {"allowed": True, "unknown_keys": "anonymous", "rpm": 2},
                },
            },
        }
        for name, raw in configs.items():
            path = workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            grpc = free_port()
            argv = [sys.executable, "-m", "mixroute.extproc", "--config", str(path)]
            process = top.start([*argv, "--port", str(grpc)], workdir / f"extproc-{name}.log")
            clusters = clusters_from_config(validate_config(raw))
            settings = {"clusters": clusters, "processor": [f"127.0.0.1:{grpc}"]}
            top.start_envoy(name, {**settings, "default_model": "beta"}, workdir)
            wait_port(grpc, process)
        for name in configs:
            wait_for_status(top.urls[name + "-admin"] + "/ready", 200, timeout=30)
        yield top
    finally:
        for process in reversed(top.processes):
            stop_process(process)
        pool.stop_all()


def sdk(top: Topology, key: str, envoy: str = "keys") -> openai.OpenAI:
    return openai.OpenAI(base_url=top.urls[envoy] + "/v1", api_key=key, max_retries=0)


def chat(api: openai.OpenAI, model: str = "alpha", text: str = "hi", **extra: Any) -> Any:
    extra.setdefault("max_tokens", 4)
    return api.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **extra
    )


def post_without_key(url: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read())


def test_a_key_is_required_and_checked(envoys: Topology) -> None:
    status, headers, body = post_without_key(envoys.urls["keys"])
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError) as info:
        chat(sdk(envoys, "mr-not-a-key"))
    assert info.value.body["type"] == "authentication_error"  # type: ignore[index]


def test_the_model_list_is_the_keys(envoys: Topology) -> None:
    assert {m.id for m in sdk(envoys, KEY_A).models.list()} == {"alpha", "MoM", "auto"}
    assert {"alpha", "beta"} <= {m.id for m in sdk(envoys, KEY_B).models.list()}
    with pytest.raises(openai.AuthenticationError):
        sdk(envoys, "mr-not-a-key").models.list()


def test_models_and_routes_per_key(envoys: Topology) -> None:
    api = sdk(envoys, KEY_A)
    assert chat(api, "alpha").headers["x-mixroute-model"] == "alpha"
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(api, "beta")
    assert info.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(api, "MoM")  # decided beta (the default model): the decision is checked too
    assert "route `default`" in info.value.body["message"]  # type: ignore[index]


def test_the_client_key_never_reaches_the_upstream(envoys: Topology) -> None:
    raw = chat(
        sdk(envoys, KEY_B),
        "beta",
        extra_headers={
            "x-sim-echo": "1",
            "x-api-key": KEY_B,
            "x-mixroute-cache-control": "no-cache",
        },
    )
    seen = json.loads(raw.parse().choices[0].message.content)
    assert "authorization" not in seen["headers"]
    assert "x-api-key" not in seen["headers"]
    assert KEY_B not in json.dumps(seen)


def test_requests_per_minute(envoys: Topology) -> None:
    api = sdk(envoys, KEY_SLOW)
    first, second = chat(api, "beta"), chat(api, "beta")
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as info:
        chat(api, "beta")
    assert info.value.body["type"] == "requests"  # type: ignore[index]
    assert 29 <= int(info.value.response.headers["retry-after"]) <= 30
    chat(sdk(envoys, KEY_B), "beta")  # another key is not affected


def test_tokens_per_minute_charge_the_completion(envoys: Topology) -> None:
    """The processor sees the answer (JSON and SSE) only to charge its usage to the key."""
    api = sdk(envoys, KEY_TOKENS)
    raw = chat(api, "beta", max_tokens=40, extra_headers={"x-mixroute-cache-control": "no-cache"})
    assert raw.headers["x-ratelimit-limit-tokens"] == "100"
    assert raw.parse().usage.completion_tokens == 40
    stream = api.chat.completions.create(
        model="beta",
        messages=[{"role": "user", "content": "hi there"}],
        max_tokens=60,
        stream=True,
        extra_headers={"x-mixroute-cache-control": "no-cache"},
    )
    assert len(list(stream)) >= 60
    # Only prompt estimates were charged up front: 40 + 60 completion tokens are over 100.
    with pytest.raises(openai.RateLimitError) as info:
        chat(api, "beta")
    assert info.value.body["type"] == "tokens"  # type: ignore[index]


def test_the_tenant_comes_from_the_key(envoys: Topology) -> None:
    """The key's tenant is the cache scope: team B's keys share answers, team A sees none of
    them, not even by claiming team B's scope in a header."""
    question = f"What is the capital of France? ({uuid.uuid4().hex[:8]})"
    assert chat(sdk(envoys, KEY_B), "alpha", question).headers["x-mixroute-cache"] == "miss"
    assert chat(sdk(envoys, KEY_B2), "alpha", question).headers["x-mixroute-cache"] == "hit"
    assert chat(sdk(envoys, KEY_A), "alpha", question).headers["x-mixroute-cache"] == "miss"
    question = f"What is the capital of Peru? ({uuid.uuid4().hex[:8]})"
    assert chat(sdk(envoys, KEY_B), "alpha", question).headers["x-mixroute-cache"] == "miss"
    claimed = {"x-mixroute-tenant": "team-b"}
    other = chat(sdk(envoys, KEY_A), "alpha", question, extra_headers=claimed)
    assert other.headers["x-mixroute-cache"] == "miss"


def stream_alpha(api: openai.OpenAI, max_tokens: int) -> Any:
    return api.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "stream it"}],
        max_tokens=max_tokens,
        stream=True,
        extra_headers={"x-mixroute-cache-control": "no-cache"},
    )


def test_admission_limit_holds_the_slot_until_the_answer_ends(envoys: Topology) -> None:
    api = sdk(envoys, KEY_B)
    no_cache = {"x-mixroute-cache-control": "no-cache"}
    outcome: list[Any] = []

    def slow() -> None:
        try:
            outcome.append(chat(api, "alpha", max_tokens=400, extra_headers=no_cache))
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=slow)
    worker.start()
    try:
        time.sleep(1.0)  # the slow request holds alpha's only slot (400 tokens at 10 ms)
        with pytest.raises(openai.RateLimitError) as info:
            chat(api, "alpha", extra_headers=no_cache)
        assert info.value.body["code"] == "queue_full"  # type: ignore[index]
    finally:
        worker.join(20)
    assert not isinstance(outcome[0], Exception), outcome
    # A whole stream passes, then the slot is free again.
    assert len(list(stream_alpha(api, 8))) >= 8
    assert chat(api, "alpha", extra_headers=no_cache).headers["x-mixroute-model"] == "alpha"
    # A client that hangs up mid-stream gives the slot back too.
    stream = stream_alpha(api, 400)
    next(iter(stream))
    stream.close()
    for _ in range(50):
        try:
            chat(api, "alpha", extra_headers=no_cache)
            break
        except openai.RateLimitError:
            time.sleep(0.1)
    else:
        raise AssertionError("the slot of an abandoned stream was not given back within 5 s")


def test_anonymous_clients_are_limited_by_address(envoys: Topology) -> None:
    api = sdk(envoys, "any-key-at-all", envoy="anonymous")
    chat(api, "beta")
    chat(api, "beta")
    with pytest.raises(openai.RateLimitError):
        chat(api, "beta")
    status, _, body = post_without_key(envoys.urls["anonymous"])
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"


def test_source_address_loses_its_port() -> None:
    """One client opens many connections: its per-address bucket must not be per port."""
    from mixroute.extproc.processor import _host

    assert _host("10.0.0.7:51234") == "10.0.0.7"
    assert _host("[::1]:8080") == "::1"
    assert _host("") is None
