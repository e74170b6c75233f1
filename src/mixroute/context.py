"""The per-request record every layer reads and adds to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Decision:
    """Why a model was chosen; sent back to the client as explain headers."""

    model: str
    route: str
    category: str
    confidence: float
    reasoning: bool = False


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
    response_headers: dict[str, str] = field(default_factory=dict)
