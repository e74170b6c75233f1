"""Fault suite: real simulator processes, killed, frozen, stalled and flapping, behind a
real gateway, with the real ``openai`` SDK where the client's view matters.

What tests/test_failover.py already covers is not repeated here: a replica killed under
sequential load (200 requests, 8 clients), ejection and re-admission of a killed replica,
the circuit breaker on 500s, and a replica that exits by itself mid-stream
(``--crash-after``). tests/test_gateway_api.py covers one hung replica alone (504) and one
hung stream alone (idle timeout). The numbers these tests establish are summed up in
docs/reliability.md (fault suite section).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from helpers import (
    RunningGateway,
    SimPool,
    config_for,
    content_tokens,
    sse_data,
    start_gateway,
)
from mixroute.sim import SimServer, SimSettings

pytestmark = pytest.mark.timeout(60)

ENDPOINT = "x-mixroute-endpoint"
ATTEMPTS = "x-mixroute-attempts"


def chat(max_tokens: int = 8, *, stream: bool = False, text: str = "hello") -> dict[str, Any]:
    return {
        "model": "alpha",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def sdk(gw: RunningGateway) -> openai.AsyncOpenAI:
    """The SDK without its own retries: every failure the gateway lets through shows."""
    api = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=30)
    gw.on_close.append(api.close)
    return api


async def endpoint_table(
    session: aiohttp.ClientSession, gw: RunningGateway
) -> dict[str, dict[str, Any]]:
    async with session.get(gw.url + "/api/v1/endpoints") as response:
        return {e["name"]: e for e in (await response.json())["endpoints"]}


async def wait_for(predicate: Callable[[], Awaitable[bool]], limit_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class Outcome:
    """One request as the client saw it."""

    def __init__(self, stream: bool, status: int, headers: Any, body: str, seconds: float) -> None:
        self.stream = stream
        self.status = status
        self.endpoint = headers.get(ENDPOINT, "")
        self.attempts = int(headers.get(ATTEMPTS, "1"))
        self.body = body
        self.seconds = seconds

    @property
    def complete_stream(self) -> bool:
        events = sse_data(self.body)
        return bool(events) and events[-1] == "[DONE]" and '"error"' not in self.body


async def send(session: aiohttp.ClientSession, gw: RunningGateway, body: dict[str, Any]) -> Outcome:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
        text = await asyncio.wait_for(response.text(), 20)
        seconds = loop.time() - started
        return Outcome(bool(body.get("stream")), response.status, response.headers, text, seconds)


async def test_kill_9_mid_stream_ends_the_sdk_stream_with_an_error(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sims = [sim_pool.start("alpha", f"alpha-{i}", "--decode-ms-per-token", "20") for i in range(2)]
    gw = await start_gateway(config_for(sims))
    gateways.append(gw)
    api = sdk(gw)
    raw = await api.chat.completions.with_raw_response.create(
        model="alpha", messages=[{"role": "user", "content": "long"}], max_tokens=300, stream=True
    )
    victim = next(s for s in sims if s.name == raw.headers[ENDPOINT])
    stream = raw.parse()
    if inspect.isawaitable(stream):
        stream = await stream
    received = 0
    loop = asyncio.get_running_loop()
    with pytest.raises(openai.APIError) as info:
        async with asyncio.timeout(15):  # a hang fails the test here, not at the global timeout
            async for _chunk in stream:
                received += 1
                if received == 5:
                    victim.kill()
                    killed_at = loop.time()
    assert loop.time() - killed_at < 2.0, "the stream should end as soon as the replica dies"
    assert "stopped mid-stream" in info.value.message
    assert 5 <= received < 300
    for _ in range(6):  # the dead replica is skipped or failed over before the first byte
        reply = await api.chat.completions.with_raw_response.create(
            model="alpha", messages=[{"role": "user", "content": "again"}], max_tokens=4
        )
        assert reply.headers[ENDPOINT] != victim.name


async def test_sigstopped_replica_times_out_fails_over_and_is_ejected(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sims = [sim_pool.start("alpha", f"alpha-{i}") for i in range(2)]
    first_byte_s = 1.0
    gw = await start_gateway(
        config_for(
            sims,
            timeouts={"first_byte_s": first_byte_s},
            balancer={"health": {"interval_s": 0.2, "timeout_s": 0.3, "unhealthy_after": 2}},
        )
    )
    gateways.append(gw)
    frozen = sims[0]
    assert frozen.process is not None
    frozen.process.send_signal(signal.SIGSTOP)  # accepts TCP connections, answers nothing
    try:
        async with aiohttp.ClientSession() as session:
            # Round robin sends two of these four to the frozen replica before probes see it.
            first = await asyncio.gather(*(send(session, gw, chat(stream=i < 2)) for i in range(4)))
            assert [o.status for o in first] == [200] * 4
            assert all(o.complete_stream for o in first[:2])
            failed_over = [o for o in first if o.attempts == 2]
            assert failed_over, "some requests should have met the frozen replica first"
            for outcome in failed_over:
                assert outcome.endpoint == "alpha-1"
                assert first_byte_s <= outcome.seconds < first_byte_s + 2

            async def ejected() -> bool:
                return not (await endpoint_table(session, gw))["alpha-0"]["available"]

            await wait_for(ejected)
            after = [await send(session, gw, chat()) for _ in range(6)]
            assert {(o.status, o.endpoint, o.attempts) for o in after} == {(200, "alpha-1", 1)}
            assert max(o.seconds for o in after) < first_byte_s  # no more waiting on it

            frozen.process.send_signal(signal.SIGCONT)

            async def readmitted() -> bool:
                return bool((await endpoint_table(session, gw))["alpha-0"]["available"])

            await wait_for(readmitted)
            again = [await send(session, gw, chat()) for _ in range(4)]
            assert {o.endpoint for o in again} == {"alpha-0", "alpha-1"}
    finally:
        frozen.process.send_signal(signal.SIGCONT)


async def test_all_replicas_down_503_then_recovery(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sims = [sim_pool.start("alpha", f"alpha-{i}") for i in range(2)]
    gw = await start_gateway(
        config_for(sims, balancer={"health": {"interval_s": 0.2, "unhealthy_after": 1}})
    )
    gateways.append(gw)
    api = sdk(gw)
    for sim in sims:
        sim.kill()
    # Before the probes notice: every attempt fails to connect; the client gets one error.
    with pytest.raises(openai.APIStatusError) as info:
        await api.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "x"}], max_tokens=4
        )
    assert info.value.status_code in (502, 503)
    assert isinstance(info.value.body, dict) and info.value.body["code"]
    async with aiohttp.ClientSession() as session:

        async def not_ready() -> bool:
            async with session.get(gw.url + "/ready") as response:
                return response.status == 503

        await wait_for(not_ready)
        with pytest.raises(openai.InternalServerError) as unavailable:
            await api.chat.completions.create(
                model="alpha", messages=[{"role": "user", "content": "x"}], max_tokens=4
            )
        assert unavailable.value.status_code == 503
        assert unavailable.value.body["code"] == "no_healthy_endpoint"  # type: ignore[index]

        for sim in sims:  # the same replicas come back on the same addresses
            sim.start(wait=False)
        for sim in sims:
            sim.wait_healthy()

        async def ready() -> bool:
            async with session.get(gw.url + "/ready") as response:
                return response.status == 200

        await wait_for(ready)
        seen = set()
        for _ in range(6):
            reply = await api.chat.completions.with_raw_response.create(
                model="alpha", messages=[{"role": "user", "content": "x"}], max_tokens=4
            )
            seen.add(reply.headers[ENDPOINT])
        assert seen == {"alpha-0", "alpha-1"}


async def test_stall_longer_than_idle_timeout_is_cut_slow_stream_is_not(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    # 100 ms a token, and one 0.8 s stall after the first: 20 tokens take about 2.8 s.
    sim = sim_pool.start("alpha", "alpha-0", "--decode-ms-per-token", "100", "--stall-s", "0.8")
    patient = await start_gateway(config_for([sim], timeouts={"idle_s": 2.0}))
    strict = await start_gateway(config_for([sim], timeouts={"idle_s": 0.4}))
    gateways.extend([patient, strict])
    async with aiohttp.ClientSession() as session:
        slow, cut = await asyncio.gather(
            send(session, patient, chat(20, stream=True)),
            send(session, strict, chat(20, stream=True)),
        )
    assert slow.status == 200 and slow.complete_stream
    assert content_tokens(sse_data(slow.body)) == 20
    assert slow.seconds > 2.0  # longer than idle_s in total, never silent that long
    assert cut.status == 200  # committed at the first byte: the end says what happened
    events = sse_data(cut.body)
    assert events[-1] == "[DONE]"
    assert orjson.loads(events[-2])["error"]["code"] == "upstream_stream_broken"
    assert content_tokens(events) == 1  # the token before the stall
    assert cut.seconds < 2.0


@pytest.mark.slow
async def test_flapping_replica_is_ejected_and_readmitted_and_no_request_is_lost(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    flapping = sim_pool.start("alpha", "alpha-0", "--flap-up-s", "0.5", "--flap-down-s", "0.5")
    sim_pool.start("alpha", "alpha-1")
    gw = await start_gateway(
        config_for(
            sim_pool.sims,
            balancer={
                "health": {"interval_s": 0.1, "unhealthy_after": 1, "healthy_after": 1},
                "circuit_breaker": {"failure_threshold": 2, "base_ejection_s": 0.2},
            },
        )
    )
    gateways.append(gw)
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + 3.5
    outcomes: list[Outcome] = []
    availability: list[bool] = []

    async with aiohttp.ClientSession() as session:

        async def client(index: int) -> None:
            n = 0
            while loop.time() < stop_at:
                n += 1
                outcomes.append(await send(session, gw, chat(6, stream=(index + n) % 2 == 0)))

        async def watch() -> None:
            while loop.time() < stop_at:
                table = await endpoint_table(session, gw)
                availability.append(bool(table[flapping.name]["available"]))
                await asyncio.sleep(0.03)

        await asyncio.gather(watch(), *(client(i) for i in range(4)))
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {200: len(outcomes)}, statuses
    streams = [o for o in outcomes if o.stream]
    assert streams and all(o.complete_stream for o in streams)
    served = Counter(o.endpoint for o in outcomes)
    assert served["alpha-0"] > 0 and served["alpha-1"] > served["alpha-0"]
    ejections = sum(1 for a, b in itertools.pairwise(availability) if a and not b)
    readmissions = sum(1 for a, b in itertools.pairwise(availability) if not a and b)
    assert ejections >= 2 and readmissions >= 2, availability
    print(
        f"flapping: {len(outcomes)} requests, {served}, {ejections} ejections, "
        f"{readmissions} readmissions, {sum(o.attempts > 1 for o in outcomes)} retried"
    )


@pytest.mark.slow
async def test_sdk_200_concurrent_requests_one_of_three_replicas_killed_none_lost(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sims = [sim_pool.start("alpha", f"alpha-{i}", "--decode-ms-per-token", "10") for i in range(3)]
    gw = await start_gateway(config_for(sims, balancer={"health": {"interval_s": 1.0}}))
    gateways.append(gw)
    api = sdk(gw)
    victim = sims[0]

    async def one(index: int) -> tuple[str, int]:
        reply = await api.chat.completions.with_raw_response.create(
            model="alpha",
            messages=[{"role": "user", "content": f"question number {index}"}],
            max_tokens=40,
        )
        reply.parse()
        return reply.headers[ENDPOINT], int(reply.headers.get(ATTEMPTS, "1"))

    tasks = [asyncio.create_task(one(i)) for i in range(200)]
    async with aiohttp.ClientSession() as session:

        async def busy() -> bool:  # mid-run: it has answered some and holds many more
            row = (await endpoint_table(session, gw))[victim.name]
            return int(row["requests"]) - int(row["in_flight"]) >= 5 and int(row["in_flight"]) >= 10

        await wait_for(busy)
        victim.kill()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    lost = [r for r in results if isinstance(r, BaseException)]
    assert not lost, lost[:3]
    answered = [r for r in results if not isinstance(r, BaseException)]
    retried = [endpoint for endpoint, attempts in answered if attempts > 1]
    assert len(retried) >= 10  # those in flight at the killed replica, answered by another
    assert victim.name not in retried
    assert Counter(e for e, _ in answered)[victim.name] >= 5  # what it answered before dying
    print(f"200 concurrent: {Counter(e for e, _ in answered)}, {len(retried)} retried")


async def test_non_streamed_body_broken_after_headers_is_retried(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    """Headers arrive, then the body does not (idle timeout) or the replica dies (kill -9):
    nothing reached the client yet, so the forwarder retries on another replica."""
    stuck = sim_pool.start("alpha", "alpha-0", "--hang", "--hang-mode", "mid-stream")
    sim_pool.start("alpha", "alpha-1")
    idle = await start_gateway(config_for(sim_pool.sims, timeouts={"idle_s": 0.5}))
    patient = await start_gateway(config_for(sim_pool.sims))
    gateways.extend([idle, patient])
    async with aiohttp.ClientSession() as session:
        timed_out = await asyncio.gather(*(send(session, idle, chat()) for _ in range(2)))
        assert [(o.status, o.endpoint) for o in timed_out] == [(200, "alpha-1")] * 2
        assert sorted(o.attempts for o in timed_out) == [1, 2]

        pending = [asyncio.create_task(send(session, patient, chat())) for _ in range(2)]

        async def waiting_on_stuck() -> bool:
            return int((await endpoint_table(session, patient))["alpha-0"]["in_flight"]) == 1

        await wait_for(waiting_on_stuck)
        await asyncio.sleep(0.2)  # its headers are in; the body never comes
        stuck.kill()
        killed = await asyncio.gather(*pending)
    assert [(o.status, o.endpoint) for o in killed] == [(200, "alpha-1")] * 2
    assert sorted(o.attempts for o in killed) == [1, 2]


async def test_simulator_flapping_and_stall_faults() -> None:
    """The two faults added for this suite, seen directly on an in-process simulator."""
    with pytest.raises(ValueError, match="flap_down_s needs flap_up_s"):
        SimSettings(model="m", flap_down_s=1.0)
    settings = SimSettings(
        model="m", flap_up_s=0.3, flap_down_s=0.3, stall_s=0.3, decode_ms_per_token=0.1
    )
    async with SimServer(settings) as sim, aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = {**chat(3, stream=True), "model": "m"}
        async with session.post(sim.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
            text = await response.text()
        assert loop.time() - started >= 0.3  # the stall
        assert content_tokens(sse_data(text)) == 3
        statuses = []
        while loop.time() - started < 1.3:
            async with session.get(sim.url + "/health") as response:
                statuses.append(response.status)
            async with session.get(sim.url + "/metrics") as response:
                assert response.status == 200  # scrapes still work while down
            await asyncio.sleep(0.05)
    changes = [b for a, b in itertools.pairwise(statuses) if a != b]
    assert set(statuses) == {200, 503} and len(changes) >= 2, statuses
