"""Exact KV awareness: what each replica's prefix cache holds, from vLLM's KV-cache events.

vLLM started with ``--kv-events-config`` publishes every change of its prefix cache over
ZMQ (docs/kv-events.md has the wire format). Here:

* ``decode_batch`` reads one payload, in both encodings vLLM has used (events as tagged
  positional arrays, or as tagged maps since vLLM PR #42892);
* ``BlockIndex`` keeps, per endpoint, the blocks the engine announced and not yet removed,
  bounded per endpoint (LRU) so memory stays flat however long the gateway runs;
* ``KVEventSubscriber`` follows one endpoint's stream, detects sequence gaps and fills them
  from the replay socket; when it cannot (replay gone, buffer rolled over, engine restarted,
  reconnection) it clears that endpoint's entries and starts over;
* ``Tokenizer`` turns a request into the token ids the engine will see, so
  ``BlockIndex.match`` can count the leading blocks each endpoint already holds.

The index never trusts the engine's hash values (vLLM's depend on its hash function, seed
and extra keys, and cannot be reproduced outside the engine): it keys a block by its own
chained hash of the block's token ids, computed from ``BlockStored.token_ids``, and keeps
a map engine hash -> own key only so that ``BlockRemoved`` can name blocks. The request
side computes the same chain from its token ids, and the two meet.

pyzmq and msgpack are imported only when a subscriber starts or a payload is decoded, so a
gateway without KV events does not need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import zmq.asyncio

logger = logging.getLogger("mixroute.balancer.kv_events")

EngineHash = int | bytes  # vLLM's ExternalBlockHash: an int, or bytes in newer versions
GPU = "GPU"
DEFAULT_MEDIA: frozenset[str | None] = frozenset({GPU, None})  # None: before vLLM had medium
_ROOT_KEY = 0x6D6978726F757465  # the parent key of a prompt's first block


class WireFormatError(ValueError):
    """A payload that is not a KVEventBatch."""


# -- wire format --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Consecutive full blocks newly cached; ``token_ids`` holds all their tokens."""

    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: list[EngineHash]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None = None


# Field order of vLLM's structs; positional (array_like) events follow it after the tag.
_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


def _fields(raw: Any, names: Sequence[str]) -> dict[str, Any]:
    """Name the fields of a positional (tag first) or map (tag under "type") event."""
    if isinstance(raw, dict):
        return raw
    # Trailing fields with defaults are omitted by msgspec (omit_defaults): missing -> None.
    return dict(zip(names, raw[1:], strict=False))


