"""KV-cache events: vLLM's wire format, the block index, tokenizers, and the simulator's
publisher followed end to end by the gateway's subscriber (gaps, replay, reset, restart)."""

from __future__ import annotations

import asyncio
import re
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio

from helpers import ROOT
from mixroute.balancer.kv_events import (
    AllBlocksCleared,
    BlockIndex,
    BlockRemoved,
    BlockStored,
    ChatTemplateRule,
    HFTokenizer,
    KVEventSubscriber,
    SimTokenizer,
    WireFormatError,
    chain_keys,
    decode_batch,
    request_token_ids,
    tokenize_request,
)
from mixroute.sim import kv_events as sim_events

pytestmark = pytest.mark.timeout(30)

MODEL = "kv-model"
BS = 16  # the simulator's default block size
MINILM_TOKENIZER = ROOT / "src/mixroute/data/models/minilm/tokenizer.json"


# -- wire format --------------------------------------------------------------------------


def _fixstr(text: str) -> bytes:
    assert len(text) < 32
    return bytes([0xA0 | len(text)]) + text.encode()


# KVEventBatch [ts=1.5, [BlockStored, BlockRemoved, AllBlocksCleared], rank 0], written
# byte by byte after msgspec's layout (array_like=True, tag=True: tag first; ints, strs
# and arrays in their shortest msgpack form, floats as float64).
HAND_BUILT_ARRAY_BATCH = b"".join(
    [
        b"\x93",  # fixarray(3): ts, events, data_parallel_rank
        b"\xcb" + struct.pack(">d", 1.5),  # float64 ts
        b"\x93",  # fixarray(3): the events
        b"\x97",  # BlockStored: tag + 6 fields
        _fixstr("BlockStored"),
        b"\x92\x01\xcf" + (2**64 - 1).to_bytes(8, "big"),  # block_hashes [1, 2**64-1]
        b"\xc0",  # parent_block_hash: nil
        b"\x94\x0a\x0b\x0c\xcd\x01\x00",  # token_ids [10, 11, 12, 256]
        b"\x02",  # block_size 2
        b"\xc0",  # lora_id: nil
        _fixstr("GPU"),  # medium
        b"\x93" + _fixstr("BlockRemoved") + b"\x91\x01" + _fixstr("GPU"),
        b"\x91" + _fixstr("AllBlocksCleared"),
        b"\x00",  # data_parallel_rank 0
    ]
)


def test_hand_built_vllm_payload_decodes() -> None:
    batch = decode_batch(HAND_BUILT_ARRAY_BATCH)
    assert batch.ts == 1.5
    assert batch.data_parallel_rank == 0
    stored, removed, cleared = batch.events
    assert stored == BlockStored(
        block_hashes=[1, 2**64 - 1],
        parent_block_hash=None,
        token_ids=[10, 11, 12, 256],
        block_size=2,
        lora_id=None,
        medium="GPU",
    )
    assert removed == BlockRemoved(block_hashes=[1], medium="GPU")
    assert cleared == AllBlocksCleared()


def test_simulator_encodes_the_same_bytes() -> None:
    events = [
        sim_events.block_stored([1, 2**64 - 1], None, [10, 11, 12, 256], 2, "array"),
        sim_events.block_removed([1], "array"),
        sim_events.all_blocks_cleared("array"),
    ]
    assert sim_events.encode_batch(1.5, events) == HAND_BUILT_ARRAY_BATCH


def test_hand_built_map_events_and_byte_hashes_decode() -> None:
    # vLLM after PR #42892: the envelope stays positional, each event is a tagged map.
    stored_map = b"".join(
        [
            b"\x86",  # fixmap(6)
            _fixstr("type") + _fixstr("BlockStored"),
            _fixstr("block_hashes") + b"\x91\xc4\x02\xab\xcd",  # [bin(2)]: bytes hashes
            _fixstr("parent_block_hash") + b"\xc4\x01\x07",
            _fixstr("token_ids") + b"\x92\x05\x06",
            _fixstr("block_size") + b"\x02",
            _fixstr("group_idx") + b"\x00",  # fields unknown to old layouts are fine
        ]
    )
    payload = b"\x92\xcb" + struct.pack(">d", 2.0) + b"\x91" + stored_map  # no rank
    batch = decode_batch(payload)
    assert batch.data_parallel_rank is None
    (event,) = batch.events
    assert isinstance(event, BlockStored)
    assert event.block_hashes == [b"\xab\xcd"]
    assert event.parent_block_hash == b"\x07"
    assert (event.token_ids, event.block_size, event.medium) == ([5, 6], 2, None)


