"""The web dashboard: its data APIs against a real gateway in front of real simulators, and
the page itself in a real headless Chromium (Playwright), behind the admin key."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from helpers import (
    ROOT,
    RunningGateway,
    SimPool,
    config_for,
    endpoint,
    post_on_a_new_connection,
    start_gateway,
    start_gateway_process,
    start_workers,
    wait_for_status,
)
from mixroute.dashboard.redact import MASK, redact_config

ADMIN_KEY = "adm-7f3c9a1e5b2d"
UPSTREAM_KEY = "sk-upstream-0d9e8c7b6a55"
DSN_PASSWORD = "pgpass-41b7e2c9"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"


def _gateway_config(pool: SimPool, **server: Any) -> Any:
    """alpha and beta behind the gateway; MoM goes to alpha through the ``default`` route
    (no semantic model needed), the upstream gets our key, and a pgvector DSN with a
    password sits in the (disabled) cache settings: secrets for the config view to hide."""
    sims = pool.sims
    config = config_for(
        sims,
        server=server,
        routing={"default_model": "alpha"},
        cache={
            "enabled": False,
            "backend": "pgvector",
            "pgvector": {"dsn": f"postgresql://mixroute:{DSN_PASSWORD}@db.internal:5432/cache"},
        },
    )
    endpoints = [
        e.model_copy(update={"auth": e.auth.model_copy(update={"api_key": UPSTREAM_KEY})})
        for e in config.endpoints
    ]
    return config.model_copy(update={"endpoints": endpoints})


async def _get(
    session: aiohttp.ClientSession, url: str, key: str | None = None
) -> tuple[int, Any, Any]:
    headers = {"x-mixroute-admin-key": key} if key else {}
    async with session.get(url, headers=headers) as response:
        body = await response.read()
        parsed = orjson.loads(body) if response.content_type == "application/json" else body
        return response.status, parsed, response.headers


async def test_feed_and_state_show_a_request(
    shared_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    running = await start_gateway(_gateway_config(shared_sims))
    gateways.append(running)
    api = running.url + "/api/v1/dashboard"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            running.v1 + "/chat/completions",
            json={"model": "MoM", "messages": [{"role": "user", "content": "hello there"}]},
        ) as response:
            assert response.status == 200
            request_id = response.headers["x-request-id"]
            endpoint = response.headers["x-mixroute-endpoint"]
        status, feed, _ = await _get(session, api + "/feed?after=0&limit=50")
        assert status == 200
        mine = [r for r in feed["records"] if r["request_id"] == request_id]
        assert len(mine) == 1, feed
        record = mine[0]
        assert (record["route"], record["model"], record["endpoint"]) == (
            "default",
            "alpha",
            endpoint,
        )
        assert record["requested_model"] == "MoM" and record["status"] == 200
        assert feed["latest_seq"] == record["seq"] and feed["worker"] == os.getpid()

        # Polling with the newest seq gets nothing new.
        status, later, _ = await _get(session, api + f"/feed?after={record['seq']}")
        assert status == 200 and later["records"] == []

        status, state, _ = await _get(session, api + "/state")
        assert status == 200
        models = {m["name"]: m for m in state["models"]}
        assert set(models) == {"alpha", "beta"}
        alpha = models["alpha"]
        assert [e["name"] for e in alpha["endpoints"]] == ["alpha-0", "alpha-1"]
        assert all(
            e["healthy"] and e["available"] and e["circuit"] == "closed" for e in alpha["endpoints"]
        )
        assert alpha["window"]["requests"] == 1
        by_name = {e["name"]: e for e in alpha["endpoints"]}
        assert by_name[endpoint]["window"]["requests"] == 1
        assert state["window"]["routes"] == {"default": 1}
        assert state["totals"]["endpoints"] == 4 and state["totals"]["available"] == 4
        assert sum(p["requests"] for p in state["window"]["series"]["points"]) == 1


async def test_one_feed_and_state_for_all_workers(shared_sims: SimPool, tmp_path: Path) -> None:
    """``serve --workers 2``: whichever worker a poll lands on shows both workers' requests,
    numbered in one sequence, and sums both workers' endpoint load."""
    alpha = [s for s in shared_sims.sims if s.model == "alpha"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"endpoints": [endpoint(s) for s in alpha]}))
    process, url = await asyncio.to_thread(start_workers, path)
    try:
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        sent: dict[str, str] = {}  # request id -> the worker that answered it
        for _ in range(12):
            status, headers, _ = await post_on_a_new_connection(
                url + "/v1/chat/completions", body, {"x-mixroute-debug": "1"}
            )
            assert status == 200
            sent[headers["x-request-id"]] = headers["x-mixroute-worker"]
        assert len(set(sent.values())) == 2
        for _ in range(4):  # new connections: polls land on either worker
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as http:
                status, feed, _ = await _get(http, url + "/api/v1/dashboard/feed?after=0&limit=500")
                assert status == 200
                assert {r["request_id"] for r in feed["records"]} == set(sent)
                assert [r["seq"] for r in feed["records"]] == list(range(1, 13))
                assert feed["latest_seq"] == 12
                status, later, _ = await _get(http, url + "/api/v1/dashboard/feed?after=9")
                assert [r["seq"] for r in later["records"]] == [10, 11, 12]
                status, state, _ = await _get(http, url + "/api/v1/dashboard/state")
                assert state["totals"]["requests"] == 12
                assert state["window"]["total"]["requests"] == 12
    finally:
        process.terminate()
        assert await asyncio.to_thread(process.wait, 20) == 0


