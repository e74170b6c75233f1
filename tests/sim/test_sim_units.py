"""Unit tests of the simulator's pieces: tokenizer, prefix cache, metrics, engine."""

from __future__ import annotations

import asyncio

import pytest

from mixroute.sim.engine import Engine, QueueFullError
from mixroute.sim.metrics import CacheConfig, EngineCounters, EngineGauges, render_metrics
from mixroute.sim.prefix_cache import PrefixCache, block_hashes
from mixroute.sim.settings import SimSettings
from mixroute.sim.tokenizer import (
    TemplateError,
    count_tokens,
    encode,
    generate_pieces,
    render_messages,
    tokenize,
)


def test_tokenizer_is_deterministic_and_splits_punctuation() -> None:
    assert tokenize("Hello, world!") == ["Hello", ",", "world", "!"]
    assert tokenize("<|user|>\nhi") == ["<|user|>", "hi"]
    assert encode("same text") == encode("same text")
    assert encode("a") != encode("b")
    assert count_tokens("one two, three") == 4


def test_chat_template_renders_roles_and_parts() -> None:
    text = render_messages(
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        ]
    )
    assert text == "<|system|>\nBe terse.\n<|user|>\nhi\n<|image|>\n<|assistant|>\n"
    with pytest.raises(TemplateError):
        render_messages([{"content": "no role"}])


def test_generated_pieces_depend_on_prompt_and_seed() -> None:
    prompt = encode("tell me a story")
    pieces = generate_pieces(prompt, 5, seed=0)
    assert len(pieces) == 5
    assert not pieces[0].startswith(" ") and all(p.startswith(" ") for p in pieces[1:])
    assert pieces == generate_pieces(prompt, 5, seed=0)
    assert count_tokens("".join(pieces)) == 5
    other = [generate_pieces(prompt, 8, seed=s) for s in range(1, 4)]
    assert any(p[:5] != pieces for p in other)


def test_block_hashes_are_chained() -> None:
    a = list(range(40))
    b = [99, *range(1, 40)]
    hashes_a = block_hashes(a, 16)
    assert len(hashes_a) == 2  # the partial third block is not hashed
    hashes_b = block_hashes(b, 16)
    # same second-block tokens, different first block: the chained hash differs
    assert a[16:32] == b[16:32]
    assert hashes_a[1] != hashes_b[1]


def test_prefix_cache_lru_eviction() -> None:
    cache = PrefixCache(capacity_blocks=2)
    cache.insert([1, 2])
    assert cache.match([1, 2, 3]) == 2
    cache.insert([3])  # evicts the least recently used block (1)
    assert len(cache) == 2
    assert cache.match([1]) == 0
    assert cache.match([2, 3]) == 2
    disabled = PrefixCache(0)
    disabled.insert([1])
    assert disabled.match([1]) == 0


def test_metrics_text_has_both_generations_and_labels() -> None:
    counters = EngineCounters()
    counters.ttft.observe(0.03)
    text = render_metrics("m", counters, EngineGauges(2, 1, 0.5), CacheConfig(16, 100, True))
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_to_first_token_seconds_sum",
        "vllm:time_to_first_token_seconds_count",
    ):
        assert f"\n{name}{{" in f"\n{text}", name
    assert 'vllm:num_requests_running{model_name="m"} 2.0' in text
    assert 'vllm:time_to_first_token_seconds_bucket{model_name="m",le="0.04"} 1.0' in text
    assert 'vllm:time_to_first_token_seconds_bucket{model_name="m",le="0.02"} 0.0' in text
    assert 'vllm:time_to_first_token_seconds_bucket{model_name="m",le="+Inf"} 1.0' in text
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples and all('model_name="m"' in line for line in samples)


def _settings(**overrides: object) -> SimSettings:
    base: dict[str, object] = {
        "model": "m",
        "prefill_ms_per_token": 0.0,
        "decode_ms_per_token": 0.0,
    }
    base.update(overrides)
    return SimSettings(**base)  # type: ignore[arg-type]


