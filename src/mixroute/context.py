"""The per-request record every layer reads and adds to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from mixroute.observability.tracing import NO_TRACE, RequestTrace


@dataclass(slots=True)
class Decision:
    """Why a model was chosen; sent back to the client as explain headers."""

    model: str
    route: str
    category: str
    confidence: float
    reasoning: bool = False


class ResponseTap(Protocol):
    """Sees an answer as it passes (the cache uses it to capture complete answers)."""

    def on_body(self, status: int, body: bytes) -> bytes: ...

    def on_chunk(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    def on_stream_end(self, complete: bool) -> None: ...


@dataclass(slots=True)
class RequestContext:
    request_id: str
    path: str
    requested_model: str
    model: str
    body: dict[str, Any]
    raw_body: bytes
    stream: bool
    tenant: str | None = None
    debug: bool = False
    session_key: str | None = None
    decision: Decision | None = None
    body_changed: bool = False
    started: float = 0.0  # time.monotonic() when the request arrived
    route: Any = None  # the RouteConfig that decided, for auto requests
    classified_text: str | None = None
    vector: npt.NDArray[np.float32] | None = None  # the request's one embedding, when made
    tap: ResponseTap | None = None
    pii_found: bool = False  # PII was seen in the request: it is never cached
    pii_values: set[str] = field(default_factory=set)  # what the user supplied (output scan)
    prefix_hashes: list[bytes] | None = None  # the prompt's block hashes, computed once
    balancer_scores: str | None = None  # debug: why the balancer picked what it picked
    # Exact prefix matches from KV events: (blocks held per endpoint, blocks in the prompt).
    kv_matches: tuple[dict[str, int], int] | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # Access control (access/service.py): charged with the answer's usage when it is known
    # (the key's tokens per minute), and the client's key headers, never sent upstream.
    on_usage: Callable[[dict[str, Any]], None] | None = None
    client_key_headers: tuple[str, ...] = ()
    trace: RequestTrace = NO_TRACE  # spans for the stages (observability/tracing.py)
    # The error code of a failure answered without raising (the last failed attempt, a stream
    # that broke after its 200, a client gone mid-stream): the request log and metrics read it.
    error_code: str | None = None
