"""Secrets out of the active config before the dashboard shows it.

Redaction is by field name, not by a list of known fields, so a section added later (API
keys, another backend's credentials) is covered without anyone remembering to extend a
list: a field whose name says key, secret, password, token, credential, authorization or DSN
has every string under it replaced (in a list of key objects, only the fields that say who a
key is for stay: name, tenant, models, ...). Values of header maps (an exporter's ``headers``)
are masked, their names kept. Counts such as ``max_tokens`` are not names of secrets and
stay. Passwords inside URLs (``scheme://user:password@host``, ``password=`` in a libpq DSN
or a query string) are masked wherever they appear, and any secret found by name is also
masked where it appears inside another string.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

_SECRET_SUBSTRINGS = (
    "secret",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "authorization",
    "apikey",
    "api_key",
    "private_key",
    "dsn",
)
_SECRET_LAST_PARTS = frozenset({"key", "keys", "token", "secret", "pwd", "pass"})
# Fields of an object in a list of keys that say who the key is for, not what it is.
_IDENTITY_FIELDS = frozenset(
    {"name", "tenant", "models", "routes", "description", "priority", "enabled", "labels"}
)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)(?P<pw>[^/@\s]+)(?=@)")
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\b(?:(?:ssl)?password|passwd|pwd|secret|api_?key|access_token|auth_token)\s*=\s*)"
    r"(?P<pw>'[^']*'|[^\s&;'\"]+)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a config field of this name holds a secret (or a collection of them)."""
    lowered = name.lower().replace("-", "_")
    if any(word in lowered for word in _SECRET_SUBSTRINGS):
        return True
    return _last_part(lowered) in _SECRET_LAST_PARTS


def redact_config(data: Any) -> Any:
    """A copy of a JSON-shaped config with every secret replaced by ``***``."""
    found: set[str] = set()
    cleaned = _walk(data, secret=False, found=found)
    # Longest first, so a secret that contains another is masked whole.
    leaked = sorted((s for s in found if len(s) >= 6), key=len, reverse=True)
    return _mask_occurrences(cleaned, leaked) if leaked else cleaned


def _walk(
    value: Any, *, secret: bool, found: set[str], direct: bool = False, propagate: bool = False
) -> Any:
    """``secret``: mask the strings here. ``direct``: this is the value a secret-named field
    holds, so a mapping here may be keyed by the secrets themselves. ``propagate``: these
    strings are secrets in their own right (not just masked to be safe), so they are also
    masked where they appear elsewhere."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            field = str(key)
            name = field
            if secret and direct:
                found.add(field)
                name = f"{MASK}{index + 1}"
            named = is_secret_name(field)
            if named:
                child_secret, child_propagate = True, True
            elif secret and not direct and field in _IDENTITY_FIELDS:
                # An object in a list of keys: who it is for stays readable.
                child_secret, child_propagate = False, False
            elif isinstance(item, dict) and _last_part(field) == "headers":
                # Header maps (an exporter's auth headers): names stay, values go.
                child_secret, child_propagate = True, False
            else:
                child_secret, child_propagate = secret, False
            out[name] = _walk(
                item, secret=child_secret, found=found, direct=named, propagate=child_propagate
            )
        return out
    if isinstance(value, list):
        return [_walk(item, secret=secret, found=found, propagate=propagate) for item in value]
    if isinstance(value, str):
        if secret:
            if propagate:
                found.add(value)
            return MASK if value else value
        return _mask_inline(value)
    return value


def _last_part(name: str) -> str:
    return name.lower().replace("-", "_").split("_")[-1]


def _mask_inline(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def _mask_occurrences(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        return {
            _replace_all(str(k), secrets): _mask_occurrences(v, secrets) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask_occurrences(item, secrets) for item in value]
    if isinstance(value, str):
        return _replace_all(value, secrets)
    return value


def _replace_all(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
