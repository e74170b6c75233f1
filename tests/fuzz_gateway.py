"""A live gateway for the fuzz tests, served from its own event loop in a background thread.

Hypothesis and schemathesis drive synchronous clients (schemathesis calls through
``requests``), so the gateway cannot share the test's event loop: a blocking call would wait
for a server that cannot run. One thread per gateway keeps it in process (the same code
paths, the same ONNX models) while the test thread stays plain synchronous code.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from helpers import RunningGateway, SimPool, start_gateway
from mixroute.config.loader import validate_config
from mixroute.demo import DEMO_MODELS, demo_config
from mixroute.gateway import Gateway

T = TypeVar("T")


class ThreadedGateway:
    """``start_gateway`` on a private loop; ``url`` is valid between ``start`` and ``stop``."""

    def __init__(self, config_data: dict[str, Any]) -> None:
        self._config_data = config_data
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._running: RunningGateway | None = None

    @property
    def url(self) -> str:
        assert self._running is not None, "the gateway is not started"
        return self._running.url

    @property
    def gateway(self) -> Gateway:
        assert self._running is not None, "the gateway is not started"
        return self._running.gateway

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coroutine`` on the gateway's loop (its state is not thread-safe) and wait."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> ThreadedGateway:
        self._thread.start()
        config = validate_config(self._config_data)
        future = asyncio.run_coroutine_threadsafe(start_gateway(config), self._loop)
        self._running = future.result(timeout=90)
        return self

    def stop(self) -> None:
        if self._running is not None:
            future = asyncio.run_coroutine_threadsafe(self._running.close(), self._loop)
            future.result(timeout=30)
            self._running = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


# No simulated latency, and vLLM's usual 4096-token context: a fuzzed ``max_tokens`` of a
# million is then the upstream's 400 (as with vLLM), not minutes of generated tokens that
# starve the health probes on a 2-core runner.
SIM_ARGS = ("--no-latency", "--max-model-len", "4096")


def start_demo_sims() -> SimPool:
    """One simulator per demo model: enough for every route, half the processes of
    ``demo_sims`` (the fuzz tests care about the gateway, not about balancing)."""
    pool = SimPool()
    for model in DEMO_MODELS:
        pool.start(model, f"{model}-0", *SIM_ARGS, wait=False)
    for sim in pool.sims:
        sim.wait_healthy()
    return pool


def fuzz_config(pool: SimPool, **changes: Any) -> dict[str, Any]:
    """The demo config (MoM routes, tool selection, PII and jailbreak guards, the cache)
    without access control, with ``changes`` merged over its top-level sections."""
    data = demo_config(pool.sims)  # type: ignore[arg-type]
    # Access control off (the default): the demo's keys and anonymous limits are the access
    # suite's subject; here a rate limit would only hide what the fuzzers look for.
    data.pop("access", None)
    # Generous probe timeout: the fuzz suites share two cores with whatever else runs.
    data["balancer"]["health"].update(interval_s=0.5, timeout_s=5.0)
    data.update(changes)
    return data


@contextmanager
def running_gateway(config_data: dict[str, Any]) -> Iterator[ThreadedGateway]:
    gateway = ThreadedGateway(config_data)
    try:
        yield gateway.start()
    finally:
        gateway.stop()
