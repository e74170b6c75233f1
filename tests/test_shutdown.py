"""Graceful shutdown and reload, with real gateway processes and real simulators.

SIGTERM must close the listener at once (new connections refused), close idle keep-alive
connections, let streams in flight finish for up to ``server.drain_s``, cut what is left
with an answer the client can read, and exit. A config reload must not disturb a stream in
flight. See docs/reliability.md (shutdown section) for what these tests establish.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from helpers import (
    RunningGateway,
    Sim,
    SimPool,
    config_for,
    content_tokens,
    endpoint,
    free_port,
    sse_data,
    start_gateway,
    start_gateway_process,
    wait_for_status,
)
from mixroute.config.loader import load_config_file

pytestmark = pytest.mark.timeout(60)


def chat(max_tokens: int, *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "alpha",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def write_config(path: Path, sims: list[Sim], **server: Any) -> None:
    data = {
        "server": server,
        "endpoints": [endpoint(s) for s in sims],
        "balancer": {"health": {"interval_s": 0.5}},
    }
    path.write_text(yaml.safe_dump(data))


def start_draining_gateway(
    sim_pool: SimPool,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    decode_ms: str,
    drain_s: float,
) -> tuple[subprocess.Popen[bytes], str]:
    """One simulator (``decode_ms`` a token) behind a ready ``mixroute serve`` process."""
    sim = sim_pool.start("alpha", "alpha-0", "--decode-ms-per-token", decode_ms)
    path = tmp_path / "config.yaml"
    write_config(path, [sim], drain_s=drain_s)
    process, url = start_gateway_process(path, tmp_path / "gateway.log")
    processes.append(process)
    wait_for_status(url + "/ready", 200)
    return process, url


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Gateway processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def refused(url: str) -> bool:
    """True when a TCP connect to the URL's port is refused (nothing listens)."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued in the backlog as the listener closed: look again
        return False


async def wait_refused(url: str, limit_s: float = 3.0) -> float:
    """Seconds until new connections are refused (the listener closed)."""
    started = time.monotonic()
    while not refused(url):
        assert time.monotonic() - started < limit_s, "the gateway kept accepting connections"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def open_stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> AsyncIterator[aiohttp.ClientResponse]:
    """A stream whose first token has arrived (so the request is surely in flight)."""
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
        assert first.startswith(b"data: ")
        yield response


