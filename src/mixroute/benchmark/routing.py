"""``mixroute bench routing``: replica-selection quality on a multi-round chat workload.

Four simulated vLLM replicas with prefix caches (the simulator is the stand-in for vLLM)
serve many users who share a system prompt, each bring a long document of their own, and
grow their own histories, round after round;
a second, rarer system prompt makes the shared-prefix load skewed. Every policy runs the same
workload behind its own gateway process; each run uses fresh prompt text (a per-run nonce),
so no policy profits from caches warmed by the one before. TTFT is measured at the client
(first streamed content byte), requests/s over the whole run.

With ``--peers`` the Rust ``vllm-router`` (PyPI, in ``.venv-bench``) runs the same workload
with its ``cache_aware``, ``power_of_two`` and ``consistent_hash`` policies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

MIXROUTE_POLICIES = ("round_robin", "least_outstanding", "session", "prefix", "kv_aware")
PEER_POLICIES = ("cache_aware", "power_of_two", "consistent_hash")
MODEL = "chat-model"
# A slow-prefill engine: the shared prompt costs ~130 ms uncached, nearly nothing cached.
SIM_ARGS = (
    "--prefill-ms-per-token",
    "0.25",
    "--decode-ms-per-token",
    "2",
    "--max-batch",
    "8",
    "--block-size",
    "16",
    "--prefix-cache-blocks",
    "2048",
)


@dataclass(frozen=True)
class Workload:
    users: int
    rounds: int
    replicas: int
    max_tokens: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _system_prompt(name: str, nonce: str, words: int) -> str:
    rng = random.Random(name)
    vocabulary = [
        "policy",
        "customer",
        "order",
        "refund",
        "shipping",
        "account",
        "invoice",
        "warranty",
        "support",
        "product",
        "return",
        "exchange",
        "priority",
        "escalate",
        "verify",
        "identity",
        "record",
        "note",
    ]
    body = " ".join(rng.choice(vocabulary) for _ in range(words))
    return f"[{nonce}] You are the {name} assistant. Follow these rules: {body}."


class Processes:
    """Child processes in their own groups, all stopped on exit, error or signal."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                self.stop(proc)


@contextlib.contextmanager
def _processes() -> Iterator[Processes]:
    procs = Processes()

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield procs
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


async def _wait_ok(session: aiohttp.ClientSession, url: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {limit_s}s")


async def _user(
    session: aiohttp.ClientSession,
    url: str,
    user: int,
    system: str,
    workload: Workload,
    ttfts: list[float],
    errors: list[int],
) -> None:
    history: list[dict[str, str]] = []
    document = _system_prompt(f"user {user} case file", system[:12], 300)
    for turn in range(workload.rounds):
        question = f"user {user} question {turn}: how do I handle case {user * 31 + turn}?"
        if turn == 0:  # each user brings a long document of their own, then follows up
            question = f"{document}\n\n{question}"
        history.append({"role": "user", "content": question})
        body = {
            "model": MODEL,
            "stream": True,
            "max_tokens": workload.max_tokens,
            "user": f"user-{user}",
            "messages": [{"role": "system", "content": system}, *history],
        }
        headers = {"x-user-id": f"user-{user}", "x-session-id": f"user-{user}"}
        started = time.perf_counter()
        first: float | None = None
        answer = []
        try:
            async with session.post(url, json=body, headers=headers) as response:
                if response.status != 200:
                    errors.append(response.status)
                    await response.read()
                    continue
                async for line in response.content:
                    if first is None and line.startswith(b"data: {") and b'"content"' in line:
                        first = time.perf_counter()
                    if line.startswith(b"data: {"):
                        with contextlib.suppress(ValueError, KeyError, IndexError):
                            delta = json.loads(line[6:])["choices"][0]["delta"]
                            answer.append(delta.get("content") or "")
        except (aiohttp.ClientError, TimeoutError):
            errors.append(0)
            continue
        if first is not None:
            ttfts.append((first - started) * 1000)
        history.append({"role": "assistant", "content": "".join(answer)})


async def run_workload(url: str, workload: Workload, nonce: str) -> dict[str, float]:
    popular = _system_prompt("support", nonce, 450)
    rare = _system_prompt("billing", nonce, 450)
    ttfts: list[float] = []
    errors: list[int] = []
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _user(
                    session, url, user, rare if user % 5 == 4 else popular, workload, ttfts, errors
                )
                for user in range(workload.users)
            )
        )
        elapsed = time.perf_counter() - started
    ttfts.sort()

    def pct(q: float) -> float:
        return ttfts[min(len(ttfts) - 1, round(q / 100 * (len(ttfts) - 1)))] if ttfts else 0.0

    return {
        "ttft_p50_ms": round(pct(50), 2),
        "ttft_p99_ms": round(pct(99), 2),
        "rps": round(len(ttfts) / elapsed, 2),
        "errors": len(errors),
    }