async def test_engine_queues_fifo_when_batch_is_full() -> None:
    engine = Engine(_settings(max_batch=1, max_waiting=1))
    order: list[str] = []

    async def second() -> float:
        async with engine.schedule([1, 2, 3]) as running:
            order.append("second")
            running.finish("stop")
            return running.queue_s

    async with engine.schedule([1, 2, 3]) as first:
        task = asyncio.create_task(second())
        for _ in range(20):
            await asyncio.sleep(0)
        assert engine.num_running == 1
        assert engine.num_waiting == 1
        with pytest.raises(QueueFullError):  # queue bound reached
            async with engine.schedule([4]):
                pass
        await asyncio.sleep(0.02)
        order.append("first")
        first.finish("stop")
    queue_s = await task
    assert order == ["first", "second"]
    assert queue_s >= 0.015
    assert engine.num_running == 0 and engine.num_waiting == 0
    assert engine.counters.request_success["stop"] == 2


async def test_engine_cancelled_waiter_leaves_queue() -> None:
    engine = Engine(_settings(max_batch=1))

    async def waiter() -> None:
        async with engine.schedule([1]):
            pass

    async with engine.schedule([1]) as first:
        task = asyncio.create_task(waiter())
        for _ in range(5):
            await asyncio.sleep(0)
        assert engine.num_waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.num_waiting == 0
        first.finish("stop")
    assert engine.num_running == 0


async def test_engine_prefix_cache_skips_prefill() -> None:
    engine = Engine(_settings(prefill_ms_per_token=1.0, block_size=4))
    prompt = list(range(18))  # 4 full blocks + 2 tokens
    async with engine.schedule(prompt) as cold:
        cold.finish("stop")
    async with engine.schedule(prompt) as warm:
        warm.finish("stop")
    assert cold.cached_tokens == 0
    assert cold.prefill_s == pytest.approx(0.018)
    assert warm.cached_tokens == 16
    assert warm.prefill_s == pytest.approx(0.002)
    assert engine.counters.prefix_cache_queries == 36
    assert engine.counters.prefix_cache_hits == 16
    # a block-aligned prompt always recomputes its last token, so its last block misses
    aligned = list(range(16))
    async with engine.schedule(aligned) as again:
        again.finish("stop")
    assert again.cached_tokens == 12


async def test_engine_decode_slows_down_with_batch_and_tracks_kv() -> None:
    engine = Engine(
        _settings(decode_ms_per_token=2.0, batch_slowdown=0.5, block_size=4, kv_cache_blocks=10)
    )
    assert engine.decode_step_s() == pytest.approx(0.002)
    async with engine.schedule(list(range(8))) as one, engine.schedule(list(range(9))) as two:
        assert engine.decode_step_s() == pytest.approx(0.003)  # 2 ms * (1 + 0.5 * 1)
        assert engine.kv_cache_usage() == pytest.approx((2 + 3) / 10)
        async for _ in one.steps(1):
            pass
        assert one.generated == 1
        one.finish("length")
        two.finish("stop")
    assert engine.kv_cache_usage() == 0.0
    assert engine.counters.generation_tokens == 1
    assert engine.counters.ttft.count == 1


async def test_no_latency_engine_never_sleeps() -> None:
    engine = Engine(
        _settings(no_latency=True, prefill_ms_per_token=100.0, decode_ms_per_token=100.0)
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with engine.schedule(list(range(1000))) as running:
        async for _ in running.steps(100):
            pass
        running.finish("length")
    assert running.prefill_s == 0.0
    assert loop.time() - start < 5.0  # would be 100 s with latency on


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        SimSettings(model="m", error_rate=1.5)
    with pytest.raises(ValueError):
        SimSettings(model="m", max_batch=0)
    with pytest.raises(ValueError):
        SimSettings(model="")
