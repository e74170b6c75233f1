"""Health, failover, ejection and re-admission, circuit breaking, workers: with real processes."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from helpers import (
    RunningGateway,
    Sim,
    SimPool,
    config_for,
    post_on_a_new_connection,
    start_gateway,
    start_workers,
)

CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


async def endpoint_table(
    session: aiohttp.ClientSession, gw: RunningGateway
) -> dict[str, dict[str, object]]:
    async with session.get(gw.url + "/api/v1/endpoints") as response:
        return {e["name"]: e for e in (await response.json())["endpoints"]}


async def wait_for(predicate: Callable[[], Awaitable[bool]], limit_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_killed_replica_fails_no_request(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sims = [sim_pool.start("alpha", f"alpha-{i}", "--decode-ms-per-token", "5") for i in range(2)]
    gw = await start_gateway(config_for(sims, balancer={"health": {"interval_s": 1.0}}))
    gateways.append(gw)
    statuses: Counter[int] = Counter()
    served_by: Counter[str] = Counter()

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in range(25):
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as response:
                await response.read()
                statuses[response.status] += 1
                served_by[response.headers.get("x-mixroute-endpoint", "")] += 1

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(8)]
        await asyncio.sleep(0.4)
        sims[0].kill()
        await asyncio.gather(*clients)
    assert statuses == {200: 200}
    assert served_by["alpha-1"] > served_by["alpha-0"]


async def test_ejection_and_readmission(sim_pool: SimPool, gateways: list[RunningGateway]) -> None:
    sims = [sim_pool.start("alpha", f"alpha-{i}") for i in range(2)]
    gw = await start_gateway(
        config_for(sims, balancer={"health": {"interval_s": 0.2, "unhealthy_after": 1}})
    )
    gateways.append(gw)
    async with aiohttp.ClientSession() as session:
        sims[0].kill()

        async def ejected() -> bool:
            return not (await endpoint_table(session, gw))["alpha-0"]["healthy"]

        await wait_for(ejected)
        for _ in range(6):
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as response:
                assert response.status == 200
                assert response.headers["x-mixroute-endpoint"] == "alpha-1"
        sims[0].start()  # same name, same port: the replica comes back

        async def readmitted() -> bool:
            return (await endpoint_table(session, gw))["alpha-0"]["healthy"]

        await wait_for(readmitted)
        seen = set()
        for _ in range(4):
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as response:
                assert response.status == 200
                seen.add(response.headers["x-mixroute-endpoint"])
        assert seen == {"alpha-0", "alpha-1"}


async def test_circuit_breaker_opens_then_closes(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    failing = sim_pool.start("alpha", "alpha-0", "--error-rate", "1.0")
    healthy = sim_pool.start("alpha", "alpha-1")
    gw = await start_gateway(
        config_for(
            [failing, healthy],
            balancer={"circuit_breaker": {"failure_threshold": 2, "base_ejection_s": 0.5}},
        )
    )
    gateways.append(gw)
    async with aiohttp.ClientSession() as session:
        for _ in range(8):  # every request succeeds: 5xx before the first byte is retried
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as response:
                assert response.status == 200
                assert response.headers["x-mixroute-endpoint"] == "alpha-1"
        table = await endpoint_table(session, gw)
        assert table["alpha-0"]["circuit"] == "open"
        assert table["alpha-0"]["healthy"]  # its /health is fine: only traffic showed the fault
        failures_when_open = table["alpha-0"]["failures"]
        for _ in range(4):
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as response:
                assert response.status == 200
        assert (await endpoint_table(session, gw))["alpha-0"]["failures"] == failures_when_open

        failing.stop()
        fixed = Sim("alpha", "alpha-0", failing.port)  # a fixed replica on the same address
        sim_pool.sims.append(fixed)
        fixed.start()

        async def closed() -> bool:
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as response:
                assert response.status == 200
            return (await endpoint_table(session, gw))["alpha-0"]["circuit"] == "closed"

        await wait_for(closed, limit_s=30)


async def test_stream_broken_mid_way_gets_error_event(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sim = sim_pool.start("alpha", "alpha-0", "--crash-after", "0")
    gw = await start_gateway(config_for([sim]))
    gateways.append(gw)
    body = {**CHAT, "stream": True, "max_tokens": 50}
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        text = (await asyncio.wait_for(response.read(), 20)).decode()
    events = [line for line in text.splitlines() if line.startswith("data: ")]
    assert '"role":"assistant"' in events[0].replace(" ", "")
    assert '"code":"upstream_stream_broken"' in events[-2]
    assert events[-1] == "data: [DONE]"


@pytest.mark.timeout(120)
async def test_session_affinity_holds_across_workers(shared_sims: SimPool, tmp_path: Path) -> None:
    alpha = [s for s in shared_sims.sims if s.model == "alpha"]
    config = {
        "endpoints": [{"name": s.name, "url": s.url, "model": s.model} for s in alpha],
        "balancer": {"policy": "session", "session": {"header": "x-user-id"}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    server, url = await asyncio.to_thread(start_workers, path)
    try:
        owners: dict[str, set[str]] = defaultdict(set)
        workers: set[str] = set()
        for round_ in range(6):
            for user in range(12):
                status, headers, _ = await post_on_a_new_connection(
                    f"{url}/v1/chat/completions",
                    CHAT,
                    {"x-user-id": f"user-{user}", "x-mixroute-debug": "1"},
                )
                assert status == 200, round_
                owners[f"user-{user}"].add(headers["x-mixroute-endpoint"])
                workers.add(headers["x-mixroute-worker"])
        assert len(workers) == 2, "both worker processes should have answered"
        assert all(len(endpoints) == 1 for endpoints in owners.values())
        assert {next(iter(e)) for e in owners.values()} == {"alpha-0", "alpha-1"}
    finally:
        server.terminate()
        assert server.wait(20) == 0
