"""Settings of logs (and, later, tracing), mounted as ``observability`` in the main schema.

This module imports nothing from mixroute: the main schema imports it, so importing the
schema back from here would be circular. Its base repeats ``StrictModel``'s two rules.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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


class ObservabilityConfig(_Strict):
    logs: LogsConfig = Field(default_factory=LogsConfig)
