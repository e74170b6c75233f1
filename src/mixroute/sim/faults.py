"""Fault injection: the failures a gateway must survive, on demand and reproducibly.

* ``error_rate``: that fraction of inference requests is answered 500 at once.
* ``hang_rate`` (``--hang`` = 1.0): that fraction of inference requests never completes.
  ``before-headers`` hangs once the request holds a batch slot, before any response byte;
  ``mid-stream`` sends the status line and headers (and, when streaming, the role chunk
  and the first token) and then hangs. Hung requests keep their batch slot, so
  ``vllm:num_requests_running`` shows them, like a stuck engine.
* ``slow_start_s``: for that long after start-up, everything but ``/metrics`` answers
  503 (``/health`` included), as a replica that is still loading weights.
* ``crash_after`` N: inference requests are numbered in arrival order (after validation);
  requests 1..N are served normally and request N+1 makes the whole process exit with
  ``os._exit(1)``: a streaming request once its headers, role chunk and first token
  were flushed (mid-stream, the useful case for failover tests); a non-streaming one
  before any response byte. Requests still in flight at that moment die with it.
* ``stall_s``: every stream pauses that long after its first token, then goes on (a
  stalled decode step). Against a gateway's idle timeout: longer than it, the gateway must
  cut the stream; shorter, the stream must come through whole.
* ``flap_up_s`` / ``flap_down_s``: from start-up the replica is up for ``flap_up_s``, then
  down for ``flap_down_s``, and so on. While down it answers 503 like slow start (``/health``
  included, ``/metrics`` not); requests already running finish. A replica whose health
  flaps, for breaker and probe tests.

Random choices come from a ``random.Random(seed)`` owned by the injector, so a run with
the same seed and the same request order fails the same requests.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from typing import NoReturn

from mixroute.sim.settings import SimSettings

CRASH_EXIT_CODE = 1


class FaultInjector:
    """Decides, per request, which fault (if any) to inject."""

    def __init__(self, settings: SimSettings) -> None:
        self._settings = settings
        self._rng = random.Random(settings.seed)
        self._started_at = 0.0
        self._ready_at = 0.0
        self._arrivals = 0

    def mark_started(self, now: float) -> None:
        """Start the slow-start and flapping clocks (called when the app starts serving)."""
        self._started_at = now
        self._ready_at = now + self._settings.slow_start_s

    def warming_up(self, now: float) -> bool:
        return now < self._ready_at

    def flapped_down(self, now: float) -> bool:
        """Whether the flapping cycle is in a down phase at ``now`` (it starts up)."""
        up, down = self._settings.flap_up_s, self._settings.flap_down_s
        if down <= 0:
            return False
        return (now - self._started_at) % (up + down) >= up

    @property
    def stall_s(self) -> float:
        return self._settings.stall_s

    def should_fail(self) -> bool:
        rate = self._settings.error_rate
        return rate > 0 and self._rng.random() < rate

    def should_hang(self) -> bool:
        rate = self._settings.hang_rate
        return rate > 0 and self._rng.random() < rate

    def arrive(self) -> bool:
        """Number one more inference request; True when this one must crash the process."""
        self._arrivals += 1
        limit = self._settings.crash_after
        return limit is not None and self._arrivals > limit

    @staticmethod
    def crash(reason: str) -> NoReturn:
        """Die abruptly, without cleanup, as a segfaulting or OOM-killed engine would."""
        sys.stderr.write(f"mixroute-sim: simulated crash ({reason})\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(CRASH_EXIT_CODE)

    @staticmethod
    async def hang_forever() -> None:
        """Wait until cancelled (client gone with handler cancellation, or shutdown)."""
        await asyncio.Event().wait()
