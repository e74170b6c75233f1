"""``mixroute demo --envoy``: real Envoy in front, mixroute as its ext_proc processor.

The topology: client -> Envoy (``--port``) -> ext_proc (mixroute, in this process) decides
the model, guards, cache -> Envoy routes on ``x-selected-model`` to the model's cluster ->
the simulated pool (the same pool and config as ``mixroute demo``). Envoy and the
simulators are child processes that die with the demo (PR_SET_PDEATHSIG, as in
``mixroute.demo``); SIGINT/SIGTERM stop everything cleanly.

Ready means: every simulator healthy, the processor listening (it opens its port only when
its gateway is ready), Envoy's admin ``/ready`` answering LIVE, and one probe request
through Envoy answered with mixroute's explain headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from mixroute import headers as h
from mixroute.demo import (
    DEMO_KEY,
    DEMO_MODELS,
    REPLICAS_PER_MODEL,
    Simulator,
    die_with_parent,
    free_port,
    start_pool,
    stop_simulators,
)
from mixroute.extproc.envoy_config import EnvoySettings, clusters_from_config, render_bootstrap
from mixroute.extproc.launcher import envoy_argv
from mixroute.extproc.server import ServeOptions, serve

log = logging.getLogger(__name__)


async def run_envoy_demo(host: str, port: int, workdir: Path | None = None) -> None:
    """Run until SIGINT/SIGTERM (or until Envoy exits); everything started is stopped."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="mixroute-envoy-demo-") as tmp:
            await run_envoy_demo(host, port, Path(tmp))
        return
    simulators: list[Simulator] = []
    envoy: asyncio.subprocess.Process | None = None
    processor: asyncio.Task[None] | None = None
    try:
        config, config_path = await start_pool(simulators, workdir)

        # Envoy first, the processor after: Envoy waits for it (500s until then, which the
        # readiness probe rides out), and no process is forked while gRPC threads run.
        grpc_port, admin_port = free_port(), free_port()
        settings = EnvoySettings(
            listen_host=host,
            listen_port=port,
            admin_port=admin_port,
            clusters=clusters_from_config(config),
            processor=[f"127.0.0.1:{grpc_port}"],
            default_model=config.routing.default_model,
            buffer_limit_bytes=config.server.max_body_bytes,
        )
        envoy_path = workdir / "envoy.yaml"
        await asyncio.to_thread(envoy_path.write_text, render_bootstrap(settings))
        envoy = await asyncio.create_subprocess_exec(
            *envoy_argv(envoy_path),
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        options = ServeOptions("127.0.0.1", grpc_port)
        processor = asyncio.create_task(serve(config, config_path, options, started=started))
        await _first(started, processor)
        await wait_envoy_ready(envoy, admin_port, host, port)
        print(_banner(host, port, admin_port, grpc_port, config_path, envoy_path), flush=True)
        envoy_exit = asyncio.create_task(envoy.wait())
        done, _ = await asyncio.wait({processor, envoy_exit}, return_when=asyncio.FIRST_COMPLETED)
        if envoy_exit in done:
            log.error("envoy exited with %s; stopping the demo", envoy.returncode)
    finally:
        if envoy is not None:
            await _stop_process(envoy)
        if processor is not None and not processor.done():
            processor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await processor
        await stop_simulators(simulators)


async def _first(started: asyncio.Future[int], task: asyncio.Task[None]) -> int:
    """The processor's port, or its failure if it died while starting."""
    waiting: list[asyncio.Future[Any]] = [started, task]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        return started.result()
    task.result()  # raises the start-up error
    raise RuntimeError("the processor stopped before it was ready")


async def wait_envoy_ready(
    envoy: asyncio.subprocess.Process,
    admin_port: int,
    host: str,
    port: int,
    timeout_s: float = 30.0,
) -> None:
    """Envoy's admin says LIVE and a chat request through it comes back decided by mixroute."""
    probe = {"model": "MoM", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    probe_headers = {h.CACHE_CONTROL: "no-cache"}
    target = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    deadline = asyncio.get_running_loop().time() + timeout_s
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            if envoy.returncode is not None:
                raise RuntimeError(f"envoy exited with {envoy.returncode} while starting")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{admin_port}/ready") as ready:
                    if ready.status == 200:
                        url = f"http://{target}:{port}/v1/chat/completions"
                        async with session.post(url, json=probe, headers=probe_headers) as answer:
                            if answer.status == 200 and h.MODEL in answer.headers:
                                return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"envoy was not ready within {timeout_s:g}s")
            await asyncio.sleep(0.1)


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _banner(
    host: str, port: int, admin_port: int, grpc_port: int, config_path: Path, envoy_path: Path
) -> str:
    base = f"http://{host}:{port}"
    pool = ", ".join(f"{m} x{REPLICAS_PER_MODEL}" for m in DEMO_MODELS)
    return (
        f"\nmixroute demo behind Envoy on {base}  (pid {os.getpid()}; Ctrl-C stops it, "
        f"Envoy and the simulators)\n"
        f"  Envoy admin: http://127.0.0.1:{admin_port}  bootstrap: {envoy_path}\n"
        f"  ext_proc processor (gRPC): 127.0.0.1:{grpc_port}\n"
        f"  simulated pool (a cluster per model): {pool}\n"
        f"  live config (edit it; it reloads): {config_path}\n"
        f"  demo API key {DEMO_KEY} (tenant demo-team, 5 requests/min, then 429; no key "
        f"works too): add -H 'authorization: Bearer {DEMO_KEY}'\n\n"
        f"  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\\n"
        f'    -d \'{{"model": "MoM", "messages": [{{"role": "user", '
        f'"content": "What is 2+2?"}}]}}\' -D - \n'
    )


def main(host: str, port: int) -> int:
    """The entry point for ``mixroute demo --envoy``."""
    try:
        import uvloop

        uvloop.run(run_envoy_demo(host, port))
    except KeyboardInterrupt:
        pass
    return 0