@pytest.mark.parametrize("encoding", ["array", "map"])
def test_round_trip_through_both_encodings(encoding: sim_events.KVEventEncoding) -> None:
    events = [
        sim_events.block_stored([7, 8], 6, list(range(32)), BS, encoding),
        sim_events.block_removed([7], encoding),
        sim_events.all_blocks_cleared(encoding),
        ["SomethingNew", 1] if encoding == "array" else {"type": "SomethingNew"},
    ]
    batch = decode_batch(sim_events.encode_batch(3.25, events, data_parallel_rank=1))
    assert (batch.ts, batch.data_parallel_rank) == (3.25, 1)
    assert batch.events == [  # the unknown event type is skipped
        BlockStored([7, 8], 6, list(range(32)), BS, None, "GPU"),
        BlockRemoved([7], "GPU"),
        AllBlocksCleared(),
    ]


@pytest.mark.parametrize("payload", [b"\xc1", b"\x92\xa1x\x90", b"\x92\x01\x91\x05", b"\x01"])
def test_malformed_payloads_raise(payload: bytes) -> None:
    with pytest.raises(WireFormatError):
        decode_batch(payload)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def blocks_stored(self, hashes: Any, parent: int | None, tokens: Any) -> None:
        self.events.append(("stored", list(hashes), parent, list(tokens)))

    def blocks_removed(self, hashes: Any) -> None:
        self.events.append(("removed", list(hashes)))

    def all_cleared(self) -> None:
        self.events.append(("cleared",))


def test_simulator_cache_announces_new_runs_with_their_parent() -> None:
    from mixroute.sim.prefix_cache import PrefixCache, block_hashes

    recorder = _Recorder()
    cache = PrefixCache(capacity_blocks=5, listener=recorder)
    first = list(range(40))  # 2 full blocks of 16, and a partial one
    cache.insert(block_hashes(first, BS), first, BS)
    second = first[:32] + list(range(100, 164))  # shares 2 blocks, adds 4
    hashes = block_hashes(second, BS)
    cache.insert(hashes, second, BS)
    cache.clear()
    assert recorder.events == [
        ("stored", hashes[:2], None, first[:32]),
        ("stored", hashes[2:], hashes[1], second[32:]),
        ("removed", [hashes[0]]),  # 6 blocks, capacity 5: the least recently used goes
        ("cleared",),
    ]


# -- the index ----------------------------------------------------------------------------


def _stored(hashes: list[int], parent: int | None, tokens: list[int], **extra: Any) -> BlockStored:
    return BlockStored(hashes, parent, tokens, 4, medium="GPU", **extra)


def test_index_matches_leading_blocks_per_endpoint() -> None:
    index = BlockIndex()
    tokens = list(range(12))
    index.apply("a", [_stored([101, 102], None, tokens[:8])])
    index.apply("a", [_stored([103], 102, tokens[8:12])])  # continues the chain
    index.apply("b", [_stored([901], None, tokens[:4])])
    assert index.match(tokens, 4) == {"a": 3, "b": 1}
    assert index.match(tokens[:10], 4) == {"a": 2, "b": 1}  # partial block ignored
    assert index.match([99, *tokens[1:]], 4) == {"a": 0, "b": 0}
    # Engine hashes are opaque: only token ids name blocks.
    assert index.match_keys(chain_keys(tokens, 4)) == {"a": 3, "b": 1}


def test_index_removes_clears_and_skips_what_tokens_cannot_name() -> None:
    index = BlockIndex()
    tokens = list(range(8))
    index.apply("a", [_stored([1, 2], None, tokens)])
    index.apply("a", [BlockRemoved([2], "GPU")])
    assert index.match(tokens, 4) == {"a": 1}
    index.apply("a", [BlockRemoved([1], "CPU")])  # another tier: not followed
    assert index.match(tokens, 4) == {"a": 1}
    index.apply("a", [AllBlocksCleared()])
    assert index.match(tokens, 4) == {"a": 0}
    index.apply("a", [_stored([5], 77, tokens[:4])])  # parent never seen
    index.apply("a", [_stored([6], None, tokens[:4], lora_name="sql")])
    index.apply("a", [_stored([7], None, tokens[:4], extra_keys=[("mm-hash",)])])
    index.apply("a", [BlockStored([8], None, tokens[:4], 4, medium="CPU")])
    assert index.match(tokens, 4) == {"a": 0}
    stats = index.stats
    assert (stats.skipped_orphans, stats.skipped_unmatchable, stats.skipped_media) == (1, 2, 1)