def idle_keepalive_socket(url: str) -> socket.socket:
    """A connection that served one request and now idles with keep-alive."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
        reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.slow
async def test_sigterm_drains_streams_refuses_new_connections(
    sim_pool: SimPool, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    drain_s = 10.0
    process, url = start_draining_gateway(sim_pool, processes, tmp_path, "15", drain_s)
    idle = idle_keepalive_socket(url)
    tokens = 120  # about 1.8 s of streaming at 15 ms a token
    async with (
        aiohttp.ClientSession() as session,
        open_stream(session, url, chat(tokens)) as stream,
    ):
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await wait_refused(url) < 1.0
        idle.settimeout(2.0)
        assert idle.recv(1) == b"", "an idle keep-alive connection should be closed at once"
        idle.close()
        rest = (await asyncio.wait_for(stream.read(), drain_s)).decode()
    events = sse_data(rest)
    assert events[-1] == "[DONE]"
    assert not any('"error"' in e for e in events)
    assert content_tokens(events) == tokens  # every token (only the role chunk came before)
    assert await asyncio.to_thread(process.wait, drain_s) == 0
    assert time.monotonic() - signalled < drain_s
    log = (tmp_path / "gateway.log").read_text()
    assert "drained: every request in flight finished" in log


@pytest.mark.slow
async def test_past_drain_time_streams_are_cut_cleanly_and_process_exits(
    sim_pool: SimPool, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    drain_s = 1.0
    process, url = start_draining_gateway(sim_pool, processes, tmp_path, "50", drain_s)
    async with aiohttp.ClientSession() as session:
        # A non-streamed answer of 400 tokens takes 20 s: still waiting at the cut.
        waiting = asyncio.create_task(
            session.post(url + "/v1/chat/completions", json=chat(400, stream=False))
        )
        async with open_stream(session, url, chat(400)) as stream:
            await asyncio.sleep(0.2)  # the non-streamed request is at the simulator now
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rest = (await asyncio.wait_for(stream.read(), 10)).decode()
        response = await asyncio.wait_for(waiting, 10)
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "gateway_shutting_down"
        response.release()
    events = sse_data(rest)
    assert events[-1] == "[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "gateway_shutting_down"
    assert 0 < content_tokens(events) < 400  # cut mid-way, after drain_s of tokens
    assert await asyncio.to_thread(process.wait, 10) == 0
    assert time.monotonic() - signalled < drain_s + 3.0
    log = (tmp_path / "gateway.log").read_text()
    assert "is up: cutting 2 forwarded request(s)" in log


@pytest.mark.slow
async def test_second_signal_cuts_at_once(
    sim_pool: SimPool, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    process, url = start_draining_gateway(sim_pool, processes, tmp_path, "50", 30.0)
    async with aiohttp.ClientSession() as session, open_stream(session, url, chat(400)) as stream:
        process.send_signal(signal.SIGTERM)
        await wait_refused(url)
        process.send_signal(signal.SIGINT)  # the impatient operator's second Ctrl-C
        signalled = time.monotonic()
        rest = (await asyncio.wait_for(stream.read(), 10)).decode()
    events = sse_data(rest)
    assert events[-1] == "[DONE]"
    assert orjson.loads(events[-2])["error"]["code"] == "gateway_shutting_down"
    assert await asyncio.to_thread(process.wait, 10) == 0
    assert time.monotonic() - signalled < 3.0  # not the 30 s of drain_s
    assert "interrupted by a second signal" in (tmp_path / "gateway.log").read_text()


@pytest.mark.slow
async def test_workers_drain_on_sigterm(
    sim_pool: SimPool, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    sim = sim_pool.start("alpha", "alpha-0", "--decode-ms-per-token", "15")
    path = tmp_path / "config.yaml"
    port = free_port()
    drain_s = 10.0
    write_config(path, [sim], drain_s=drain_s, port=port)
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mixroute.cli", "serve", "--config", str(path), "--workers", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(wait_for_status, url + "/ready", 200, 60)
    tokens = 120
    async with (
        aiohttp.ClientSession() as session,
        open_stream(session, url, chat(tokens)) as stream,
    ):
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await wait_refused(url) < 1.0  # both workers closed their listeners
        rest = (await asyncio.wait_for(stream.read(), drain_s)).decode()
    events = sse_data(rest)
    assert events[-1] == "[DONE]"
    assert content_tokens(events) == tokens
    assert await asyncio.to_thread(process.wait, drain_s) == 0
    assert time.monotonic() - signalled < drain_s
    text = (tmp_path / "gateway.log").read_text()
    assert text.count("mixroute stopped") == 2


async def test_ready_is_503_while_draining(
    shared_sims: SimPool, gateways: list[RunningGateway]
) -> None:
    gw = await start_gateway(config_for(shared_sims.sims[:2]))
    gateways.append(gw)
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/ready") as response:
            assert response.status == 200
        gw.gateway.draining = True
        async with session.get(gw.url + "/ready") as response:
            assert response.status == 503
            assert (await response.json())["status"] == "draining"
        async with session.get(gw.url + "/health") as response:
            assert response.status == 200  # alive: only taken out of rotation


async def test_stream_in_flight_survives_reload_that_removes_its_endpoint(
    sim_pool: SimPool, gateways: list[RunningGateway], tmp_path: Path
) -> None:
    old = sim_pool.start("alpha", "alpha-0", "--decode-ms-per-token", "15")
    new = sim_pool.start("alpha", "alpha-1", "--decode-ms-per-token", "1")
    path = tmp_path / "config.yaml"
    write_config(path, [old], reload_interval_s=0.1)
    gw = await start_gateway(load_config_file(path), config_path=path)
    gateways.append(gw)
    first_runtime = gw.gateway.runtime
    tokens = 150  # about 2.2 s: the reload lands mid-stream
    async with aiohttp.ClientSession() as session:
        async with open_stream(session, gw.url, chat(tokens)) as stream:
            assert stream.headers["x-mixroute-endpoint"] == "alpha-0"
            write_config(path, [new], reload_interval_s=0.1)  # alpha-0 is gone from it
            deadline = time.monotonic() + 5
            while gw.gateway.runtime is first_runtime:
                assert time.monotonic() < deadline, "the reload was not applied"
                await asyncio.sleep(0.05)
            assert not stream.content.at_eof(), "the reload should land mid-stream"
            rest = (await asyncio.wait_for(stream.read(), 10)).decode()
        async with session.post(
            gw.url + "/v1/chat/completions", json=chat(tokens, stream=False)
        ) as response:
            assert response.headers["x-mixroute-endpoint"] == "alpha-1"
            reference = (await response.json())["choices"][0]["message"]["content"]
    events = sse_data(rest)
    assert events[-1] == "[DONE]"
    text = "".join(
        (orjson.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in events[:-1]
    )
    # The simulator's text depends only on prompt and seed: the stream lost nothing.
    assert text == reference
    assert content_tokens(events) == tokens