def _gateway_config(sims: list[str], policy: str) -> dict[str, Any]:
    return {
        "endpoints": [
            {"name": f"replica-{i}", "url": url, "model": MODEL} for i, url in enumerate(sims)
        ],
        "balancer": {
            "policy": policy,
            "health": {"interval_s": 2.0},
            "stats": {"interval_s": 0.25},
            "session": {"header": "x-user-id"},
        },
        "timeouts": {"first_byte_s": 120, "idle_s": 60},
    }


def _peer_router() -> Path | None:
    for candidate in (
        Path(".venv-bench/bin/vllm-router"),
        Path(sys.prefix).parent / ".venv-bench/bin/vllm-router",
    ):
        if candidate.exists():
            return candidate.resolve()
    return None


async def _run_all(
    workload: Workload, policies: list[str], peers: bool, log: Any
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="mixroute-bench-routing-"))
    with _processes() as procs:
        sim_urls = []
        for _ in range(workload.replicas):
            port = _free_port()
            procs.start(
                [
                    sys.executable,
                    "-m",
                    "mixroute.sim",
                    "--port",
                    str(port),
                    "--model",
                    MODEL,
                    *SIM_ARGS,
                ]
            )
            sim_urls.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as session:
            for url in sim_urls:
                await _wait_ok(session, url + "/health")
        for policy in policies:
            path = workdir / f"{policy}.yaml"
            path.write_text(yaml.safe_dump(_gateway_config(sim_urls, policy)))
            port = _free_port()
            gateway = procs.start(
                [
                    sys.executable,
                    "-m",
                    "mixroute.cli",
                    "--log-level",
                    "WARNING",
                    "serve",
                    "--config",
                    str(path),
                    "--port",
                    str(port),
                ]
            )
            async with aiohttp.ClientSession() as session:
                await _wait_ok(session, f"http://127.0.0.1:{port}/ready")
            results[policy] = await run_workload(
                f"http://127.0.0.1:{port}/v1/chat/completions", workload, f"{policy}-{port}"
            )
            log(f"{policy}: {results[policy]}")
            procs.stop(gateway)
        router = _peer_router() if peers else None
        if peers and router is None:
            log("vllm-router not found in .venv-bench (run bench/passthrough.py once): skipped")
        for policy in PEER_POLICIES if router is not None else ():
            port = _free_port()
            peer = procs.start(
                [
                    str(router),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--worker-urls",
                    *sim_urls,
                    "--policy",
                    policy,
                    "--log-level",
                    "warning",
                    "--prometheus-port",
                    str(_free_port()),
                ]
            )
            async with aiohttp.ClientSession() as session:
                await _wait_ok(session, f"http://127.0.0.1:{port}/health")
            name = f"vllm-router:{policy}"
            results[name] = await run_workload(
                f"http://127.0.0.1:{port}/v1/chat/completions", workload, f"{name}-{port}"
            )
            log(f"{name}: {results[name]}")
            procs.stop(peer)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--policies", default=",".join(MIXROUTE_POLICIES))
    parser.add_argument("--peers", action="store_true", help="also run vllm-router")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    if args.quick:
        workload = Workload(users=12, rounds=3, replicas=4, max_tokens=6)
    else:
        workload = Workload(users=32, rounds=5, replicas=4, max_tokens=16)
    if args.users or args.rounds:
        workload = Workload(
            args.users or workload.users,
            args.rounds or workload.rounds,
            workload.replicas,
            workload.max_tokens,
        )
    policies = [p for p in args.policies.split(",") if p]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = asyncio.run(_run_all(workload, policies, args.peers, log))
    report = {"policies": results, "workload": workload.__dict__, "simulator": " ".join(SIM_ARGS)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{'policy':28} {'ttft p50 ms':>12} {'ttft p99 ms':>12} {'req/s':>8} errors")
        for name, row in results.items():
            print(
                f"{name:28} {row['ttft_p50_ms']:12.1f} {row['ttft_p99_ms']:12.1f} "
                f"{row['rps']:8.1f} {row['errors']:.0f}"
            )
    return 0
