"""API keys: hashing, the key table and what a key is allowed to reach.

A presented key is hashed (sha256) and looked up in a dict of hashes: the work does not
depend on how much of the key matches any stored one, and the table never holds a key.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from mixroute.access.config import is_glob
from mixroute.access.limits import KeyLimiter

KEY_PREFIX = "mr-"


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe, with a prefix that makes it greppable."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class NameMatcher:
    """Exact names and globs, compiled once; ``*`` alone short-cuts to "everything"."""

    __slots__ = ("everything", "exact", "globs")

    def __init__(self, patterns: list[str], aliases: dict[str, str] | None = None) -> None:
        aliases = aliases or {}
        self.everything = "*" in patterns
        self.exact = frozenset(aliases.get(p, p) for p in patterns if not is_glob(p))
        self.globs = tuple(p for p in patterns if is_glob(p) and p != "*")

    def __call__(self, name: str) -> bool:
        if self.everything or name in self.exact:
            return True
        return any(fnmatchcase(name, g) for g in self.globs)


@dataclass(slots=True)
class Principal:
    """Who a request is on behalf of: a key, or an anonymous client."""

    name: str
    tenant: str
    priority: int
    models: NameMatcher
    routes: NameMatcher
    limiter: KeyLimiter | None
    anonymous: bool = False
    # The key's settings, to carry its limiter over a reload when they are unchanged.
    identity: tuple[str, str] = field(default=("", ""))

    def may_use(self, model: str, route: str | None) -> bool:
        if not self.models(model):
            return False
        return route is None or self.routes(route)