def _decode_event(raw: Any) -> KVEvent | None:
    """One event; None for an event type this version does not know (skipped)."""
    if isinstance(raw, dict):
        tag = raw.get("type")
    elif isinstance(raw, list | tuple) and raw:
        tag = raw[0]
    else:
        raise WireFormatError(f"an event must be a tagged array or map, got {type(raw)}")
    if tag == "BlockStored":
        f = _fields(raw, _STORED_FIELDS)
        block_size = f.get("block_size")
        if isinstance(block_size, list):  # the first layout sent num_toks_per_block
            block_size = block_size[0] if block_size else 0
        return BlockStored(
            block_hashes=list(f.get("block_hashes") or ()),
            parent_block_hash=f.get("parent_block_hash"),
            token_ids=list(f.get("token_ids") or ()),
            block_size=int(block_size or 0),
            lora_id=f.get("lora_id"),
            medium=f.get("medium"),
            lora_name=f.get("lora_name"),
            extra_keys=f.get("extra_keys"),
            group_idx=f.get("group_idx"),
        )
    if tag == "BlockRemoved":
        f = _fields(raw, _REMOVED_FIELDS)
        return BlockRemoved(
            block_hashes=list(f.get("block_hashes") or ()),
            medium=f.get("medium"),
            group_idx=f.get("group_idx"),
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def decode_batch(payload: bytes) -> EventBatch:
    """Decode a ``KVEventBatch`` payload: ``[ts, events(, data_parallel_rank)]``.

    Accepts events as msgspec tagged arrays (vLLM before PR #42892) and tagged maps (after
    it), in one batch even, and unknown trailing fields; unknown event types are skipped.
    """
    import msgpack  # type: ignore[import-untyped]

    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireFormatError(f"not msgpack: {exc}") from exc
    if isinstance(raw, dict):  # a map-encoded batch, should the envelope ever change too
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        ts, events = raw[0], raw[1]
        rank = raw[2] if len(raw) > 2 else None
    else:
        raise WireFormatError("a KVEventBatch is [ts, events, data_parallel_rank]")
    if not isinstance(ts, int | float) or not isinstance(events, list):
        raise WireFormatError("a KVEventBatch needs a numeric ts and a list of events")
    try:
        decoded = [event for event in map(_decode_event, events) if event is not None]
    except (TypeError, ValueError) as exc:
        raise WireFormatError(f"malformed event: {exc}") from exc
    return EventBatch(float(ts), decoded, rank if isinstance(rank, int) else None)


# -- the index ----------------------------------------------------------------------------


def chain_keys(token_ids: Sequence[int], block_size: int) -> list[int]:
    """The index's own chained keys of the full blocks of ``token_ids``.

    ``hash((parent_key, tuple(block)))``: Python hashes tuples of ints deterministically
    (no per-process salt, unlike str), fast, 64 bits. Not collision resistant against an
    adversary, which at worst makes a routing choice less good, never a wrong answer.
    """
    ids = token_ids if isinstance(token_ids, list | tuple) else list(token_ids)
    keys: list[int] = []
    parent = _ROOT_KEY
    for start in range(0, len(ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(ids[start : start + block_size])))
        keys.append(parent)
    return keys


@dataclass(slots=True)
class _EndpointBlocks:
    """One endpoint's blocks: engine hash -> own key (LRU by store), own key -> refcount.

    A refcount because two engine hashes may carry the same tokens (KV-cache groups of
    hybrid models each announce their blocks): the key stays held while any of them does.
    """

    max_blocks: int
    entries: OrderedDict[EngineHash, int] = field(default_factory=OrderedDict)
    held: dict[int, int] = field(default_factory=dict)

    def add(self, engine_hash: EngineHash, key: int) -> None:
        previous = self.entries.get(engine_hash)
        if previous == key:
            self.entries.move_to_end(engine_hash)
            return
        if previous is not None:
            self._release(previous)
        self.entries[engine_hash] = key
        self.entries.move_to_end(engine_hash)
        self.held[key] = self.held.get(key, 0) + 1

    def remove(self, engine_hash: EngineHash) -> bool:
        key = self.entries.pop(engine_hash, None)
        if key is None:
            return False
        self._release(key)
        return True

    def evict_oldest(self) -> None:
        _, key = self.entries.popitem(last=False)
        self._release(key)

    def _release(self, key: int) -> None:
        count = self.held[key] - 1
        if count:
            self.held[key] = count
        else:
            del self.held[key]


@dataclass(slots=True)
class IndexStats:
    stored: int = 0
    removed: int = 0
    cleared: int = 0
    evicted: int = 0  # dropped by the per-endpoint bound, not by the engine
    skipped_orphans: int = 0  # parent never seen (history started after it): not indexed
    skipped_unmatchable: int = 0  # LoRA / multimodal / salted blocks: tokens do not name them
    skipped_media: int = 0  # medium not followed (e.g. CPU tiers)
    skipped_malformed: int = 0


class BlockIndex:
    """Per-endpoint sets of cached blocks, keyed by the index's own chained token hashes.

    Bounded: at most ``max_blocks_per_endpoint`` engine blocks per endpoint (or the bound
    given to ``add_endpoint``, ideally the engine's ``num_gpu_blocks``); past it the least
    recently stored are dropped. The engine's own evictions arrive as BlockRemoved, so the
    bound only matters when an engine holds more than it, or removals were lost. Memory is
    about 360 bytes per block at steady state (65,536 blocks: ~23 MB).
    Only blocks whose whole chain of parents was seen are indexed, so after a partial
    history the index is a subset of the engine's cache, never a superset.
    """

    def __init__(
        self,
        max_blocks_per_endpoint: int = 65_536,
        media: Iterable[str | None] = DEFAULT_MEDIA,
    ) -> None:
        if max_blocks_per_endpoint < 1:
            raise ValueError("max_blocks_per_endpoint must be >= 1")
        self._max_blocks = max_blocks_per_endpoint
        self._media = frozenset(m.upper() if m is not None else None for m in media)
        self._endpoints: dict[str, _EndpointBlocks] = {}
        self.stats = IndexStats()

    def __len__(self) -> int:
        """Engine blocks held over all endpoints."""
        return sum(len(blocks.entries) for blocks in self._endpoints.values())

    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def blocks(self, endpoint: str) -> int:
        """Engine blocks held for ``endpoint``."""
        blocks = self._endpoints.get(endpoint)
        return len(blocks.entries) if blocks is not None else 0

    def add_endpoint(self, endpoint: str, max_blocks: int | None = None) -> None:
        """Make ``endpoint`` known (``match`` reports it, with 0 until events arrive).

        ``max_blocks`` bounds this endpoint (default: ``max_blocks_per_endpoint``); an
        endpoint already known keeps its entries and gets the new bound, if one is given.
        """
        if max_blocks is not None and max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        blocks = self._blocks_of(endpoint)
        if max_blocks is not None:
            blocks.max_blocks = max_blocks
            self._enforce_bound(blocks)

    def clear_endpoint(self, endpoint: str) -> None:
        """Forget what ``endpoint`` holds (its history can no longer be trusted)."""
        blocks = self._endpoints.get(endpoint)
        if blocks is not None:
            self._endpoints[endpoint] = _EndpointBlocks(blocks.max_blocks)

    def _blocks_of(self, endpoint: str) -> _EndpointBlocks:
        blocks = self._endpoints.get(endpoint)
        if blocks is None:
            blocks = self._endpoints[endpoint] = _EndpointBlocks(self._max_blocks)
        return blocks

    def _enforce_bound(self, blocks: _EndpointBlocks) -> None:
        while len(blocks.entries) > blocks.max_blocks:
            blocks.evict_oldest()
            self.stats.evicted += 1

    def apply(self, endpoint: str, events: Iterable[KVEvent]) -> None:
        """Apply one batch's events, in order."""
        blocks = self._blocks_of(endpoint)
        for event in events:
            if isinstance(event, BlockStored):
                self._store(blocks, event)
            elif isinstance(event, BlockRemoved):
                if self._follows(event.medium):
                    self.stats.removed += sum(map(blocks.remove, event.block_hashes))
            else:
                self.clear_endpoint(endpoint)
                blocks = self._endpoints[endpoint]
                self.stats.cleared += 1

    def _follows(self, medium: str | None) -> bool:
        return (medium.upper() if isinstance(medium, str) else None) in self._media

    def _store(self, blocks: _EndpointBlocks, event: BlockStored) -> None:
        count = len(event.block_hashes)
        if not self._follows(event.medium):
            self.stats.skipped_media += count
            return
        if event.lora_id is not None or event.lora_name is not None or _has_extra(event):
            # vLLM folds LoRA, multimodal hashes and cache_salt into these blocks' hashes:
            # a request's token ids alone cannot name them, so neither can the index.
            # Their children then have an unknown parent and are skipped too.
            self.stats.skipped_unmatchable += count
            return
        size = event.block_size
        if size < 1 or len(event.token_ids) != size * count:
            self.stats.skipped_malformed += count
            return
        if event.parent_block_hash is None:
            parent = _ROOT_KEY
        else:
            known = blocks.entries.get(event.parent_block_hash)
            if known is None:
                self.stats.skipped_orphans += count
                return
            parent = known
        tokens = event.token_ids
        for index, engine_hash in enumerate(event.block_hashes):
            parent = hash((parent, tuple(tokens[index * size : (index + 1) * size])))
            blocks.add(engine_hash, parent)
        self.stats.stored += count
        self._enforce_bound(blocks)

    def match(self, token_ids: Sequence[int], block_size: int) -> dict[str, int]:
        """For each endpoint, how many leading full blocks of ``token_ids`` it holds."""
        return self.match_keys(chain_keys(token_ids, block_size))

    def match_keys(self, keys: Sequence[int]) -> dict[str, int]:
        """``match`` for keys already computed with ``chain_keys`` (reuse across calls)."""
        result: dict[str, int] = {}
        for name, blocks in self._endpoints.items():
            held = blocks.held
            count = 0
            for key in keys:
                if key not in held:
                    break
                count += 1
            result[name] = count
        return result


def _has_extra(event: BlockStored) -> bool:
    return bool(event.extra_keys) and any(extra for extra in event.extra_keys or ())


# -- tokenizers ---------------------------------------------------------------------------


class Tokenizer(Protocol):
    """The engine's tokenization of a request; any difference costs matches, not answers."""

    def encode_text(self, text: str) -> list[int]:
        """A completion prompt, as the engine tokenizes ``/v1/completions``."""
        ...

    def encode_chat(self, messages: Sequence[Any]) -> list[int]:
        """Chat messages rendered by the model's template, with the generation prompt."""
        ...


@dataclass(frozen=True, slots=True)
class ChatTemplateRule:
    """A chat template written as format strings (``{role}``, ``{content}``).

    Real templates are Jinja programs; most chat models' come down to this shape, which
    keeps the gateway free of a template engine. Text parts of a list content are joined
    with ``part_separator``; other parts (images, audio) make the request unmatchable.
    """

    message: str
    generation_prompt: str
    prefix: str = ""
    part_separator: str = ""

    @classmethod
    def chatml(cls) -> ChatTemplateRule:
        """ChatML (Qwen and many others)."""
        return cls(
            message="<|im_start|>{role}\n{content}<|im_end|>\n",
            generation_prompt="<|im_start|>assistant\n",
        )

    @classmethod
    def llama3(cls) -> ChatTemplateRule:
        """Llama 3 instruct (without the date system preamble some of its templates add)."""
        return cls(
            message="<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
            generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
            prefix="<|begin_of_text|>",
        )

    def render(self, messages: Sequence[Any]) -> str:
        parts = [self.prefix]
        for message in messages:
            if not isinstance(message, Mapping):
                raise ValueError("each message must be an object")
            content = message.get("content")
            if isinstance(content, list):
                texts = []
                for part in content:
                    if not isinstance(part, Mapping) or part.get("type") != "text":
                        raise ValueError("only text parts can be rendered")
                    texts.append(str(part.get("text", "")))
                content = self.part_separator.join(texts)
            elif content is None:
                content = ""
            parts.append(self.message.format(role=message.get("role"), content=content))
        parts.append(self.generation_prompt)
        return "".join(parts)


class HFTokenizer:
    """A real model's tokenizer: its ``tokenizer.json`` and a ``ChatTemplateRule``.

    As vLLM does, a rendered chat is encoded without adding special tokens (the template
    writes them) and a completion prompt with them. Truncation and padding that a
    tokenizer.json may carry are turned off: the engine sees the whole prompt.
    """

    def __init__(self, tokenizer_json: str, template: ChatTemplateRule) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._tokenizer = RustTokenizer.from_file(tokenizer_json)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._template = template

    def encode_text(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=True).ids)

    def encode_chat(self, messages: Sequence[Any]) -> list[int]:
        rendered = self._template.render(messages)
        return list(self._tokenizer.encode(rendered, add_special_tokens=False).ids)


