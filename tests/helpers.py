"""Shared test helpers: real simulator processes and an in-process gateway on real ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import yaml
from aiohttp import web

from mixroute.api.app import build_app
from mixroute.config.loader import parse_config_text, validate_config
from mixroute.config.schema import MixrouteConfig
from mixroute.extproc.envoy_config import EnvoySettings, render_bootstrap
from mixroute.extproc.launcher import envoy_argv
from mixroute.gateway import Gateway

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_for_status(url: str, status: int = 200, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_status(url) == status:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s")


@dataclass
class Sim:
    """One real simulator process (``python -m mixroute.sim``)."""

    model: str
    name: str
    port: int
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Sim:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mixroute.sim",
                "--port",
                str(self.port),
                "--model",
                self.model,
                "--replica-name",
                self.name,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_for_status(self.url + "/health", 200, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


class SimPool:
    def __init__(self) -> None:
        self.sims: list[Sim] = []

    def start(self, model: str, name: str | None = None, *args: str, wait: bool = True) -> Sim:
        sim = Sim(model, name or f"{model}-{len(self.sims)}", free_port(), list(args))
        self.sims.append(sim)
        return sim.start(wait=wait)

    def stop_all(self) -> None:
        for sim in self.sims:
            sim.stop()


def endpoint(sim: Sim, **extra: Any) -> dict[str, Any]:
    return {"name": sim.name, "url": sim.url, "model": sim.model, **extra}


def config_from_yaml(data: dict[str, Any]) -> MixrouteConfig:
    """Through the YAML loader, so ``${ENV}`` references are interpolated as in a file."""
    return parse_config_text(yaml.safe_dump(data))


def config_for(sims: list[Sim], **sections: Any) -> MixrouteConfig:
    data: dict[str, Any] = {"endpoints": [endpoint(s) for s in sims]}
    balancer = sections.pop("balancer", {})
    balancer.setdefault("health", {}).setdefault("interval_s", 0.5)
    data["balancer"] = balancer
    data.update(sections)
    return validate_config(data)


@dataclass
class RunningGateway:
    gateway: Gateway
    runner: web.AppRunner
    url: str
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for close in self.on_close:
            await close()
        await self.runner.cleanup()

    @property
    def v1(self) -> str:
        return self.url + "/v1"


async def start_gateway(config: MixrouteConfig, config_path: Path | None = None) -> RunningGateway:
    gateway = Gateway(config, config_path)
    runner = web.AppRunner(build_app(gateway), handler_cancellation=True, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    await gateway.runtime.prober.first_round_done.wait()
    return RunningGateway(gateway, runner, f"http://127.0.0.1:{port}")


def child_pids(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def post_on_a_new_connection(
    url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A POST on a connection of its own: with workers sharing a port, any may answer.
    Returns the status, the headers (lower-case names) and the body."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(url, json=body, headers=headers or {}) as response,
    ):
        answer = await response.read()
        return response.status, {k.lower(): v for k, v in response.headers.items()}, answer


async def get_on_a_new_connection(url: str) -> str:
    """A GET on a connection of its own (see ``post_on_a_new_connection``)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as response:
        return await response.text()


def serve_argv(config_path: Path, port: int, *extra: str) -> list[str]:
    """The command line of ``mixroute serve`` with a config file."""
    cli = [sys.executable, "-m", "mixroute.cli", "serve"]
    return [*cli, "--config", str(config_path), "--port", str(port), *extra]


def start_workers(config_path: Path, workers: int = 2) -> tuple[subprocess.Popen[bytes], str]:
    """``mixroute serve --workers N`` on a free port (the workers share it, so it cannot be
    0); returns the supervisor process and the base URL, once it is ready."""
    port = free_port()
    process = subprocess.Popen(
        serve_argv(config_path, port, "--workers", str(workers)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_status(url + "/ready", 200, timeout=60)
    except TimeoutError:
        process.kill()
        raise
    return process, url


def start_gateway_process(config_path: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``mixroute serve`` on a port the kernel picks (no race for a free port); returns the
    process and its base URL, read from its log, once it listens."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        serve_argv(config_path, 0),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if "mixroute listening on " in line:
                url = line.split("listening on ", 1)[1].split(" ", 1)[0]
                return process, url
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"gateway did not listen within 90s:\n{log_path.read_text()[-3000:]}")


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order ([DONE] included)."""
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def content_tokens(events: list[str]) -> int:
    """Chunks that carried answer text (one per token for the simulator)."""
    count = 0
    for data in events:
        if data == "[DONE]":
            continue
        choices = orjson.loads(data).get("choices") or []
        if choices and choices[0].get("delta", {}).get("content"):
            count += 1
    return count


# -- Envoy topologies (test_extproc*.py) ----------------------------------------------


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """The processor opens its port only once its gateway is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Topology:
    urls: dict[str, str] = field(default_factory=dict)  # envoy name -> base URL
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self, name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.urls[name] + "/v1", api_key="x", max_retries=0)

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def start_envoy(self, name: str, settings_args: dict[str, Any], workdir: Path) -> None:
        port, admin = free_port(), free_port()
        settings = EnvoySettings(listen_port=port, admin_port=admin, **settings_args)
        path = workdir / f"envoy-{name}.yaml"
        path.write_text(render_bootstrap(settings))
        self.start(envoy_argv(path), workdir / f"envoy-{name}.log")
        self.urls[name] = f"http://127.0.0.1:{port}"
        self.urls[name + "-admin"] = f"http://127.0.0.1:{admin}"
