"""The OpenAI-shaped refusals of access control (401, 403, 429, 503), with their headers."""

from __future__ import annotations

from mixroute.errors import GatewayError


def invalid_key(missing: bool, where: str) -> GatewayError:
    message = (
        f"This gateway needs an API key ({where})."
        if missing
        else "The API key is not valid for this gateway."
    )
    return GatewayError(
        401,
        message,
        error_type="authentication_error",
        code="invalid_api_key",
        headers={"www-authenticate": "Bearer"},
    )


def model_not_allowed(model: str, route: str | None) -> GatewayError:
    via = f" (chosen by route `{route}`)" if route else ""
    return GatewayError(
        403,
        f"This API key may not use the model `{model}`{via}.",
        error_type="permission_error",
        code="model_not_allowed",
        param="model",
    )


def rate_limited(kind: str, limit: int, retry_after_s: int) -> GatewayError:
    """OpenAI's shape: type ``requests`` or ``tokens``, code ``rate_limit_exceeded``."""
    unit = "requests" if kind == "requests" else "tokens"
    return GatewayError(
        429,
        f"Rate limit reached for this API key on {unit} per minute (limit {limit}). "
        f"Please try again in {retry_after_s}s.",
        error_type=kind,
        code="rate_limit_exceeded",
        headers={"retry-after": str(retry_after_s)},
    )


def queue_full(model: str) -> GatewayError:
    return GatewayError(
        429,
        f"Model `{model}` is at its in-flight limit and its queue is full; retry shortly.",
        error_type="overloaded",
        code="queue_full",
    )


def queue_timeout(model: str, waited_s: float) -> GatewayError:
    return GatewayError(
        503,
        f"Model `{model}` did not admit the request within {waited_s:g}s (queue wait).",
        error_type="service_unavailable",
        code="queue_timeout",
    )
