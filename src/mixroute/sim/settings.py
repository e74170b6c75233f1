"""Options of the vLLM engine simulator.

One frozen dataclass so that the CLI, tests and demos build a simulator the same way
and every option has a single documented default. Latency defaults are deliberately
small: tests and gateway throughput benchmarks must stay fast, while routing policies
still see queueing, batch slowdown and prefix-cache effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HangMode = Literal["before-headers", "mid-stream"]
HANG_MODES: tuple[HangMode, ...] = ("before-headers", "mid-stream")
# vLLM's KV events: positional msgpack arrays before vLLM PR #42892, tagged maps after it.
KVEventEncoding = Literal["array", "map"]
KV_EVENT_ENCODINGS: tuple[KVEventEncoding, ...] = ("array", "map")


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Everything that shapes one simulated vLLM replica.

    Latency model: a request waits for one of ``max_batch`` slots (FIFO, at most
    ``max_waiting`` waiters, beyond that 503), then prefills the prompt tokens that
    missed the prefix cache at ``prefill_ms_per_token``, then produces each output
    token in ``decode_ms_per_token * (1 + batch_slowdown * (running - 1))``.

    KV events (``kv_events_port`` set; 0 picks a free port): the prefix cache's changes are
    published as vLLM's ZMQ ``KVEventBatch`` messages on ``kv_events_topic`` (default
    ``kv@<replica>@<model>``); ``kv_events_replay_port`` adds the replay socket, which
    keeps the last ``kv_events_buffer_steps`` batches.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 0
    replica_name: str | None = None  # None: "host:port" of the bound socket
    max_batch: int = 32
    max_waiting: int = 1024
    prefill_ms_per_token: float = 0.02
    decode_ms_per_token: float = 1.0
    batch_slowdown: float = 0.05
    block_size: int = 16
    prefix_cache_blocks: int = 4096
    kv_cache_blocks: int = 8192
    max_model_len: int = 131072
    max_tokens_default: int = 16
    embedding_dim: int = 384
    no_latency: bool = False
    # Disaggregated serving: a "prefill" replica answers requests that carry
    # kv_transfer_params.do_remote_decode with params a "decode" replica accepts; a decode
    # (or "both") replica skips prefill only for params a prefill replica issued.
    role: str = "both"
    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_mode: HangMode = "before-headers"
    slow_start_s: float = 0.0
    crash_after: int | None = None
    stall_s: float = 0.0  # one pause after the first token of every stream
    flap_up_s: float = 0.0  # with flap_down_s > 0: up this long, then down, repeating
    flap_down_s: float = 0.0
    seed: int = 0
    shutdown_timeout_s: float = 1.0
    kv_events_port: int | None = None  # None: no KV events
    kv_events_replay_port: int | None = None  # None: no replay socket
    kv_events_topic: str | None = None  # None: "kv@<replica>@<model>"
    kv_events_encoding: KVEventEncoding = "array"
    kv_events_buffer_steps: int = 10_000

    def __post_init__(self) -> None:
        """Reject impossible values early so a typo fails at start, not mid-benchmark."""
        if not self.model:
            raise ValueError("model must be a non-empty name")
        positive: dict[str, int] = {
            "max_batch": self.max_batch,
            "block_size": self.block_size,
            "kv_cache_blocks": self.kv_cache_blocks,
            "max_model_len": self.max_model_len,
            "max_tokens_default": self.max_tokens_default,
            "embedding_dim": self.embedding_dim,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        non_negative: dict[str, float] = {
            "max_waiting": self.max_waiting,
            "prefill_ms_per_token": self.prefill_ms_per_token,
            "decode_ms_per_token": self.decode_ms_per_token,
            "batch_slowdown": self.batch_slowdown,
            "prefix_cache_blocks": self.prefix_cache_blocks,
            "slow_start_s": self.slow_start_s,
            "stall_s": self.stall_s,
            "flap_up_s": self.flap_up_s,
            "flap_down_s": self.flap_down_s,
            "shutdown_timeout_s": self.shutdown_timeout_s,
        }
        for name, amount in non_negative.items():
            if amount < 0:
                raise ValueError(f"{name} must be >= 0, got {amount}")
        for name, rate in (("error_rate", self.error_rate), ("hang_rate", self.hang_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        if self.hang_mode not in HANG_MODES:
            raise ValueError(f"hang_mode must be one of {HANG_MODES}, got {self.hang_mode!r}")
        if self.flap_down_s > 0 and self.flap_up_s <= 0:
            raise ValueError("flap_down_s needs flap_up_s > 0 (a replica that is never up)")
        if self.crash_after is not None and self.crash_after < 0:
            raise ValueError(f"crash_after must be >= 0, got {self.crash_after}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within [0, 65535], got {self.port}")
        self._check_kv_events()

    def _check_kv_events(self) -> None:
        for name, kv_port in (
            ("kv_events_port", self.kv_events_port),
            ("kv_events_replay_port", self.kv_events_replay_port),
        ):
            if kv_port is not None and not 0 <= kv_port <= 65535:
                raise ValueError(f"{name} must be within [0, 65535], got {kv_port}")
        if self.kv_events_replay_port is not None and self.kv_events_port is None:
            raise ValueError("kv_events_replay_port needs kv_events_port")
        if self.kv_events_encoding not in KV_EVENT_ENCODINGS:
            raise ValueError(
                f"kv_events_encoding must be one of {KV_EVENT_ENCODINGS}, "
                f"got {self.kv_events_encoding!r}"
            )
        if self.kv_events_buffer_steps < 1:
            raise ValueError(
                f"kv_events_buffer_steps must be >= 1, got {self.kv_events_buffer_steps}"
            )
