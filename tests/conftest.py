from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from helpers import RunningGateway, SimPool


@pytest.fixture
def sim_pool() -> Iterator[SimPool]:
    pool = SimPool()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def shared_sims() -> Iterator[SimPool]:
    """Two models, two replicas each, reused by a whole test module."""
    pool = SimPool()
    for model in ("alpha", "beta"):
        for replica in range(2):
            pool.start(model, f"{model}-{replica}", wait=False)
    for sim in pool.sims:
        sim.wait_healthy()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def demo_sims() -> Iterator[SimPool]:
    """The demo's model pool (every demo model, two replicas each), per test module."""
    from mixroute.demo import DEMO_MODELS

    pool = SimPool()
    for model in DEMO_MODELS:
        for replica in range(2):
            pool.start(model, f"{model}-{replica}", wait=False)
    for sim in pool.sims:
        sim.wait_healthy()
    yield pool
    pool.stop_all()


@pytest.fixture
async def gateways() -> AsyncIterator[list[RunningGateway]]:
    started: list[RunningGateway] = []
    yield started
    for running in started:
        await running.close()
