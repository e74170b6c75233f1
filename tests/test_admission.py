"""Per-model admission: in-flight limit, bounded priority queue, cancellation, timeouts.

The gate alone first (exact orderings, no timing), then through the gateway with a slow
simulator and the openai SDK."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from helpers import (
    RunningGateway,
    SimPool,
    endpoint,
    post_on_a_new_connection,
    start_gateway,
    start_workers,
)
from mixroute.access.admission import AdmissionGate, QueueFull, QueueTimeout
from mixroute.access.keys import hash_key
from mixroute.access.shared import SharedCounters, bucket_tag
from mixroute.config.loader import validate_config


async def test_gate_orders_by_priority_then_arrival() -> None:
    gate = AdmissionGate(max_in_flight=1, max_queue=3, timeout_s=5)
    await gate.acquire()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await gate.acquire(priority)
        order.append(name)

    tasks = [
        asyncio.create_task(wait("low-1", 0)),
        asyncio.create_task(wait("high", 5)),
        asyncio.create_task(wait("low-2", 0)),
    ]
    await asyncio.sleep(0)
    assert gate.queued == 3
    with pytest.raises(QueueFull):
        await gate.acquire(9)  # the queue bound holds whatever the priority
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["high", "low-1", "low-2"]
    assert gate.in_flight == 1 and gate.queued == 0
    gate.release()
    assert gate.in_flight == 0


async def test_cancelled_or_timed_out_waiter_leaves_and_leaks_nothing() -> None:
    gate = AdmissionGate(max_in_flight=1, max_queue=1, timeout_s=5)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.queued == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.queued == 0  # its place is free at once
    next_one = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    # Granted and cancelled in the same instant: the slot goes back, not lost.
    gate.release()
    next_one.cancel()
    with pytest.raises(asyncio.CancelledError):
        await next_one
    assert gate.in_flight == 0 and gate.queued == 0
    gate.timeout_s = 0.05
    await gate.acquire()
    with pytest.raises(QueueTimeout):
        await gate.acquire()
    assert gate.queued == 0 and gate.in_flight == 1
    gate.release()
    assert gate.in_flight == 0


async def test_raising_the_limit_admits_waiters() -> None:
    gate = AdmissionGate(max_in_flight=1, max_queue=5, timeout_s=5)
    await gate.acquire()
    waiters = [asyncio.create_task(gate.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    gate.configure(3, 5, 5)
    await asyncio.gather(*waiters)
    assert gate.in_flight == 3 and gate.queued == 0


SLOW_TOKENS = 25  # at 20 ms per token: about half a second per answer
HIGH, LOW = "mr-high-priority", "mr-low-priority"


@pytest.fixture
async def gw(sim_pool: SimPool, gateways: list[RunningGateway]) -> RunningGateway:
    sim = sim_pool.start("slow", "slow-0", "--decode-ms-per-token", "20")
    config = validate_config(
        {
            "endpoints": [endpoint(sim)],
            "models": {"slow": {"max_in_flight": 1, "max_queue": 1, "queue_timeout_s": 5}},
            "balancer": {"health": {"interval_s": 0.5}},
            "access": {
                "enabled": True,
                "keys": [
                    {"name": "high", "hash": hash_key(HIGH), "priority": 10},
                    {"name": "low", "hash": hash_key(LOW)},
                ],
            },
        }
    )
    running = await start_gateway(config)
    gateways.append(running)
    return running


def sdk(gw: RunningGateway, key: str) -> openai.AsyncOpenAI:
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    gw.on_close.append(api.close)
    return api


async def ask(api: openai.AsyncOpenAI, done: list[str] | None = None, name: str = "") -> Any:
    reply = await api.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "go"}], max_tokens=SLOW_TOKENS
    )
    if done is not None:
        done.append(name)
    return reply


async def until(condition: Any) -> None:
    """Polls the gate's counters (the gateway runs in this loop) for up to 5 s."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 5 s")


async def test_one_in_flight_one_queued_third_refused(gw: RunningGateway) -> None:
    gate = gw.gateway.access.gates["slow"]
    api = sdk(gw, LOW)
    first = asyncio.create_task(ask(api))
    await until(lambda: gate.in_flight == 1)
    second = asyncio.create_task(ask(api))
    await until(lambda: gate.queued == 1)
    with pytest.raises(openai.RateLimitError) as info:
        await ask(api)
    assert info.value.body["code"] == "queue_full"  # type: ignore[index]
    await asyncio.gather(first, second)
    assert gate.in_flight == 0 and gate.queued == 0
    assert gw.gateway.metrics.rejected.labels("queue_full")._value.get() == 1