class SimTokenizer:
    """The simulator's tokenizer and chat template, imported from ``mixroute.sim``.

    This is the engine's own tokenizer, exactly as loading a model's tokenizer.json is for
    a real vLLM: the gateway depends on the simulator's code only when it is configured to
    front simulated replicas.
    """

    def __init__(self) -> None:
        from mixroute.sim import tokenizer as sim_tokenizer

        self._encode = sim_tokenizer.encode
        self._render = sim_tokenizer.render_messages

    def encode_text(self, text: str) -> list[int]:
        return self._encode(text)

    def encode_chat(self, messages: Sequence[Any]) -> list[int]:
        return self._encode(self._render(messages))


def request_token_ids(tokenizer: Tokenizer, body: Mapping[str, Any]) -> list[int] | None:
    """The prompt token ids of a chat or completion request body; None when unknown."""
    messages = body.get("messages")
    try:
        if isinstance(messages, list):
            return tokenizer.encode_chat(messages)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return tokenizer.encode_text(prompt)
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            return list(prompt)
    except (ValueError, TypeError, KeyError):
        return None
    return None  # a batch of prompts, or nothing to tokenize


def _prompt_chars(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        total = 0
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(len(p.get("text", "")) for p in content if isinstance(p, Mapping))
        return total
    prompt = body.get("prompt")
    return len(prompt) if isinstance(prompt, str) else 0


async def tokenize_request(
    tokenizer: Tokenizer,
    body: Mapping[str, Any],
    *,
    executor: Executor | None = None,
    offload_chars: int = 1024,
) -> list[int] | None:
    """``request_token_ids`` that keeps the event loop free for long prompts.

    Tokenizing costs about 0.15-1 µs per character (simulator / HF tokenizers here), so
    prompts past ``offload_chars`` (a few hundred µs) go to ``executor`` (the loop's default
    thread pool when None); shorter ones are cheaper inline than a thread hand-off.
    """
    if _prompt_chars(body) <= offload_chars:
        return request_token_ids(tokenizer, body)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, request_token_ids, tokenizer, body)


