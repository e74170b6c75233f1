"""vLLM's KV-cache events, published by the simulator so KV-aware routing can be tested.

vLLM (``--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", ...}'``)
announces every change of its prefix cache on a ZMQ PUB socket, and the simulator does
the same, byte for byte:

* a message is three frames: the topic (UTF-8), the sequence number (8 bytes, big endian,
  from 0, +1 per batch) and the msgpack payload;
* the payload is a ``KVEventBatch`` ``[ts, events, data_parallel_rank]`` (a msgspec struct
  with ``array_like=True``: a positional array); the events are ``BlockStored``,
  ``BlockRemoved`` and ``AllBlocksCleared``, msgspec tagged structs whose tag is the class
  name. Encoding ``"array"``: each event is a positional array whose first element is the
  tag, with the fields vLLM had between its PRs #19737 (``medium``) and #27577
  (``lora_name``): ``["BlockStored", block_hashes, parent_block_hash, token_ids,
  block_size, lora_id, medium]``, ``["BlockRemoved", block_hashes, medium]``,
  ``["AllBlocksCleared"]``. Encoding ``"map"``: vLLM after PR #42892, each event a map
  with the tag under ``"type"`` and one key per field (defaults omitted);
* the optional replay socket is a ROUTER: a client (REQ, or DEALER with an empty delimiter
  frame) sends the first sequence number it misses (8 bytes, big endian) and gets one
  ``(seq, payload)`` message per buffered batch from there on, then ``(-1, b"")``.

The publisher hears the prefix cache synchronously (``CacheListener``) from request
handlers, so it must never block: events of one event-loop iteration are gathered into one
batch (vLLM sends one batch per engine step) and flushed from ``call_soon``; a PUB socket
never blocks on send (it drops for a subscriber past its high-water mark, and a subscriber
then sees a sequence gap and asks the replay socket). Pending events and the replay buffer
are both bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq
import zmq.asyncio

from mixroute.sim.settings import KVEventEncoding

logger = logging.getLogger("mixroute.sim.kv_events")

MEDIUM_GPU = "GPU"
END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)
_REPLAY_YIELD_EVERY = 256  # replay frames sent between two yields to the event loop


def default_topic(replica: str, model: str) -> str:
    """``kv@<replica>@<model>``: the topic convention of llm-d's deployments of vLLM
    (``kv@$POD_IP:$PORT@$MODEL``); vLLM's own default topic is the empty string."""
    return f"kv@{replica}@{model}"


def block_stored(
    block_hashes: Sequence[int],
    parent_hash: int | None,
    token_ids: Sequence[int],
    block_size: int,
    encoding: KVEventEncoding,
) -> list[Any] | dict[str, Any]:
    """A ``BlockStored`` event in vLLM's layout (no LoRA: the simulator has none)."""
    if encoding == "array":
        return [
            "BlockStored",
            list(block_hashes),
            parent_hash,
            list(token_ids),
            block_size,
            None,
            MEDIUM_GPU,
        ]
    return {
        "type": "BlockStored",
        "block_hashes": list(block_hashes),
        "parent_block_hash": parent_hash,
        "token_ids": list(token_ids),
        "block_size": block_size,
        "lora_id": None,
        "medium": MEDIUM_GPU,
        "lora_name": None,
    }


def block_removed(
    block_hashes: Sequence[int], encoding: KVEventEncoding
) -> list[Any] | dict[str, Any]:
    """A ``BlockRemoved`` event in vLLM's layout."""
    if encoding == "array":
        return ["BlockRemoved", list(block_hashes), MEDIUM_GPU]
    return {"type": "BlockRemoved", "block_hashes": list(block_hashes), "medium": MEDIUM_GPU}


def all_blocks_cleared(encoding: KVEventEncoding) -> list[Any] | dict[str, Any]:
    """An ``AllBlocksCleared`` event (no fields)."""
    return ["AllBlocksCleared"] if encoding == "array" else {"type": "AllBlocksCleared"}


def encode_batch(ts: float, events: Sequence[Any], data_parallel_rank: int = 0) -> bytes:
    """The msgpack payload of a ``KVEventBatch``: always positional ``[ts, events, rank]``."""
    payload: bytes = msgpack.packb([ts, list(events), data_parallel_rank], use_bin_type=True)
    return payload


def _tcp_address(host: str, port: int) -> str:
    host_part = f"[{host}]" if ":" in host else host
    return f"tcp://{host_part}:{'*' if port == 0 else port}"