async def test_high_priority_waiter_goes_first(gw: RunningGateway) -> None:
    gate = gw.gateway.access.gates["slow"]
    gate.configure(1, 2, 5)
    done: list[str] = []
    first = asyncio.create_task(ask(sdk(gw, LOW), done, "first"))
    await until(lambda: gate.in_flight == 1)
    low = asyncio.create_task(ask(sdk(gw, LOW), done, "low"))
    await until(lambda: gate.queued == 1)
    high = asyncio.create_task(ask(sdk(gw, HIGH), done, "high"))
    await until(lambda: gate.queued == 2)
    await asyncio.gather(first, low, high)
    assert done == ["first", "high", "low"]


async def test_client_gone_while_queued_frees_its_place(gw: RunningGateway) -> None:
    gate = gw.gateway.access.gates["slow"]
    api = sdk(gw, LOW)
    first = asyncio.create_task(ask(api))
    await until(lambda: gate.in_flight == 1)
    leaver = asyncio.create_task(ask(sdk(gw, LOW)))
    await until(lambda: gate.queued == 1)
    leaver.cancel()  # the SDK closes its connection; the gateway cancels the handler
    await until(lambda: gate.queued == 0)
    replacement = await asyncio.gather(first, ask(api))
    assert all(r.choices[0].message.content for r in replacement)
    assert gate.in_flight == 0 and gate.queued == 0


async def test_queue_wait_timeout_is_503(gw: RunningGateway) -> None:
    gate = gw.gateway.access.gates["slow"]
    gate.configure(1, 1, 0.1)
    api = sdk(gw, LOW)
    first = asyncio.create_task(ask(api))
    await until(lambda: gate.in_flight == 1)
    with pytest.raises(openai.InternalServerError) as info:
        await ask(api)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "queue_timeout"  # type: ignore[index]
    await first
    assert gate.in_flight == 0 and gate.queued == 0


async def test_two_gates_sharing_a_counter_admit_the_limit_together() -> None:
    """What two workers' gates do with one shared count: the limit is the gateway's, and a
    slot freed by one is taken by the other's waiter (which polls for it)."""
    counters = SharedCounters(8)
    tag = bucket_tag("in_flight", "slow")
    one = AdmissionGate(2, 4, 5, counters.counter(tag))
    two = AdmissionGate(2, 4, 5, counters.counter(tag))
    await one.acquire()
    await two.acquire()
    waiter = asyncio.create_task(two.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done() and two.queued == 1  # 2 in flight across both: it waits
    one.release()  # one has no waiter of its own: the slot goes back to the shared count
    await asyncio.wait_for(waiter, 1)  # and two's waiter takes it
    assert (one.in_flight, two.in_flight, counters.counter(tag).value()) == (0, 2, 2)
    two.release()
    two.release()
    assert counters.counter(tag).value() == 0


@pytest.mark.timeout(60)
async def test_max_in_flight_holds_for_the_gateway_not_per_worker(
    sim_pool: SimPool, tmp_path: Path
) -> None:
    """``serve --workers 2``: 12 concurrent requests on their own connections reach both
    workers; ``max_in_flight: 2`` with no queue lets 2 through, not 2 per worker."""
    sim = sim_pool.start("slow", "slow-0", "--decode-ms-per-token", "20")
    config = {
        "endpoints": [endpoint(sim)],
        "models": {"slow": {"max_in_flight": 2, "max_queue": 0}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process, url = await asyncio.to_thread(start_workers, path)
    try:
        body = {"model": "slow", "messages": [{"role": "user", "content": "go"}], "max_tokens": 40}

        async def one() -> int:
            status, _, _ = await post_on_a_new_connection(url + "/v1/chat/completions", body)
            return status

        statuses = await asyncio.gather(*(one() for _ in range(12)))
        assert sorted(statuses) == [200, 200] + [429] * 10, statuses
        assert await one() == 200  # and the slots came back
    finally:
        process.terminate()
        assert await asyncio.to_thread(process.wait, 20) == 0
