"""Structured logs: one JSON line per finished request, and a JSON formatter for the rest.

The request line is built from the ``RequestRecord`` (decisions and timings only). The
prompt is added only when ``observability.logs.log_prompts`` is on, and then only the last
user message cut to ``prompt_chars``. The line is serialised with orjson, and not at all
when the request log is off or the logger would drop INFO.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from mixroute.context import RequestContext
from mixroute.observability.config import LogsConfig
from mixroute.observability.feed import RequestRecord

REQUEST_LOGGER = "mixroute.requests"
_PREFORMATTED = "mixroute_json_line"  # a LogRecord attribute: the message is already JSON


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class RequestLogger:
    """Writes the request line; ``settings`` is read per request so a reload applies at once."""

    def __init__(self, settings: Callable[[], LogsConfig]) -> None:
        self._settings = settings
        self._log = logging.getLogger(REQUEST_LOGGER)

    def log(self, record: RequestRecord, ctx: RequestContext | None) -> None:
        settings = self._settings()
        if not settings.requests or not self._log.isEnabledFor(logging.INFO):
            return
        line: dict[str, Any] = {
            "ts": _timestamp(record.time),
            "level": "INFO",
            "logger": REQUEST_LOGGER,
            "msg": "request",
            "request_id": record.request_id,
            "path": record.path,
            "requested_model": record.requested_model,
            "model": record.model,
            "route": record.route,
            "category": record.category,
            "confidence": record.confidence,
            "endpoint": record.endpoint,
            "cache": record.cache,
            "guard": record.guard,
            "status": record.status,
            "error": record.error,
            "latency_ms": record.latency_ms,
            "attempts": record.attempts,
            "stream": record.stream,
            "tenant": record.tenant,
        }
        if record.trace_id is not None:
            line["trace_id"] = record.trace_id
        if settings.log_prompts and ctx is not None:
            prompt = last_user_text(ctx.body)
            if prompt is not None:
                line["prompt"] = prompt[: settings.prompt_chars]
        self._log.info(orjson.dumps(line).decode(), extra={_PREFORMATTED: True})


def last_user_text(body: dict[str, Any]) -> str | None:
    """The last user message of a chat body (text parts joined), else a completions
    ``prompt`` or a Responses ``input`` string."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(
                        part["text"]
                        for part in content
                        if isinstance(part, dict) and isinstance(part.get("text"), str)
                    )
                return None
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc with the traceback).

    Request lines are already JSON objects of the same shape and pass through unchanged.
    """

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, _PREFORMATTED, False):
            return record.getMessage()
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def use_json_logs(root: logging.Logger | None = None) -> None:
    """Give every handler of the root logger the JSON formatter (after basicConfig)."""
    for handler in (root or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())