class KVEventPublisher:
    """PUB socket for the live stream, ROUTER socket for replays, bounded replay buffer.

    Implements ``prefix_cache.CacheListener``. ``topic`` is called at each flush because
    the default topic names the replica, which is only known once the HTTP port is bound.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        replay_port: int | None,
        topic: Callable[[], str],
        block_size: int,
        encoding: KVEventEncoding = "array",
        buffer_steps: int = 10_000,
        max_pending_events: int = 1024,
        hwm: int = 100_000,
    ) -> None:
        self._host = host
        self._port = port
        self._replay_port = replay_port
        self._topic = topic
        self._block_size = block_size
        self._encoding: KVEventEncoding = encoding
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._max_pending = max_pending_events
        self._hwm = hwm
        self._pending: list[Any] = []
        self._flush_scheduled = False
        self._next_seq = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._pub: zmq.Socket[bytes] | None = None
        self._replay: zmq.Socket[bytes] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.pub_address: str | None = None
        self.replay_address: str | None = None
        self.dropped_batches = 0

    @property
    def published_batches(self) -> int:
        return self._next_seq

    async def start(self) -> None:
        """Bind the sockets (``port`` 0 picks a free one) and serve replay requests."""
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._ctx = ctx
        ipv6 = ":" in self._host
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self._hwm)
        pub.setsockopt(zmq.IPV6, int(ipv6))
        pub.bind(_tcp_address(self._host, self._port))
        self._pub = pub
        self.pub_address = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        if self._replay_port is not None:
            replay = ctx.socket(zmq.ROUTER)
            replay.setsockopt(zmq.LINGER, 0)
            # A whole buffer must fit in the pipe to one client: ROUTER drops, not blocks.
            replay.setsockopt(zmq.SNDHWM, (self._buffer.maxlen or 0) + 16)
            replay.setsockopt(zmq.IPV6, int(ipv6))
            replay.bind(_tcp_address(self._host, self._replay_port))
            self._replay = replay
            self.replay_address = replay.getsockopt_string(zmq.LAST_ENDPOINT)
            self._replay_task = asyncio.get_running_loop().create_task(
                self._serve_replay(zmq.asyncio.Socket.from_socket(replay)),
                name="mixroute-sim-kv-replay",
            )

    async def close(self) -> None:
        """Flush what is pending, stop serving replays, close the sockets."""
        self._flush()
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None
        for sock in (self._pub, self._replay):
            if sock is not None:
                sock.close(linger=0)
        self._pub = self._replay = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- CacheListener ----------------------------------------------------------------

    def blocks_stored(
        self, block_hashes: Sequence[int], parent_hash: int | None, token_ids: Sequence[int]
    ) -> None:
        self._add(
            block_stored(block_hashes, parent_hash, token_ids, self._block_size, self._encoding)
        )

    def blocks_removed(self, block_hashes: Sequence[int]) -> None:
        self._add(block_removed(block_hashes, self._encoding))

    def all_cleared(self) -> None:
        self._add(all_blocks_cleared(self._encoding))

    # -- publishing -------------------------------------------------------------------

    def _add(self, event: list[Any] | dict[str, Any]) -> None:
        if self._pub is None:
            return  # not started (or closed): nobody can be listening
        self._pending.append(event)
        if len(self._pending) >= self._max_pending:
            self._flush()
            return
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._flush()
                return
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send the pending events as one batch; never blocks (PUB drops, never waits)."""
        self._flush_scheduled = False
        if not self._pending or self._pub is None:
            self._pending.clear()
            return
        payload = encode_batch(time.time(), self._pending)
        self._pending = []
        seq = self._next_seq
        self._next_seq += 1
        self._buffer.append((seq, payload))
        frames = (self._topic().encode("utf-8"), seq.to_bytes(8, "big"), payload)
        try:
            self._pub.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped_batches += 1  # still in the replay buffer

    async def _serve_replay(self, replay: zmq.asyncio.Socket) -> None:
        """Answer replay requests: every buffered batch from the asked sequence, then END."""
        while True:
            frames = await replay.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                logger.warning("ignoring a malformed replay request of %d frames", len(frames))
                continue
            try:
                await self._replay_from(frames[0], frames[1], int.from_bytes(frames[2], "big"))
            except zmq.ZMQError as exc:  # a client gone mid-replay must not end the service
                logger.warning("replay failed: %s", exc)

    async def _replay_from(self, client: bytes, delimiter: bytes, start: int) -> None:
        # A snapshot: batches published while we yield below must not mutate what we walk.
        wanted = [(seq, payload) for seq, payload in self._buffer if seq >= start]
        sock = self._replay
        if sock is None:
            return
        for count, (seq, payload) in enumerate(wanted, 1):
            sock.send_multipart((client, delimiter, seq.to_bytes(8, "big"), payload), zmq.NOBLOCK)
            if count % _REPLAY_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        sock.send_multipart((client, delimiter, END_OF_REPLAY, b""), zmq.NOBLOCK)