# -- the subscriber -----------------------------------------------------------------------


@dataclass(slots=True)
class SubscriberStats:
    batches: int = 0  # applied, live or replayed
    replayed: int = 0
    duplicates: int = 0
    gaps: int = 0
    gaps_filled: int = 0
    resyncs: int = 0  # the endpoint's entries were cleared and history restarted
    decode_errors: int = 0
    last_seq: int | None = None
    connected: bool = False


class KVEventSubscriber:
    """Follows one endpoint's KV events into a ``BlockIndex`` (zmq.asyncio SUB socket).

    Sequence numbers are checked: a gap is filled from the replay socket (vLLM's ROUTER,
    asked through a DEALER with REQ's empty delimiter); when it cannot be filled, or the
    sequence goes back (engine restarted), or the SUB socket (re)connects, the endpoint's
    entries are cleared and its history restarts, first from whatever the replay buffer
    still holds. The index is thus always the effect of one contiguous run of batches on
    an empty set: a subset of the engine's cache.
    """

    def __init__(
        self,
        endpoint_name: str,
        pub_address: str,
        replay_address: str | None,
        index: BlockIndex,
        *,
        topic: str = "",
        replay_timeout_s: float = 2.0,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.endpoint_name = endpoint_name
        self.pub_address = pub_address
        self.replay_address = replay_address
        self.index = index
        self.topic = topic
        self.replay_timeout_s = replay_timeout_s
        self.stats = SubscriberStats()
        self.synced = asyncio.Event()  # set after each (re)connection's resync
        self._context = context
        self._owns_context = context is None
        self._last_live: int | None = None  # last sequence number seen on the SUB socket
        self._task: asyncio.Task[None] | None = None
        index.add_endpoint(endpoint_name)

    def start(self) -> None:
        """Connect and follow the stream in a background task."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kv-events-{self.endpoint_name}"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_context and self._context is not None:
            self._context.term()
            self._context = None

    def _ctx(self) -> zmq.asyncio.Context:
        if self._context is None:
            import zmq.asyncio

            self._context = zmq.asyncio.Context()
        return self._context

    async def _run(self) -> None:
        import zmq

        try:
            await self._follow()
        except zmq.ZMQError:
            # A bad address, or the context terminated under us: routing falls back to
            # estimates for this endpoint rather than trusting a stale view.
            logger.exception("%s: KV events stopped", self.endpoint_name)
            self.index.clear_endpoint(self.endpoint_name)
            self.stats.connected = False

    async def _follow(self) -> None:
        import zmq
        from zmq.utils.monitor import parse_monitor_message

        sub = self._ctx().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic.encode("utf-8"))
        monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        poller = zmq.asyncio.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            sub.connect(self.pub_address)
            while True:
                ready = dict(await poller.poll())
                if monitor in ready:
                    event = parse_monitor_message(await monitor.recv_multipart())
                    if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        self.stats.connected = True
                        await self.resync("connected")
                        self.synced.set()
                    elif event["event"] == zmq.EVENT_DISCONNECTED:
                        self.stats.connected = False
                        self.synced.clear()
                if sub in ready:
                    for _ in range(256):  # then give the monitor a turn
                        try:
                            frames = await sub.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        await self.handle_message(frames)
        finally:
            sub.disable_monitor()
            monitor.close(linger=0)
            sub.close(linger=0)

    # -- sequence handling (public so tests and tools can feed frames) ------------------

    async def handle_message(self, frames: Sequence[bytes]) -> None:
        """One live message ``[topic, seq, payload]``: apply, skip, or repair then apply."""
        if len(frames) != 3 or len(frames[1]) != 8:
            self.stats.decode_errors += 1
            return
        seq = int.from_bytes(frames[1], "big")
        if self._last_live is not None and seq <= self._last_live:
            # One publisher's live sequence only grows: it restarted (its cache is empty).
            await self.resync(f"live sequence went back from {self._last_live} to {seq}")
        self._last_live = seq
        last = self.stats.last_seq
        if last is not None and seq <= last:
            self.stats.duplicates += 1  # already applied from a replay
            return
        if last is None:
            # A fresh history: batches before this one (sent while the subscription was
            # still on its way, or before a failed replay) may still be in the buffer.
            if seq > 0 and self.replay_address is not None:
                await self._fill(0, seq)
        elif seq > last + 1:
            self.stats.gaps += 1
            if await self._fill(last + 1, seq):
                self.stats.gaps_filled += 1
            else:
                await self.resync(f"missed batches {last + 1}..{seq - 1}")
        last = self.stats.last_seq
        if last is not None and seq <= last:
            return  # a replay brought it
        self._apply(seq, frames[2])

    def _apply(self, seq: int, payload: bytes, replayed: bool = False) -> None:
        """Apply one batch; after a hole the history restarts from this batch."""
        last = self.stats.last_seq
        if last is None or seq != last + 1:
            self.index.clear_endpoint(self.endpoint_name)
        self.stats.last_seq = seq
        try:
            batch = decode_batch(payload)
        except WireFormatError as exc:
            # Skipping would leave the index a superset if the batch removed blocks.
            logger.warning("%s: undecodable batch %d: %s", self.endpoint_name, seq, exc)
            self.stats.decode_errors += 1
            self.index.clear_endpoint(self.endpoint_name)
            self.stats.last_seq = None
            return
        self.index.apply(self.endpoint_name, batch.events)
        self.stats.batches += 1
        self.stats.replayed += replayed

    async def resync(self, reason: str) -> None:
        """Clear the endpoint and rebuild it from the replay buffer, if there is one."""
        logger.info("%s: resync (%s)", self.endpoint_name, reason)
        self.stats.resyncs += 1
        self.index.clear_endpoint(self.endpoint_name)
        self.stats.last_seq = None
        self._last_live = None
        await self._fill(0, None)

    async def _fill(self, start: int, until: int | None) -> bool:
        """Apply replayed batches from ``start``; True if all of ``start..until-1`` came."""
        if self.replay_address is None:
            return False
        try:
            frames = await self._replay(start)
        except (TimeoutError, OSError) as exc:
            logger.warning("%s: replay from %d failed: %s", self.endpoint_name, start, exc)
            return False
        for count, (seq, payload) in enumerate(frames, 1):
            last = self.stats.last_seq
            if last is not None and seq <= last:
                continue
            if last is not None and seq != last + 1 and until is not None:
                return False  # the buffer no longer reaches back to what we miss
            self._apply(seq, payload, replayed=True)
            if count % 64 == 0:
                await asyncio.sleep(0)  # a long replay must not hold the loop
        last = self.stats.last_seq
        return until is None or (last is not None and last >= until - 1)

    async def _replay(self, start: int) -> list[tuple[int, bytes]]:
        """Ask the replay socket for every batch from ``start``; ends at its END marker."""
        import zmq

        dealer = self._ctx().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.replay_address or "")
        received: list[tuple[int, bytes]] = []
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            deadline = time.monotonic() + self.replay_timeout_s
            while True:
                remaining = max(deadline - time.monotonic(), 0.0)
                frames = await asyncio.wait_for(dealer.recv_multipart(), remaining)
                if len(frames) != 3:
                    continue
                seq = int.from_bytes(frames[1], "big", signed=True)
                if seq < 0 or not frames[2]:
                    return received
                received.append((seq, frames[2]))
        finally:
            dealer.close(linger=0)
