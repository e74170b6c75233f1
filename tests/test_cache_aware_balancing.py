"""Cache- and load-aware balancing: engine stats parsing and scraping, the bounded prefix
index, and the prefix / load_aware / kv_aware schedulers."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import aiohttp

from helpers import RunningGateway, SimPool, config_for, start_gateway
from mixroute.balancer.endpoint import CircuitBreaker, Endpoint, EndpointState
from mixroute.balancer.policies import build_policy
from mixroute.balancer.prefix import PrefixIndex, chunk_hashes, render_prompt
from mixroute.balancer.stats import EngineStats, parse_engine_metrics
from mixroute.config.schema import BalancerConfig, CircuitBreakerConfig, EndpointConfig
from mixroute.context import RequestContext

OLD = """# HELP vllm:num_requests_running x
vllm:num_requests_running{model_name="m"} 3.0
vllm:num_requests_waiting{model_name="m"} 5.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.42
vllm:gpu_prefix_cache_queries_total{model_name="m"} 100.0
vllm:gpu_prefix_cache_hits_total{model_name="m"} 25.0
"""
NEW = """vllm:num_requests_running{engine="0",model_name="m"} 1
vllm:num_requests_running{engine="1",model_name="m"} 2
vllm:num_requests_waiting{engine="0",model_name="m"} 0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.1
vllm:prefix_cache_queries_total{model_name="m"} 200
vllm:prefix_cache_hits_total{model_name="m"} 150
"""


def test_parse_both_generations_of_vllm_metrics() -> None:
    old = parse_engine_metrics(OLD)
    assert old is not None and (old.running, old.waiting, old.kv_usage) == (3.0, 5.0, 0.42)
    new = parse_engine_metrics(NEW, previous=EngineStats(0, 0, 0, None, 0, 100.0, 50.0))
    assert new is not None and (new.running, new.waiting, new.kv_usage) == (3.0, 0.0, 0.1)
    assert new.prefix_hit_rate == 1.0  # (150 - 50) / (200 - 100)
    assert parse_engine_metrics("# nothing\nprocess_cpu_seconds_total 3\n") is None


def endpoints(count: int) -> list[Endpoint]:
    return [
        Endpoint(
            EndpointConfig(name=f"e{i}", url=f"http://h:{i + 1}", model="m"),
            EndpointState(CircuitBreaker(CircuitBreakerConfig())),
        )
        for i in range(count)
    ]


SYSTEM = "You are a meticulous assistant for ACME Corp. " * 40


def chat(user: str, *history: str) -> RequestContext:
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in history:
        messages.append({"role": "user", "content": turn})
        messages.append({"role": "assistant", "content": "ok " * 30})
    messages.append({"role": "user", "content": user})
    body = {"model": "m", "messages": messages}
    return RequestContext("r", "/v1/chat/completions", "m", "m", body, b"", False)


def test_prefix_index_is_bounded_and_matches_leading_blocks() -> None:
    index = PrefixIndex(max_entries=50)
    text = render_prompt(chat("hello").body)
    hashes = chunk_hashes(text, 64, 1000)
    index.record(hashes, "e0")
    assert (
        index.match(hashes, ["e0", "e1"]) == {"e0": min(len(hashes), 50), "e1": 0}
        or len(hashes) > 50
    )
    for n in range(500):
        index.record(chunk_hashes(f"{n} unrelated prompt " * 40, 64, 1000), f"e{n % 3}")
    assert len(index) == 50  # flat memory: the bound holds however much traffic passes
    other = chunk_hashes(text[:-64] + "x" * 64, 64, 1000)
    assert other[:-1] == hashes[: len(other) - 1]  # chained: same prefix, same hashes


def test_prefix_policy_follows_the_conversation_and_spreads_a_shared_prompt() -> None:
    pool = endpoints(4)
    policy = build_policy("prefix", BalancerConfig(), PrefixIndex(10_000))
    first = policy.pick(pool, chat("What is our refund policy?"))
    follow_up = policy.pick(pool, chat("And for digital goods?", "What is our refund policy?"))
    assert follow_up is first  # the growing history shares every earlier block
    # many users with the same system prompt at once: bounded load spreads them
    picks: Counter[str] = Counter()
    for user in range(40):
        chosen = policy.pick(pool, chat(f"user {user} asks something different"))
        chosen.state.in_flight += 1
        picks[chosen.name] += 1
    assert len(picks) >= 3  # not pinned to one replica
    assert max(picks.values()) <= math.ceil(1.5 * 40 / 4)  # no replica above 1.5x the mean


def test_prefix_below_min_match_lets_load_decide() -> None:
    pool = endpoints(2)
    pool[0].state.in_flight = 5
    policy = build_policy("prefix", BalancerConfig(), PrefixIndex(10_000))
    short = RequestContext(
        "r",
        "/v1/chat/completions",
        "m",
        "m",
        {"messages": [{"role": "user", "content": "hi"}]},
        b"",
        False,
    )
    assert policy.pick(pool, short) is pool[1]


def test_kv_aware_weighs_queue_and_kv_pressure_and_explains() -> None:
    pool = endpoints(3)
    pool[0].state.engine = EngineStats(8, 20, 0.9, None, 0)
    pool[1].state.engine = EngineStats(2, 0, 0.3, None, 0)
    pool[2].state.engine = EngineStats(4, 3, 0.6, None, 0)
    policy = build_policy("kv_aware", BalancerConfig(), PrefixIndex(10_000))
    request = chat("fresh question")
    request.debug = True
    assert policy.pick(pool, request) is pool[1]
    assert request.balancer_scores is not None and "queue=" in request.balancer_scores
    load_aware = build_policy("load_aware", BalancerConfig())
    pool[1].state.engine = EngineStats(9, 40, 0.99, None, 0)  # saturated: filtered out
    assert load_aware.pick(pool, chat("q")) is pool[2]


async def test_scraper_reads_simulator_metrics(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    sims = [sim_pool.start("alpha", f"alpha-{i}") for i in range(2)]
    config = config_for(sims, balancer={"policy": "kv_aware", "stats": {"interval_s": 0.2}})
    gw = await start_gateway(config)
    gateways.append(gw)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(
                gw.url + "/v1/chat/completions",
                headers={"x-mixroute-debug": "1"},
                json={
                    "model": "alpha",
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": SYSTEM}],
                },
            ) as response:
                assert response.status == 200
                assert "prefix=" in response.headers["x-mixroute-balancer-scores"]
        await asyncio.sleep(0.5)
        async with session.get(gw.url + "/api/v1/endpoints") as response:
            table = (await response.json())["endpoints"]
        assert all(e["engine"] is not None for e in table)
        async with session.get(gw.url + "/metrics") as response:
            metrics = await response.text()
        assert 'mixroute_endpoint_engine_kv_usage_ratio{endpoint="alpha-0"}' in metrics
        assert "mixroute_balancer_picks_total{endpoint=" in metrics

        # A replica whose stats can no longer be read loses its engine series (no stale
        # last value) but keeps its availability series.
        sims[1].kill()
        await asyncio.sleep(0.8)
        async with session.get(gw.url + "/metrics") as response:
            metrics = await response.text()
    assert 'mixroute_endpoint_engine_kv_usage_ratio{endpoint="alpha-0"}' in metrics
    assert 'mixroute_endpoint_engine_kv_usage_ratio{endpoint="alpha-1"}' not in metrics
    assert 'mixroute_endpoint_engine_waiting{endpoint="alpha-1"}' not in metrics
    assert 'mixroute_endpoint_available{endpoint="alpha-1",model="alpha"}' in metrics


async def test_kv_events_route_to_the_replica_that_really_holds_the_prefix(
    sim_pool: SimPool, gateways: list[RunningGateway]
) -> None:
    from helpers import endpoint, free_port
    from mixroute.config.loader import validate_config

    sims = []
    for i in range(3):
        pub, replay = free_port(), free_port()
        sim = sim_pool.start(
            "alpha",
            f"alpha-{i}",
            "--kv-events-port",
            str(pub),
            "--kv-events-replay-port",
            str(replay),
        )
        sims.append((sim, pub, replay))
    config = validate_config(
        {
            "endpoints": [
                endpoint(
                    sim,
                    kv_events={
                        "pub": f"tcp://127.0.0.1:{pub}",
                        "replay": f"tcp://127.0.0.1:{replay}",
                        "block_size": 16,
                    },
                )
                for sim, pub, replay in sims
            ],
            "models": {"alpha": {"tokenizer": {"kind": "sim"}}},
            "balancer": {"policy": "kv_aware", "health": {"interval_s": 0.5}},
        }
    )
    gw = await start_gateway(config)
    gateways.append(gw)
    kv = gw.gateway.runtime.kv
    assert kv is not None
    body = {
        "model": "alpha",
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is the refund window?"},
        ],
    }
    target = sims[2][0]
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # wait until every subscriber is connected and in sync
            if all(s.synced.is_set() for s in kv._subscribers.values()):
                break
            await asyncio.sleep(0.1)
        # Warm one replica directly, behind the gateway's back: only its KV events tell.
        async with session.post(target.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
        for _ in range(50):
            if kv.index.blocks(target.name) > 10:
                break
            await asyncio.sleep(0.1)
        for _ in range(3):
            async with session.post(
                gw.url + "/v1/chat/completions", json=body, headers={"x-mixroute-debug": "1"}
            ) as response:
                assert response.status == 200
                assert response.headers["x-mixroute-endpoint"] == target.name
                cached = int(response.headers["x-sim-cached-tokens"])
                assert cached > 100  # the replica really had the prefix
