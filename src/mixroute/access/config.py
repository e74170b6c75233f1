"""The ``access`` config section: API keys, tenants, per-key limits (docs/config.md).

Keys are stored hashed (``sha256:<hex>``): the config file and the keys file can be read by
whoever deploys the gateway, so they must not be enough to call it. The key objects are the
same in the config and in ``access.keys_file``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HASH_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
_GLOB_CHARS = frozenset("*?[")
_PLAINTEXT_FIELDS = ("key", "api_key", "secret", "token", "plaintext")


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


class _Strict(BaseModel):
    """Unknown keys are errors, as everywhere in the config (see config/schema.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AccessKeyConfig(_Strict):
    """One API key: who it is (name, tenant), what it may reach and how fast."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:@-]+$")
    hash: str = Field(description="sha256:<64 hex digits> of the key (mixroute keys new).")
    tenant: str | None = Field(
        None, min_length=1, description="Tenant (and semantic-cache scope); default: the name."
    )
    models: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Public model names or globs this key may reach (after alias resolution "
        "and after MoM/auto routing).",
    )
    routes: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Route names or globs a MoM/auto decision may take for this key.",
    )
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")
    priority: int = Field(0, description="Higher goes first in a model's admission queue.")

    @model_validator(mode="before")
    @classmethod
    def _no_plaintext(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [f for f in _PLAINTEXT_FIELDS if f in data]
            if given:
                raise ValueError(
                    f"plaintext key field {given[0]!r} is not accepted: store only "
                    "`hash: sha256:<hex>` (`mixroute keys new` prints a key and its hash, "
                    "`mixroute keys hash` hashes an existing key)"
                )
        return data

    @field_validator("hash")
    @classmethod
    def _hashed(cls, value: str) -> str:
        value = value.strip()
        lowered = value.lower()
        if not HASH_PATTERN.match(lowered):
            raise ValueError(
                "expected sha256:<64 hex digits>; never put the key itself in a config file "
                "(`mixroute keys hash` prints the hash of a key)"
            )
        return lowered

    @property
    def tenant_name(self) -> str:
        return self.tenant or self.name


class AnonymousConfig(_Strict):
    """Requests that present no key, when ``allowed``; limits apply per client address."""

    allowed: bool = False
    unknown_keys: Literal["reject", "anonymous"] = Field(
        "reject",
        description="A key that matches no entry: 401 (reject), or served as anonymous "
        "(demos where SDKs send a placeholder key).",
    )
    tenant: str = Field("anonymous", min_length=1)
    models: list[str] = Field(default_factory=lambda: ["*"])
    routes: list[str] = Field(default_factory=lambda: ["*"])
    rpm: int | None = Field(None, ge=1, description="Per client address.")
    tpm: int | None = Field(None, ge=1, description="Per client address.")
    priority: int = 0
    max_clients: int = Field(
        10_000, ge=1, description="Client addresses whose limits are tracked (LRU)."
    )


class AccessConfig(_Strict):
    enabled: bool = Field(False, description="Off: no key is asked for and nothing is limited.")
    keys: list[AccessKeyConfig] = Field(default_factory=list)
    keys_file: str | None = Field(
        None,
        description="YAML or JSON list of key objects, read with the config (a relative path "
        "is relative to the config file).",
    )
    key_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "x-api-key"],
        min_length=1,
        description="Where a client's key is read from, in order; `authorization` takes "
        "`Bearer <key>`. These headers are never forwarded upstream while access is on.",
    )
    anonymous: AnonymousConfig = Field(default_factory=AnonymousConfig)

    @field_validator("key_headers")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]

    @model_validator(mode="after")
    def _unique(self) -> AccessConfig:
        check_unique_keys(self.keys, "access.keys")
        return self


def check_unique_keys(keys: Sequence[AccessKeyConfig], where: str) -> None:
    """Two entries with one name or one hash would make lookups ambiguous."""
    for attr in ("name", "hash"):
        values = [getattr(k, attr) for k in keys]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            shown = repeated if attr == "name" else [f"{v[:15]}..." for v in repeated]
            raise ValueError(f"{where}: duplicate key {attr}s {shown}")


def check_key_targets(
    keys: Iterable[tuple[str, list[str], list[str]]],
    known_models: set[str],
    auto_models: set[str],
    route_names: set[str],
) -> None:
    """Every exact model/route a key names must exist: a typo would silently lock a key out.

    ``keys`` holds (path of the entry, models, routes); errors name ``<path>.models``.
    """
    for where, models, routes in keys:
        for model in models:
            if is_glob(model):
                continue
            if model in auto_models:
                raise ValueError(
                    f"{where}.models: {model!r} is an auto model; list the models its routes "
                    "may choose (MoM/auto itself is always accepted, its decision is checked)"
                )
            if model not in known_models:
                raise ValueError(
                    f"{where}.models: {model!r} is not served by any endpoint "
                    f"(served: {sorted(known_models)})"
                )
        for route in routes:
            if not is_glob(route) and route not in route_names:
                raise ValueError(
                    f"{where}.routes: unknown route {route!r} (routes: {sorted(route_names)})"
                )