async def test_bad_feed_parameters_are_clean_400s(
    shared_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    running = await start_gateway(_gateway_config(shared_sims))
    gateways.append(running)
    feed = running.url + "/api/v1/dashboard/feed"
    bad = [
        "after=abc",
        "after=-1",
        "limit=-5",
        "limit=0",
        "limit=100000",
        "limit=1e3",
        "limit=%C2%B2",
        "after=" + "9" * 5000,
        "limit=--5",
    ]
    async with aiohttp.ClientSession() as session:
        for query in bad:
            status, body, _ = await _get(session, f"{feed}?{query}")
            assert status == 400, query
            assert body["error"]["type"] == "invalid_request_error", query
            assert body["error"]["param"] == query.split("=")[0], query
        status, body, _ = await _get(session, f"{feed}?limit=500&after=0")
        assert status == 200 and body["records"] == []


async def test_page_assets_and_switch(shared_sims: SimPool, gateways: list[RunningGateway]) -> None:
    running = await start_gateway(_gateway_config(shared_sims, admin_key=ADMIN_KEY))
    gateways.append(running)
    async with aiohttp.ClientSession() as session:
        # The page itself loads without the key (it holds no data) with a strict CSP.
        status, body, headers = await _get(session, running.url + "/dashboard")
        assert status == 200 and b"<title>mixroute" in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with session.get(f"{running.url}/dashboard/{name}") as response:
                assert response.status == 200 and response.content_type == kind
        status, body, _ = await _get(session, running.url + "/dashboard/..%2Fhandlers.py")
        assert status == 404 and body["error"]["code"] == "not_found"

        off = running.gateway.runtime.config.model_copy(
            update={
                "server": running.gateway.runtime.config.server.model_copy(
                    update={"dashboard": False}
                )
            }
        )
        await running.gateway.apply_config(off)
        for path in ("/dashboard", "/dashboard/app.js"):
            status, _, _ = await _get(session, running.url + path)
            assert status == 404, path
        status, _, _ = await _get(session, running.url + "/api/v1/dashboard/state", ADMIN_KEY)
        assert status == 404


async def test_admin_key_and_redacted_config(
    shared_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    running = await start_gateway(_gateway_config(shared_sims, admin_key=ADMIN_KEY))
    gateways.append(running)
    api = running.url + "/api/v1/dashboard"
    async with aiohttp.ClientSession() as session:
        for path in ("/feed", "/state", "/config"):
            status, body, _ = await _get(session, api + path)
            assert status == 401 and body["error"]["code"] == "invalid_admin_key", path
            status, body, _ = await _get(session, api + path, "wrong-key")
            assert status == 401, path
            status, body, _ = await _get(session, api + path, ADMIN_KEY)
            assert status == 200, path
        async with session.get(api + "/config", headers={"x-mixroute-admin-key": ADMIN_KEY}) as r:
            raw = await r.text()
            assert r.headers["Cache-Control"] == "no-store"
    for secret in (ADMIN_KEY, UPSTREAM_KEY, DSN_PASSWORD):
        assert secret not in raw
    config = orjson.loads(raw)["config"]
    assert config["server"]["admin_key"] == MASK
    assert {e["auth"]["api_key"] for e in config["endpoints"]} == {MASK}
    assert config["cache"]["pgvector"]["dsn"] == MASK
    # What is not secret is still there to read.
    assert config["routing"]["default_model"] == "alpha"
    assert [e["name"] for e in config["endpoints"]] == ["alpha-0", "alpha-1", "beta-0", "beta-1"]


def test_redaction_is_by_name_and_covers_new_sections() -> None:
    """A section the redactor has never heard of (API keys, tokens) is masked by its field
    names; counts named like tokens are not secrets; passwords in URLs go wherever they are."""
    config = {
        "access": {
            "keys": [
                {
                    "name": "team-a",
                    "key": "mk-team-a-123456",
                    "tenant": "a",
                    "rpm": 5,
                    "hash": "sha256:0f0f0f0f",
                    "value": "raw-value-1234",
                },
                "mk-bare-key-987654",
            ],
            "by_key": {"mk-mapkey-55555": {"tenant": "b"}},
            "key_headers": ["authorization", "x-api-key"],
            "keys_file": "/etc/mixroute/keys.yaml",
        },
        "tracing": {
            "headers": {"x-honeycomb-team": "hc-abcdef12345", "Authorization": "Bearer tr-1234567"},
            "bearer_token": "tt-777777",
        },
        "limits": {"max_tokens": 512, "followup_max_tokens": 64, "keywords": ["key", "token"]},
        "upstream": {"url": "https://svc:hunter2pw@models.internal/v1", "password_file": "/run/pw"},
        "note": "reach it at postgresql://u@h/db?sslpassword=qq998877&x=1",
        "echo": "someone pasted mk-team-a-123456 here",
    }
    redacted = redact_config(config)
    text = orjson.dumps(redacted).decode()
    for secret in (
        "mk-team-a-123456", "mk-bare-key-987654", "mk-mapkey-55555", "hc-abcdef12345",
        "tr-1234567", "tt-777777", "hunter2pw", "qq998877", "0f0f0f0f", "raw-value-1234",
    ):  # fmt: skip
        assert secret not in text, secret
    assert redacted["limits"] == config["limits"]
    first = redacted["access"]["keys"][0]
    # Who a key is for stays readable; the key, its hash and anything unknown do not.
    assert first == {"name": "team-a", "key": MASK, "tenant": "a", "rpm": 5, "hash": MASK,
                     "value": MASK}  # fmt: skip
    assert redacted["access"]["key_headers"] == ["authorization", "x-api-key"]
    assert redacted["access"]["keys_file"] == "/etc/mixroute/keys.yaml"
    assert list(redacted["access"]["by_key"].values()) == [{"tenant": "b"}]
    assert redacted["tracing"]["headers"] == {"x-honeycomb-team": MASK, "Authorization": MASK}
    assert redacted["upstream"]["url"] == f"https://svc:{MASK}@models.internal/v1"
    assert redacted["echo"] == f"someone pasted {MASK} here"


def _chromium() -> str:
    """Debian's Chromium; a missing browser fails the test (CI installs it): no skip."""
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(
        "Chromium is not installed: run `make browser` (Debian's chromium and "
        "chromium-driver; Playwright's own browser download does not work here)."
    )


def _unlock(page: Any, key: str | None) -> None:
    """Behind a key the page asks for it once (a wrong one is refused); without, it is live."""
    if key is not None:
        page.wait_for_selector("#keygate:not([hidden])", timeout=10_000)
        page.fill("#keyinput", "not-the-key")
        page.click("#keysubmit")
        page.wait_for_selector("#keyerror:has-text('refused')", timeout=10_000)
        page.fill("#keyinput", key)
        page.click("#keysubmit")
        page.wait_for_selector("#keygate", state="hidden", timeout=10_000)
    page.wait_for_selector("#conn:has-text('live')", timeout=10_000)
    assert page.is_hidden("#keygate")
    assert page.evaluate("sessionStorage.getItem('mixroute.adminKey')") == key


def _row_of(page: Any, request_id: str) -> dict[str, str]:
    row = page.wait_for_selector(f'#feed-body tr[data-request-id="{request_id}"]', timeout=10_000)
    return {
        field: row.query_selector(f'[data-field="{field}"]').inner_text()
        for field in ("route", "model", "endpoint")
    }


def _playground(page: Any) -> dict[str, str]:
    """Explain and send a prompt; the decision shown and the response headers shown."""
    page.fill("#pg-prompt", "Solve 3x + 7 = 22 for x and check the answer.")
    page.click("#pg-send")
    page.wait_for_selector("#pg-headers tr[data-header='x-mixroute-route']", timeout=15_000)
    assert page.inner_text("#pg-decision [data-field='route']") == "math"
    assert page.inner_text("#pg-decision [data-field='model']") == "math-llm"
    return {
        row.query_selector("td:first-child").inner_text(): row.query_selector(
            "td:last-child"
        ).inner_text()
        for row in page.query_selector_all("#pg-headers tr")
    }


def test_missing_chromium_fails_and_names_make_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI installs the browser; a machine without it must fail the browser test, not skip it."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(Path, "exists", lambda self: False)
    with pytest.raises(pytest.fail.Exception, match="make browser"):
        _chromium()


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("admin_key", [ADMIN_KEY, None], ids=["admin-key", "open"])
def test_dashboard_in_chromium(demo_sims: SimPool, tmp_path: Path, admin_key: str | None) -> None:
    """The demo's config (with or without an admin key), a real ``mixroute serve``, a real
    headless Chromium: a request sent with the openai SDK shows up in the live feed (id,
    route, model, endpoint), the playground explains and sends a prompt, the endpoint table
    has the engine stats scraped from the simulators, and the config view hides the key."""
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the test extras pin it
        pytest.fail("playwright is not installed: run `make install-test`.")
    from openai import OpenAI

    from mixroute.demo import demo_config

    raw = demo_config(demo_sims.sims)  # type: ignore[arg-type]  # a Sim has a Simulator's fields
    raw["server"] = {**raw.get("server", {}), "admin_key": admin_key}
    raw["balancer"]["health"]["interval_s"] = 0.5
    raw["balancer"]["stats"] = {"enabled": True, "interval_s": 0.5}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    process, url = start_gateway_process(config_path, tmp_path / "gateway.log")
    try:
        wait_for_status(url + "/ready", 200, timeout=30)
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on(
                    "console",
                    lambda msg: errors.append(msg.text) if msg.type == "error" else None,
                )
                page.goto(url + "/dashboard")
                _unlock(page, admin_key)

                reply = client.chat.completions.with_raw_response.create(
                    model="MoM",
                    messages=[
                        {"role": "user", "content": "What is the integral of x^2 from 0 to 3?"}
                    ],
                )
                assert _row_of(page, reply.headers["x-request-id"]) == {
                    "route": reply.headers["x-mixroute-route"],
                    "model": reply.headers["x-mixroute-model"],
                    "endpoint": reply.headers["x-mixroute-endpoint"],
                }
                assert reply.headers["x-mixroute-route"] == "math"

                # Some more traffic, so the charts and tables have something to show.
                for prompt, wanted in (
                    ("Write a haiku about a lighthouse", "creative"),
                    ("Why does my Rust borrow checker complain about this function?", "code"),
                    ("What is the integral of x^2 from 0 to 3?", "math"),  # a cache hit
                    ("What is the capital of France?", "general"),
                ):
                    got = client.chat.completions.with_raw_response.create(
                        model="MoM", messages=[{"role": "user", "content": prompt}]
                    )
                    assert got.headers["x-mixroute-route"] == wanted, prompt
                    time.sleep(0.3)

                headers = _playground(page)
                assert headers["x-mixroute-route"] == "math"
                assert headers["x-mixroute-model"] == "math-llm"
                assert "x-mixroute-candidates" in headers  # the debug headers are there too
                # The playground's request reaches the feed as well.
                assert _row_of(page, headers["x-request-id"])["route"] == "math"

                # Health, load and engine stats per endpoint; the config, its secret masked.
                page.wait_for_selector(
                    "[data-model='math-llm'] tr[data-endpoint='math-llm-0'] "
                    "td[data-field='engine']:has-text('%')",
                    timeout=10_000,
                )
                page.wait_for_selector("#config:has-text('admin_key')", timeout=10_000)
                if admin_key is not None:
                    assert admin_key not in page.inner_text("#config")
                    assert MASK in page.inner_text("#config")
                    assert admin_key not in page.content()

                page.wait_for_timeout(1200)  # one more poll, so the charts hold the last request
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 50_000
                docs_copy = os.environ.get("MIXROUTE_DOCS_SCREENSHOT") == "1"
                if admin_key is not None and (docs_copy or not SCREENSHOT.exists()):
                    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shot, SCREENSHOT)
                # 401s are expected: the page's first poll and the wrong key; nothing else.
                assert [e for e in errors if "status of 401" not in e] == []
            finally:
                browser.close()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except Exception:
            process.kill()
            process.wait(5)
