"""vLLM's KV-event wire format: the event dataclasses and the msgpack decoder.

vLLM started with ``--kv-events-config`` publishes every change of its prefix cache over
ZMQ (docs/kv-events.md has the wire format). ``decode_batch`` reads one payload, in both
encodings vLLM has used (events as tagged positional arrays, or as tagged maps since vLLM
PR #42892), into the dataclasses here, so the index and the subscriber never see msgpack.

msgpack is imported only when a payload is decoded, so a gateway without KV events does
not need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EngineHash = int | bytes  # vLLM's ExternalBlockHash: an int, or bytes in newer versions


class WireFormatError(ValueError):
    """A payload that is not a KVEventBatch."""


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
