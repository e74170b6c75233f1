"""Secrets out of the active config before the dashboard shows it.

Redaction is by field name, not by a list of known fields, so a section added later (API
keys, another backend's credentials) is covered without anyone remembering to extend a
list: a field whose name says key, secret, password, token, credential, authorization or DSN
has its string values replaced. Counts such as ``max_tokens`` are not names of secrets and
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
    return lowered.split("_")[-1] in _SECRET_LAST_PARTS


def redact_config(data: Any) -> Any:
    """A copy of a JSON-shaped config with every secret replaced by ``***``."""
    found: set[str] = set()
    cleaned = _walk(data, secret=False, found=found)
    # Longest first, so a secret that contains another is masked whole.
    leaked = sorted((s for s in found if len(s) >= 6), key=len, reverse=True)
    return _mask_occurrences(cleaned, leaked) if leaked else cleaned


def _walk(value: Any, *, secret: bool, found: set[str], direct: bool = False) -> Any:
    """``direct``: this value is the one a secret-named field holds, so a mapping here may
    be keyed by the secrets themselves (a list of objects under it keeps its field names)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            name = str(key)
            if secret and direct:
                found.add(name)
                name = f"{MASK}{index + 1}"
            named_secret = is_secret_name(str(key))
            out[name] = _walk(item, secret=secret or named_secret, found=found, direct=named_secret)
        return out
    if isinstance(value, list):
        return [_walk(item, secret=secret, found=found) for item in value]
    if isinstance(value, str):
        if secret:
            found.add(value)
            return MASK if value else value
        return _mask_inline(value)
    return value


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
