"""OpenAI-shaped errors.

Every failure a client can see leaves the gateway as ``{"error": {"message", "type",
"code"}}`` with a matching status, so OpenAI SDKs raise their usual exception classes.
"""

from __future__ import annotations

import orjson
from aiohttp import web


class GatewayError(Exception):
    """An error that maps to one OpenAI-shaped HTTP response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        self.headers = headers or {}  # the refusal's own headers (``retry-after``...)

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type="application/json",
            headers={**self.headers, **(headers or {})},
        )


_ACCESS_REASONS = {
    "rate_limit_exceeded": "rate_limited",
    "model_not_allowed": "forbidden",
    "queue_full": "queue_full",
    "queue_timeout": "queue_timeout",
}


def rejection_reason(error: GatewayError) -> str:
    """The ``reason`` label of ``mixroute_requests_rejected_total`` for a refusal."""
    access = _ACCESS_REASONS.get(error.code or "")
    if access is not None:
        return access
    if error.status == 413:
        return "too_large"
    if error.status == 404:
        return "unknown_model"
    if error.status == 503:
        return "no_endpoint"
    if error.status == 401:
        return "unauthorized"
    return "bad_request"


def bad_request(
    message: str, *, code: str = "invalid_request", param: str | None = None
) -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{model}` does not exist or is not served by this gateway.",
        code="model_not_found",
        param="model",
    )


def no_healthy_endpoint(model: str) -> GatewayError:
    return GatewayError(
        503,
        f"No healthy endpoint serves model `{model}` right now.",
        error_type="service_unavailable",
        code="no_healthy_endpoint",
    )


def upstream_error(message: str, status: int = 502, code: str = "upstream_error") -> GatewayError:
    return GatewayError(status, message, error_type="upstream_error", code=code)


def sse_error_event(message: str, code: str) -> bytes:
    """An SSE event that tells a streaming client the stream failed, then ends it."""
    payload = orjson.dumps({"error": {"message": message, "type": "upstream_error", "code": code}})
    return b"data: " + payload + b"\n\ndata: [DONE]\n\n"