def test_index_memory_is_bounded_per_endpoint() -> None:
    index = BlockIndex(max_blocks_per_endpoint=64)
    for request in range(1000):
        tokens = [request] * 8
        index.apply("a", [_stored([request * 2, request * 2 + 1], None, tokens)])
    assert index.blocks("a") == 64
    assert index.stats.evicted == 2000 - 64
    assert index.match([999] * 8, 4) == {"a": 2}  # the most recent survive
    assert index.match([0] * 8, 4) == {"a": 0}
    index.add_endpoint("a", max_blocks=10)  # e.g. the engine's num_gpu_blocks
    assert index.blocks("a") == 10
    index.apply("a", [AllBlocksCleared(), _stored([1, 2, 3], None, [5] * 12)])
    index.apply("a", [_stored(list(range(10, 20)), 3, [6] * 40)])
    assert index.blocks("a") == 10  # the bound survives a clear


def test_shared_tokens_stay_held_while_any_engine_block_holds_them() -> None:
    index = BlockIndex()
    tokens = [1, 2, 3, 4]
    index.apply("a", [_stored([10], None, tokens), _stored([20], None, tokens, group_idx=1)])
    index.apply("a", [BlockRemoved([10], "GPU")])
    assert index.match(tokens, 4) == {"a": 1}
    index.apply("a", [BlockRemoved([20], "GPU")])
    assert index.match(tokens, 4) == {"a": 0}


# -- tokenizers ---------------------------------------------------------------------------


