"""Settings of logs (and, later, tracing), mounted as ``observability`` in the main schema.

This module imports nothing from mixroute: the main schema imports it, so importing the
schema back from here would be circular. Its base repeats ``StrictModel``'s two rules.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    """Unknown keys are errors, and settings are immutable (as in the main schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LogsConfig(_Strict):
    format: Literal["text", "json"] = Field(
        "text",
        description="The process's log lines: plain text, or one JSON object per line. "
        "Read once at start (`mixroute serve`).",
    )
    requests: bool = Field(
        True, description="One JSON line per finished inference request (logger mixroute.requests)."
    )
    log_prompts: bool = Field(
        False,
        description="Add the last user message, cut to prompt_chars, to each request line. "
        "Off by default: prompts are user data.",
    )
    prompt_chars: int = Field(200, ge=1, le=10_000)


class TracingConfig(_Strict):
    """OpenTelemetry tracing (docs/observability.md). Read once at start: changing it needs a
    restart. Needs the optional package: pip install 'mixroute[tracing]'."""

    enabled: bool = Field(
        False, description="Record one trace per inference request and export it over OTLP."
    )
    otlp_endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces",
        description="The collector's OTLP/HTTP (protobuf) traces URL.",
    )
    service_name: str = Field("mixroute", min_length=1, description="The `service.name`.")
    sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces recorded; a request that carries a traceparent "
        "follows its caller's sampled flag instead.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers on every export (a collector's API key: use ${ENV}).",
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value


class ObservabilityConfig(_Strict):
    logs: LogsConfig = Field(default_factory=LogsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
