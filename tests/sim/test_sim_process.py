"""The simulator as a real process: ``python -m mixroute.sim``, crashes and signals."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

MODEL = "proc-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}

Launch = Callable[..., Awaitable[tuple[asyncio.subprocess.Process, str]]]


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """Start ``python -m mixroute.sim --port 0`` and return (process, base url)."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(*extra: str) -> tuple[asyncio.subprocess.Process, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mixroute.sim",
            "--port",
            "0",
            "--model",
            MODEL,
            *extra,
            stdout=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.search(r"ready: (http://\S+)", line)
        assert match, f"unexpected first line: {line!r}"
        return process, match.group(1)

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_crash_after_dies_mid_stream_of_next_request(launch: Launch) -> None:
    process, url = await launch("--crash-after", "1", "--decode-ms-per-token", "5")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(url + "/v1/chat/completions", json=CHAT) as response:
            assert response.status == 200  # request 1 is served
        stream_request = {**CHAT, "stream": True, "max_tokens": 50}
        received = b""
        with pytest.raises(aiohttp.ClientError):
            async with session.post(url + "/v1/chat/completions", json=stream_request) as resp:
                assert resp.status == 200  # headers arrived, then the process died
                async for chunk in resp.content.iter_any():
                    received += chunk
    assert b'"content":""' in received  # the role chunk made it out
    assert b"[DONE]" not in received
    assert await asyncio.wait_for(process.wait(), 30) == 1


async def test_sigterm_shuts_down_cleanly(launch: Launch) -> None:
    process, url = await launch()
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/health") as response,
    ):
        assert response.status == 200
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_sigint_with_a_hung_request_still_exits(launch: Launch) -> None:
    process, url = await launch("--hang", "--shutdown-timeout-s", "0.2")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        hung = asyncio.create_task(session.post(url + "/v1/chat/completions", json=CHAT))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            async with session.get(url + "/metrics") as response:
                text = await response.text()
            if f'vllm:num_requests_running{{model_name="{MODEL}"}} 1.0' in text:
                break
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        with pytest.raises(aiohttp.ClientError):
            await hung  # the connection is closed without an answer
