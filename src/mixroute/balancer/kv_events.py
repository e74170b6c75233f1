"""Exact KV awareness: follows each replica's vLLM KV-cache events into the block index.

vLLM started with ``--kv-events-config`` publishes every change of its prefix cache over
ZMQ (docs/kv-events.md has the wire format). ``KVEventSubscriber`` follows one endpoint's
stream, detects sequence gaps and fills them from the replay socket; when it cannot
(replay gone, buffer rolled over, engine restarted, reconnection) it clears that
endpoint's entries and starts over, so the index stays a subset of the engine's cache.

The parts it feeds live in their own modules: the wire format and decoder (``kv_wire``),
the block index (``kv_index``) and the request tokenizers (``kv_tokenizers``). The names
other modules use are re-exported here.

pyzmq is imported only when a subscriber starts, so a gateway without KV events does not
need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mixroute.balancer.kv_index import BlockIndex, chain_keys
from mixroute.balancer.kv_tokenizers import (
    ChatTemplateRule,
    HFTokenizer,
    SimTokenizer,
    Tokenizer,
    request_token_ids,
    tokenize_request,
)
from mixroute.balancer.kv_wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    WireFormatError,
    decode_batch,
)

if TYPE_CHECKING:
    import zmq.asyncio

# The subscriber, and what other modules and tests import from here.
__all__ = [
    "AllBlocksCleared",
    "BlockIndex",
    "BlockRemoved",
    "BlockStored",
    "ChatTemplateRule",
    "HFTokenizer",
    "KVEventSubscriber",
    "SimTokenizer",
    "SubscriberStats",
    "Tokenizer",
    "WireFormatError",
    "chain_keys",
    "decode_batch",
    "request_token_ids",
    "tokenize_request",
]

logger = logging.getLogger("mixroute.balancer.kv_events")


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
