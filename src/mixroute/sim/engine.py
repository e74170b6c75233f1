"""The latency model: a continuous-batching scheduler in the spirit of vLLM.

A request first waits in a FIFO queue until one of ``max_batch`` running slots is free
(queueing time; with ``max_waiting`` waiters already queued it is refused at once). Once
running, it looks up its prompt in the prefix cache and "prefills" the tokens that
missed, at ``prefill_ms_per_token``. Then every output token costs one decode step of
``decode_ms_per_token * (1 + batch_slowdown * (running - 1))``: the more requests share
the batch, the slower each one decodes. The first token costs prefill + one step, so
TTFT = queueing + prefill + one decode step.

Only time is simulated: there is one event loop and no GPU, so requests "compute" by
sleeping until deadlines. Deadlines accumulate (step i ends at prefill end + sum of the
steps before it) so event-loop overhead does not add up across tokens.

KV cache usage counts the blocks held by *running* requests (prompt + tokens generated
so far, rounded up to whole blocks) over ``kv_cache_blocks``, capped at 1. Cached
prefix blocks no running request uses are counted as free, as vLLM does for its
evictable cached blocks. The KV capacity does not limit admission; ``max_batch`` does.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from mixroute.sim.metrics import CacheConfig, EngineCounters, EngineGauges
from mixroute.sim.prefix_cache import CacheListener, PrefixCache, block_hashes
from mixroute.sim.settings import SimSettings


class QueueFullError(Exception):
    """The waiting queue already holds ``max_waiting`` requests."""


class RunningRequest:
    """One request holding a batch slot: its timing facts and its decode pacing."""

    def __init__(
        self,
        engine: Engine,
        prompt_tokens: int,
        cached_tokens: int,
        queue_s: float,
        prefill_s: float,
        arrival: float,
    ) -> None:
        self._engine = engine
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.queue_s = queue_s
        self.prefill_s = prefill_s
        self.arrival = arrival
        self.generated = 0
        self.finish_reason: str | None = None
        self._deadline = 0.0

    @property
    def kv_blocks(self) -> int:
        """KV blocks this request holds right now."""
        return math.ceil((self.prompt_tokens + self.generated) / self._engine.block_size)

    def start_decode(self, now: float) -> None:
        self._deadline = now

    async def steps(self, count: int) -> AsyncIterator[int]:
        """Yield the index of each output token when the latency model has produced it."""
        engine = self._engine
        loop = asyncio.get_running_loop()
        for index in range(count):
            step_s = engine.decode_step_s()
            if step_s > 0:
                self._deadline += step_s
                delay = self._deadline - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.generated += 1
            engine.counters.generation_tokens += 1
            if index == 0:
                engine.counters.ttft.observe(loop.time() - self.arrival)
            yield index

    def finish(self, reason: str) -> None:
        """Mark the request as completed normally (``stop`` or ``length``)."""
        self.finish_reason = reason


class Engine:
    """Batch slots, FIFO waiting queue, prefix cache and the counters behind /metrics."""

    def __init__(self, settings: SimSettings, cache_listener: CacheListener | None = None) -> None:
        self._settings = settings
        self.block_size = settings.block_size
        self.counters = EngineCounters()
        self._cache = PrefixCache(settings.prefix_cache_blocks, cache_listener)
        self._slots_used = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._running: set[RunningRequest] = set()

    @property
    def num_running(self) -> int:
        return self._slots_used

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def kv_cache_usage(self) -> float:
        used = sum(request.kv_blocks for request in self._running)
        return min(1.0, used / self._settings.kv_cache_blocks)

    def gauges(self) -> EngineGauges:
        return EngineGauges(self.num_running, self.num_waiting, self.kv_cache_usage())

    def cache_config(self) -> CacheConfig:
        return CacheConfig(
            block_size=self._settings.block_size,
            num_gpu_blocks=self._settings.kv_cache_blocks,
            enable_prefix_caching=self._settings.prefix_cache_blocks > 0,
        )

    def decode_step_s(self) -> float:
        """Duration of one decode step at the current batch size."""
        if self._settings.no_latency:
            return 0.0
        extra = max(self._slots_used - 1, 0)
        factor = 1.0 + self._settings.batch_slowdown * extra
        return self._settings.decode_ms_per_token * factor / 1000.0

    async def _acquire(self) -> bool:
        """Take a batch slot, waiting in FIFO order if needed; True if it had to wait."""
        if self._slots_used < self._settings.max_batch and not self._waiting:
            self._slots_used += 1
            return False
        if len(self._waiting) >= self._settings.max_waiting:
            raise QueueFullError
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            else:
                self._waiting.remove(waiter)
            raise
        return True

    def _release(self) -> None:
        """Hand the slot to the oldest live waiter (FIFO), or free it."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._slots_used -= 1

    def _lookup_prefix(self, prompt_ids: Sequence[int]) -> int:
        """Cached prompt tokens; inserts the prompt's blocks for later requests.

        Like vLLM, at least the last prompt token is always computed, so a block-aligned
        prompt cannot hit on its final block.
        """
        hashes = block_hashes(prompt_ids, self.block_size)
        matchable = max(len(prompt_ids) - 1, 0) // self.block_size
        hit_blocks = self._cache.match(hashes[:matchable])
        self._cache.insert(hashes, prompt_ids, self.block_size)
        return hit_blocks * self.block_size

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (vLLM's ``/reset_prefix_cache``).

        Running requests keep running: only hit/miss bookkeeping lives in the cache here,
        so, unlike vLLM, there are no in-use blocks that could make the reset fail.
        """
        self._cache.clear()

    @asynccontextmanager
    async def schedule(
        self, prompt_ids: Sequence[int], remote_prefill: bool = False
    ) -> AsyncIterator[RunningRequest]:
        """Queue, admit and prefill a request; the slot is held until the block exits.

        ``remote_prefill``: the prompt's KV blocks were transferred from a prefill replica,
        so nothing is computed here. Raises ``QueueFullError`` when the waiting queue is
        full. Leaving the block without ``RunningRequest.finish`` (exception, cancellation)
        counts as an abort.
        """
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        waited = await self._acquire()
        request: RunningRequest | None = None
        try:
            admitted = loop.time() if waited else arrival
            cached = self._lookup_prefix(prompt_ids)
            if remote_prefill:  # the KV blocks came from a prefill replica
                cached = len(prompt_ids)
            computed = len(prompt_ids) - cached
            prefill_s = 0.0
            if not self._settings.no_latency:
                prefill_s = computed * self._settings.prefill_ms_per_token / 1000.0
            self.counters.prompt_tokens += len(prompt_ids)
            self.counters.prefix_cache_queries += len(prompt_ids)
            self.counters.prefix_cache_hits += cached
            request = RunningRequest(
                self, len(prompt_ids), cached, admitted - arrival, prefill_s, arrival
            )
            self._running.add(request)
            if prefill_s > 0:
                await asyncio.sleep(prefill_s)
            request.start_decode(max(loop.time(), admitted + prefill_s))
            yield request
        finally:
            if request is not None:
                self._running.discard(request)
                reason = request.finish_reason or "abort"
                self.counters.request_success[reason] += 1
                self.counters.e2e.observe(loop.time() - arrival)
            self._release()