def test_hf_tokenizer_encodes_like_the_engine() -> None:
    from tokenizers import Tokenizer

    rule = ChatTemplateRule.chatml()
    tokenizer = HFTokenizer(str(MINILM_TOKENIZER), rule)
    reference = Tokenizer.from_file(str(MINILM_TOKENIZER))
    reference.no_truncation()
    reference.no_padding()  # minilm's tokenizer.json pads to 128 as well
    messages = [{"role": "user", "content": "word " * 300}]
    ids = tokenizer.encode_chat(messages)
    assert len(ids) > 300  # the tokenizer.json's truncation (128) is off
    assert ids == reference.encode(rule.render(messages), add_special_tokens=False).ids
    text_ids = tokenizer.encode_text("hello world")
    assert text_ids == reference.encode("hello world").ids  # [CLS] ... [SEP]
    assert text_ids[0] != ids[0]
    rendered = rule.render([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_request_token_ids_covers_chat_completion_and_token_prompts() -> None:
    tokenizer = SimTokenizer()
    assert request_token_ids(tokenizer, {"prompt": [1, 2, 3]}) == [1, 2, 3]
    assert request_token_ids(tokenizer, {"prompt": "a b"}) == tokenizer.encode_text("a b")
    assert request_token_ids(tokenizer, {"prompt": ["a", "b"]}) is None  # a batch
    assert request_token_ids(tokenizer, {"messages": [{"role": 3}]}) is None  # unrenderable


async def test_long_prompts_are_tokenized_off_the_event_loop() -> None:
    submitted: list[str] = []

    class CountingExecutor(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(fn.__name__)
            return super().submit(fn, *args, **kwargs)

    tokenizer = SimTokenizer()
    short = {"messages": [{"role": "user", "content": "hi"}]}
    long = {"messages": [{"role": "user", "content": "word " * 1000}]}
    with CountingExecutor(1) as executor:
        assert await tokenize_request(tokenizer, short, executor=executor)
        assert submitted == []
        ids = await tokenize_request(tokenizer, long, executor=executor)
    assert submitted == ["request_token_ids"]
    assert ids == tokenizer.encode_chat(long["messages"])


# -- end to end with a real simulator process ----------------------------------------------


@dataclass
class SimProcess:
    process: asyncio.subprocess.Process
    url: str
    pub: str
    replay: str


Launch = Callable[..., Awaitable[SimProcess]]


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """``python -m mixroute.sim`` with KV events on free ports (0), addresses from stdout."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(*extra: str, pub_port: int = 0, replay_port: int = 0) -> SimProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "mixroute.sim", "--port", "0", "--model", MODEL, "--no-latency"),
            *("--kv-events-port", str(pub_port), "--kv-events-replay-port", str(replay_port)),
            *extra,
            stdout=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        found = re.search(r"ready: (\S+) .* kv_events=(\S+) kv_replay=(\S+)", line)
        assert found, f"unexpected first line: {line!r}"
        return SimProcess(process, found[1], found[2], found[3])

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def subscribers() -> AsyncIterator[list[KVEventSubscriber]]:
    started: list[KVEventSubscriber] = []
    yield started
    for subscriber in started:
        await subscriber.stop()


def _chat(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _blocks(text: str) -> int:
    return len(SimTokenizer().encode_chat(_chat(text))) // BS


def _match(index: BlockIndex, text: str) -> dict[str, int]:
    return index.match(SimTokenizer().encode_chat(_chat(text)), BS)


async def _ask(session: aiohttp.ClientSession, sim: SimProcess, text: str) -> None:
    body = {"model": MODEL, "messages": _chat(text), "max_tokens": 1}
    async with session.post(sim.url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200


async def _eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


PROMPT_A = "alpha " * 60 + "first question"
PROMPT_B = "beta " * 60 + "second question"


async def test_subscriber_learns_what_the_replica_holds(
    launch: Launch, subscribers: list[KVEventSubscriber]
) -> None:
    sim = await launch()
    index = BlockIndex()
    subscriber = KVEventSubscriber("sim-0", sim.pub, sim.replay, index, topic="kv@")
    subscribers.append(subscriber)
    subscriber.start()
    await asyncio.wait_for(subscriber.synced.wait(), 5)
    async with aiohttp.ClientSession() as session:
        # The simulator's /tokenize is its engine's view: SimTokenizer must agree with it.
        body = {"model": MODEL, "messages": _chat(PROMPT_A)}
        async with session.post(sim.url + "/tokenize", json=body) as response:
            assert (await response.json())["tokens"] == SimTokenizer().encode_chat(_chat(PROMPT_A))
        await _ask(session, sim, PROMPT_A)
        await _eventually(lambda: _match(index, PROMPT_A) == {"sim-0": _blocks(PROMPT_A)})
        assert _match(index, PROMPT_B) == {"sim-0": 0}
        assert _blocks(PROMPT_A) >= 3

        await _ask(session, sim, PROMPT_A + " and a follow-up " * 10)  # shares the prefix
        await _eventually(lambda: subscriber.stats.batches == 2)
        assert _match(index, PROMPT_A) == {"sim-0": _blocks(PROMPT_A)}

        async with session.post(sim.url + "/reset_prefix_cache") as response:
            assert response.status == 200
        await _eventually(lambda: index.blocks("sim-0") == 0)
    assert _match(index, PROMPT_A) == {"sim-0": 0}
    assert index.stats.cleared == 1
    assert subscriber.stats.gaps == 0


async def test_eviction_removes_blocks_from_the_index(
    launch: Launch, subscribers: list[KVEventSubscriber]
) -> None:
    sim = await launch("--prefix-cache-blocks", "6", "--kv-events-encoding", "map")
    index = BlockIndex()
    subscriber = KVEventSubscriber("sim-0", sim.pub, sim.replay, index)
    subscribers.append(subscriber)
    subscriber.start()
    await asyncio.wait_for(subscriber.synced.wait(), 5)
    async with aiohttp.ClientSession() as session:
        await _ask(session, sim, PROMPT_A)
        await _eventually(lambda: _match(index, PROMPT_A)["sim-0"] == _blocks(PROMPT_A))
        await _ask(session, sim, PROMPT_B)  # 6 blocks of capacity: A's first ones go
        await _eventually(lambda: index.stats.removed > 0)
    assert (_blocks(PROMPT_A), _blocks(PROMPT_B)) == (4, 4)
    assert index.stats.removed == 2
    assert index.blocks("sim-0") == 6
    assert _match(index, PROMPT_A) == {"sim-0": 0}  # its leading blocks are gone
    assert _match(index, PROMPT_B) == {"sim-0": 4}


async def test_late_subscriber_catches_up_from_the_replay_buffer(
    launch: Launch, subscribers: list[KVEventSubscriber]
) -> None:
    sim = await launch()
    async with aiohttp.ClientSession() as session:
        await _ask(session, sim, PROMPT_A)
        await _ask(session, sim, PROMPT_B)
    index = BlockIndex()
    subscriber = KVEventSubscriber("sim-0", sim.pub, sim.replay, index)
    subscribers.append(subscriber)
    subscriber.start()
    await asyncio.wait_for(subscriber.synced.wait(), 5)
    assert subscriber.stats.replayed == 2
    assert _match(index, PROMPT_A) == {"sim-0": _blocks(PROMPT_A)}
    assert _match(index, PROMPT_B) == {"sim-0": _blocks(PROMPT_B)}


async def _raw_feed(sim: SimProcess) -> tuple[zmq.asyncio.Context, zmq.asyncio.Socket]:
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(sim.pub)
    return context, sub


async def _warm_up(session: aiohttp.ClientSession, sim: SimProcess, sub: Any) -> list[bytes]:
    """Send requests until the raw SUB socket's subscription is live; its first message."""
    for attempt in range(50):
        await _ask(session, sim, f"warm up {attempt} " * 8)
        try:
            frames: list[bytes] = await asyncio.wait_for(sub.recv_multipart(), 0.2)
            return frames
        except TimeoutError:
            continue
    raise AssertionError("no KV event reached the raw subscriber")


async def test_gap_is_filled_from_the_replay_socket(launch: Launch) -> None:
    sim = await launch()
    index = BlockIndex()
    subscriber = KVEventSubscriber("sim-0", sim.pub, sim.replay, index)  # fed by hand
    context, sub = await _raw_feed(sim)
    try:
        async with aiohttp.ClientSession() as session:
            await subscriber.handle_message(await _warm_up(session, sim, sub))
            prompts = [f"{word} " * 40 for word in ("one", "two", "three")]
            for prompt in prompts:
                await _ask(session, sim, prompt)
            lost = [await sub.recv_multipart(), await sub.recv_multipart()]  # never delivered
            await subscriber.handle_message(await sub.recv_multipart())
            assert subscriber.stats.gaps == 1
            assert subscriber.stats.gaps_filled == 1
            assert subscriber.stats.resyncs == 0
            for prompt in prompts:
                assert _match(index, prompt) == {"sim-0": _blocks(prompt)}
            for frames in lost:  # arriving late, they are duplicates
                await subscriber.handle_message(frames)
            assert subscriber.stats.duplicates == 2
    finally:
        sub.close(linger=0)
        context.term()


async def test_unrecoverable_gap_clears_the_endpoint(launch: Launch) -> None:
    sim = await launch("--kv-events-buffer-steps", "2")
    index = BlockIndex()
    subscriber = KVEventSubscriber("sim-0", sim.pub, sim.replay, index)
    context, sub = await _raw_feed(sim)
    try:
        async with aiohttp.ClientSession() as session:
            first = await _warm_up(session, sim, sub)
            await subscriber.handle_message(first)
            assert index.blocks("sim-0") > 0
            prompts = [f"{word} " * 40 for word in ("one", "two", "three", "four")]
            for prompt in prompts:
                await _ask(session, sim, prompt)
            for _ in range(3):
                await sub.recv_multipart()  # lost, and the buffer only keeps 2
            await subscriber.handle_message(await sub.recv_multipart())
    finally:
        sub.close(linger=0)
        context.term()
    assert subscriber.stats.gaps == 1
    assert subscriber.stats.gaps_filled == 0
    assert subscriber.stats.resyncs == 1
    # History restarted from what the buffer still had: the last two prompts only.
    expected = [0, 0, _blocks(prompts[2]), _blocks(prompts[3])]
    assert [_match(index, p)["sim-0"] for p in prompts] == expected
    assert expected[2] > 0


async def test_replica_restart_clears_its_entries(
    launch: Launch, subscribers: list[KVEventSubscriber]
) -> None:
    sim = await launch()
    index = BlockIndex()
    subscriber = KVEventSubscriber("sim-0", sim.pub, sim.replay, index)
    subscribers.append(subscriber)
    subscriber.start()
    await asyncio.wait_for(subscriber.synced.wait(), 5)
    async with aiohttp.ClientSession() as session:
        await _ask(session, sim, PROMPT_A)
        await _eventually(lambda: _match(index, PROMPT_A)["sim-0"] > 0)
        sim.process.kill()
        await sim.process.wait()
        await _eventually(lambda: not subscriber.synced.is_set())
        pub_port = int(sim.pub.rsplit(":", 1)[1])
        replay_port = int(sim.replay.rsplit(":", 1)[1])
        restarted = await launch(pub_port=pub_port, replay_port=replay_port)
        await asyncio.wait_for(subscriber.synced.wait(), 10)  # reconnected and resynced
        assert _match(index, PROMPT_A) == {"sim-0": 0}
        await _ask(session, restarted, PROMPT_B)
        await _eventually(lambda: _match(index, PROMPT_B)["sim-0"] == _blocks(PROMPT_B))
    assert _match(index, PROMPT_A) == {"sim-0": 0}
