"""``mixroute demo``: a gateway in front of a simulated model pool, started as one command.

The simulators are child processes on free ports. They die with the demo: the demo stops
them on SIGINT/SIGTERM, and each child also asks the kernel (PR_SET_PDEATHSIG) to be sent
SIGTERM if the demo itself is killed, so no simulator outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from mixroute.access.keys import hash_key
from mixroute.config.loader import validate_config
from mixroute.config.schema import MixrouteConfig
from mixroute.server import serve_until_stopped

log = logging.getLogger(__name__)

DEMO_MODELS = ("general-llm", "math-llm", "code-llm", "creative-llm", "local-llm")
REPLICAS_PER_MODEL = 2
# A published key for the demo only: tenant demo-team, 5 requests per minute (docs/config.md,
# "Access control"). Requests without a key (or with any other key) are served anonymously.
DEMO_KEY = "mr-demo-key"
_PR_SET_PDEATHSIG = 1


@dataclass
class Simulator:
    model: str
    name: str
    port: int
    process: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def start_simulator(model: str, name: str, extra: list[str] | None = None) -> Simulator:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mixroute.sim",
        "--port",
        str(port),
        "--model",
        model,
        "--replica-name",
        name,
        *(extra or []),
        stdout=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    return Simulator(model, name, port, process)


async def wait_healthy(simulators: list[Simulator], timeout_s: float = 60.0) -> None:
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + timeout_s
        pending = list(simulators)
        while pending:
            if asyncio.get_running_loop().time() > deadline:
                names = ", ".join(s.name for s in pending)
                raise RuntimeError(f"simulators did not become healthy: {names}")
            for sim in list(pending):
                if sim.process.returncode is not None:
                    raise RuntimeError(f"simulator {sim.name} exited with {sim.process.returncode}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(sim.url + "/health") as response:
                        if response.status == 200:
                            pending.remove(sim)
            if pending:
                await asyncio.sleep(0.1)


async def stop_simulators(simulators: list[Simulator]) -> None:
    for sim in simulators:
        if sim.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                sim.process.terminate()
    for sim in simulators:
        try:
            await asyncio.wait_for(sim.process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                sim.process.kill()
            await sim.process.wait()


CREATIVE_EXAMPLES = [
    "Write a poem about the sea at night",
    "Tell me a short story about a dragon who is afraid of heights",
    "Compose song lyrics about leaving home",
    "Write a haiku about autumn leaves",
    "Give me a funny limerick about a cat",
    "Draft the opening scene of a mystery novel set in Venice",
    "Invent a bedtime story for a five-year-old",
    "Write a sonnet for my wife's birthday",
]

CODE_TERMS = [
    "python",
    "javascript",
    "typescript",
    "rust",
    "golang",
    "java",
    "c++",
    "sql",
    "bash",
    "function",
    "compile",
    "compiler",
    "stack trace",
    "traceback",
    "segfault",
    "regex",
    "unit test",
    "refactor",
    "git",
    "dockerfile",
    "kubernetes yaml",
    "api endpoint",
]


def demo_config(simulators: list[Simulator], head: str | None = None) -> dict[str, Any]:
    """The showcase config: every capability adds its part here."""
    return {
        "server": {"reload_interval_s": 1.0},
        "endpoints": [
            {"name": sim.name, "url": sim.url, "model": sim.model, "labels": {"pool": "demo"}}
            for sim in simulators
        ],
        "models": {
            "general-llm": {
                "aliases": ["gpt-4o-mini"],
                "reasoning_family": "qwen3",
                "context_length": 32768,
                "pricing": {"prompt_per_million": 0.1, "completion_per_million": 0.4},
            },
            "math-llm": {
                "reasoning_family": "deepseek",
                "context_length": 16384,
                "pricing": {"prompt_per_million": 0.5, "completion_per_million": 2.0},
            },
            "code-llm": {
                "reasoning_family": "gpt-oss",
                "context_length": 65536,
                "pricing": {"prompt_per_million": 0.3, "completion_per_million": 1.2},
            },
            "creative-llm": {
                "context_length": 8192,
                "pricing": {"prompt_per_million": 0.2, "completion_per_million": 0.8},
            },
            # Runs on our own hardware: allowed to see personal data (the PII guard
            # reroutes requests that carry it here).
            "local-llm": {"context_length": 8192, "pii_allowed": ["*"]},
        },
        "balancer": {
            "policy": "round_robin",
            "health": {"interval_s": 2.0, "timeout_s": 1.0},
        },
        "routing": {"default_model": "general-llm"},
        "cache": {"enabled": True, "backend": "memory", "max_entries": 5000, "ttl_s": 600},
        "access": {
            "enabled": True,
            "keys": [{"name": "demo", "hash": hash_key(DEMO_KEY), "tenant": "demo-team", "rpm": 5}],
            "anonymous": {"allowed": True, "unknown_keys": "anonymous"},
        },
        "guards": {
            "jailbreak": {"enabled": True, "action": "block", "on_error": "open"},
            "pii": {"enabled": True, "action": "reroute", "reroute_to": "local-llm"},
        },
        "signals": {
            "domain": {"threshold": 0.5, **({"head": head} if head else {})},
            "keywords": [
                {"name": "code_terms", "terms": CODE_TERMS, "regex": [r"```", r"\bdef \w+\("]},
            ],
            "categories": [
                {
                    "name": "creative_writing",
                    "threshold": 0.55,
                    "description": "Creative writing: poems, stories, song lyrics, jokes, scenes",
                    "examples": CREATIVE_EXAMPLES,
                },
            ],
            "context": [{"name": "long_context", "min_tokens": 6000}],
        },
        "routes": [
            {
                "name": "math",
                "priority": 20,
                "when": {"domain": "math"},
                "models": [
                    {"model": "math-llm", "score": 1.0},
                    {"model": "general-llm", "score": 0.5},
                ],
                "reasoning": {"enabled": True, "effort": "high"},
                "system_prompt": {
                    "text": "You are a careful mathematician. Reason step by step "
                    "and state the final answer clearly."
                },
            },
            {
                "name": "science",
                "priority": 15,
                "when": {
                    "any": [
                        {"domain": "physics"},
                        {"domain": "chemistry"},
                        {"domain": "engineering"},
                    ]
                },
                "models": [
                    {"model": "math-llm", "score": 0.8},
                    {"model": "general-llm", "score": 0.7},
                ],
                "cost_weight": 0.3,
                "reasoning": {"enabled": True, "effort": "medium"},
                "system_prompt": {
                    "text": "You are a precise scientist. Use SI units and show the key equations."
                },
            },
            {
                "name": "code",
                "priority": 20,
                "when": {"any": [{"domain": "computer science"}, {"keyword": "code_terms"}]},
                "models": [
                    {"model": "code-llm", "score": 1.0},
                    {"model": "general-llm", "score": 0.4},
                ],
                "reasoning": {"enabled": False},
                "system_prompt": {
                    "text": "You are a senior software engineer. Answer with "
                    "working, idiomatic code and explain briefly."
                },
                "tools": {"enabled": True, "top_k": 4, "threshold": 0.25, "min_keep": 1},
            },
            {
                "name": "creative",
                "priority": 25,
                "when": {
                    "all": [{"category": "creative_writing"}, {"not": {"keyword": "code_terms"}}]
                },
                "models": [
                    {"model": "creative-llm", "score": 1.0},
                    {"model": "general-llm", "score": 0.6},
                ],
                "system_prompt": {
                    "text": "You are an imaginative writer with a vivid, original voice."
                },
            },
            {
                "name": "long-context",
                "priority": 30,
                "when": {"context": "long_context"},
                "models": [
                    {"model": "code-llm", "score": 0.9},
                    {"model": "general-llm", "score": 0.8},
                ],
            },
            {
                "name": "general",
                "priority": 0,
                "models": [{"model": "general-llm", "score": 1.0}],
                "reasoning": {"enabled": False},
                "tools": {"enabled": True, "top_k": 5, "threshold": 0.2, "min_keep": 2},
            },
        ],
    }


async def start_pool(simulators: list[Simulator], workdir: Path) -> tuple[MixrouteConfig, Path]:
    """Start the demo's simulators (appended to ``simulators`` as they start, so the caller
    can stop them whatever happens) and write the demo config next to them."""
    for model in DEMO_MODELS:
        for replica in range(REPLICAS_PER_MODEL):
            simulators.append(await start_simulator(model, f"{model}-{replica}"))
    await wait_healthy(simulators)
    raw = demo_config(simulators)
    config_path = workdir / "config.yaml"
    await asyncio.to_thread(config_path.write_text, yaml.safe_dump(raw, sort_keys=False))
    return validate_config(raw, source=str(config_path)), config_path


async def run_demo(host: str, port: int, workdir: Path) -> None:
    simulators: list[Simulator] = []
    try:
        config, config_path = await start_pool(simulators, workdir)
        started = asyncio.Event()
        server = asyncio.create_task(
            serve_until_stopped(config, config_path, host, port, started=started)
        )
        await started.wait()
        print(_banner(host, port, config_path, simulators), flush=True)
        await server
    finally:
        await stop_simulators(simulators)


def _banner(host: str, port: int, config_path: Path, simulators: list[Simulator]) -> str:
    base = f"http://{host}:{port}"
    pool = ", ".join(f"{m} x{REPLICAS_PER_MODEL}" for m in DEMO_MODELS)
    return (
        f"\nmixroute demo on {base}  (pid {os.getpid()}; Ctrl-C stops it and its "
        f"{len(simulators)} simulators)\n"
        f"  simulated pool: {pool}\n"
        f"  live config (edit it; it reloads): {config_path}\n"
        f"  dashboard: {base}/dashboard\n"
        f"  demo API key {DEMO_KEY} (tenant demo-team, 5 requests/min, then 429; no key "
        f"works too): add -H 'authorization: Bearer {DEMO_KEY}'\n\n"
        f"  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\\n"
        f'    -d \'{{"model": "MoM", "messages": [{{"role": "user", '
        f'"content": "What is 2+2?"}}]}}\' -D - \n'
    )


def main(host: str, port: int) -> int:
    with tempfile.TemporaryDirectory(prefix="mixroute-demo-") as workdir:
        try:
            import uvloop

            uvloop.run(run_demo(host, port, Path(workdir)))
        except KeyboardInterrupt:
            pass
    return 0
