"""Access control for one gateway process: who is calling, what they may use, how fast,
and how many requests each model takes at once.

Built from the config on every (re)load by ``Gateway``; the state that must outlive a
reload is carried over from the previous instance: a key's rate-limit buckets while its
hash and limits are unchanged, anonymous clients' buckets while the anonymous limits are
unchanged, and each model's admission gate (its in-flight count and its waiters) always,
with the new limits applied in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from mixroute.access.admission import AdmissionGate, QueueFull, QueueTimeout
from mixroute.access.config import (
    AccessConfig,
    AccessKeyConfig,
    check_key_targets,
    check_unique_keys,
)
from mixroute.access.errors import (
    invalid_key,
    model_not_allowed,
    queue_full,
    queue_timeout,
    rate_limited,
)
from mixroute.access.keys import NameMatcher, Principal, hash_key
from mixroute.access.limits import AddressLimiters, KeyLimiter
from mixroute.access.shared import SharedAccess, bucket_tag
from mixroute.config.loader import ConfigError, format_validation_error
from mixroute.config.schema import MixrouteConfig
from mixroute.context import RequestContext
from mixroute.semantic.router import DEFAULT_ROUTE

log = logging.getLogger(__name__)

_KEY_LIST = TypeAdapter(list[AccessKeyConfig])


def load_keys_file(path: Path) -> list[AccessKeyConfig]:
    """Read a YAML or JSON list of key objects; errors name the file and the entry."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"access.keys_file {path}: cannot read it: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"access.keys_file {path}: not valid YAML/JSON: {exc}") from exc
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(
            f"access.keys_file {path}: expected a list of key objects, got {type(raw).__name__}"
        )
    try:
        return _KEY_LIST.validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"access.keys_file {path}")) from exc


def estimate_prompt_tokens(body: Mapping[str, Any], raw: bytes) -> int:
    """About four characters per token over the text a model reads (messages, prompt,
    input); the raw body size when there is no such text. Real usage corrects it later."""
    chars = 0
    found = False
    for name in ("messages", "prompt", "input"):
        value = body.get(name)
        if value is not None:
            found = True
            chars += _text_chars(value)
    if not found:
        chars = len(raw)
    return max(1, chars // 4)


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_chars(value[k]) for k in ("content", "text") if k in value)
    return 0


class AccessControl:
    def __init__(
        self,
        settings: AccessConfig,
        keys: list[AccessKeyConfig],
        aliases: dict[str, str],
        gates: dict[str, AdmissionGate],
        previous: AccessControl | None = None,
        shared: SharedAccess | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self.key_headers = tuple(settings.key_headers)
        self.gates = gates
        self._no_gate: contextlib.nullcontext[None] = contextlib.nullcontext()
        now = time.monotonic()
        buckets = shared.buckets if shared is not None else None
        old = previous._by_hash if previous is not None else {}
        self._by_hash: dict[str, Principal] = {}
        for key in keys:
            identity = (key.name, key.hash)
            kept = old.get(key.hash)
            limiter = (
                kept.limiter
                if kept is not None
                and kept.identity == identity
                and kept.limiter is not None
                and kept.limiter.same_limits(key.rpm, key.tpm)
                else KeyLimiter(key.rpm, key.tpm, now, buckets, identity)
                if key.rpm or key.tpm
                else None
            )
            self._by_hash[key.hash] = Principal(
                name=key.name,
                tenant=key.tenant_name,
                priority=key.priority,
                models=NameMatcher(key.models, aliases),
                routes=NameMatcher(key.routes),
                limiter=limiter,
                identity=identity,
            )
        anon = settings.anonymous
        self._anonymous = Principal(
            name="anonymous",
            tenant=anon.tenant,
            priority=anon.priority,
            models=NameMatcher(anon.models, aliases),
            routes=NameMatcher(anon.routes),
            limiter=None,
            anonymous=True,
        )
        self._addresses: AddressLimiters | None = None
        if anon.allowed and (anon.rpm or anon.tpm):
            kept_addresses = previous._addresses if previous is not None else None
            self._addresses = (
                kept_addresses
                if kept_addresses is not None
                and kept_addresses.same_limits(anon.rpm, anon.tpm, anon.max_clients)
                else AddressLimiters(anon.rpm, anon.tpm, anon.max_clients, buckets)
            )

    @classmethod
    async def build(
        cls,
        config: MixrouteConfig,
        config_path: Path | None,
        previous: AccessControl | None,
        shared: SharedAccess | None = None,
    ) -> AccessControl:
        """Reads ``access.keys_file`` (off the loop) and checks its keys like the config's."""
        settings = config.access
        keys = list(settings.keys)
        aliases = config.aliases()
        if settings.enabled and settings.keys_file:
            path = Path(settings.keys_file)
            if not path.is_absolute() and config_path is not None:
                path = config_path.parent / path
            from_file = await asyncio.to_thread(load_keys_file, path)
            where = f"access.keys_file {path}"
            try:
                check_unique_keys([*keys, *from_file], f"access.keys + {where}")
                check_key_targets(
                    [(f"{where}: [{i}]", k.models, k.routes) for i, k in enumerate(from_file)],
                    config.served_models() | set(aliases),
                    set(config.routing.auto_models),
                    {r.name for r in config.routes} | {DEFAULT_ROUTE},
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            keys.extend(from_file)
        if settings.enabled and config.server.admin_key is None:
            log.warning(
                "access is enabled but server.admin_key is not set: /api/* and /admin/* "
                "answer anyone (API keys never grant admin)"
            )
        gates: dict[str, AdmissionGate] = {}
        old_gates = previous.gates if previous is not None else {}
        for model, model_settings in config.models.items():
            limit = model_settings.max_in_flight
            if limit is None:
                continue
            queue, timeout = model_settings.max_queue, model_settings.queue_timeout_s
            gate = old_gates.get(model)
            if gate is None:
                counter = (
                    shared.counters.counter(bucket_tag("in_flight", model))
                    if shared is not None
                    else None
                )
                gate = AdmissionGate(limit, queue, timeout, counter)
            else:
                gate.configure(limit, queue, timeout)
            gates[model] = gate
        return cls(settings, keys, aliases, gates, previous, shared)

    @property
    def key_count(self) -> int:
        return len(self._by_hash)

    def authenticate(self, headers: Mapping[str, str], remote: str | None) -> Principal:
        """The caller's principal, or a 401: no key (unless anonymous calls are allowed) or
        a key that matches no entry (unless ``anonymous.unknown_keys`` says otherwise)."""
        presented = self._presented_key(headers)
        anon = self.settings.anonymous
        if presented:
            principal = self._by_hash.get(hash_key(presented))
            if principal is not None:
                return principal
            if not (anon.allowed and anon.unknown_keys == "anonymous"):
                raise invalid_key(missing=False, where="")
        elif not anon.allowed:
            raise invalid_key(missing=True, where=self._where())
        if self._addresses is None:
            return self._anonymous
        limiter = self._addresses.get(remote or "")
        return dataclasses.replace(self._anonymous, limiter=limiter)

    def _where(self) -> str:
        names = [
            "Authorization: Bearer <key>" if n == "authorization" else n for n in self.key_headers
        ]
        return " or ".join(names)

    def _presented_key(self, headers: Mapping[str, str]) -> str:
        for name in self.key_headers:
            value = headers.get(name)
            if not value:
                continue
            if name == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    continue
                value = token
            value = value.strip()
            if value:
                return value
        return ""

    def admit_request(self, principal: Principal) -> None:
        """Counts the request against the caller's requests-per-minute, or raises 429."""
        limiter = principal.limiter
        if limiter is None:
            return
        refusal = limiter.admit_request(time.monotonic())
        if refusal is not None:
            raise rate_limited(refusal.kind, refusal.limit, refusal.retry_after_s)

    def admit_tokens(self, principal: Principal, ctx: RequestContext) -> None:
        """Charges the prompt estimate against tokens-per-minute (or raises 429) and arms
        the charge of the real usage when the answer ends; also marks the client's key
        headers so that they are never forwarded upstream."""
        ctx.client_key_headers = self.key_headers
        limiter = principal.limiter
        if limiter is None:
            return
        if limiter.tokens is not None:
            estimate = estimate_prompt_tokens(ctx.body, ctx.raw_body)
            refusal = limiter.admit_tokens(estimate, time.monotonic())
            if refusal is not None:
                raise rate_limited(refusal.kind, refusal.limit, refusal.retry_after_s)
            ctx.on_usage = limiter.usage_callback(estimate)
        ctx.response_headers.update(limiter.headers())

    def check_model(self, principal: Principal, ctx: RequestContext) -> None:
        """403 when the chosen model (or the route that chose it) is not the key's to use."""
        route = ctx.decision.route if ctx.decision is not None else None
        if not principal.may_use(ctx.model, route):
            raise model_not_allowed(ctx.model, route)

    def admission(
        self, model: str, principal: Principal | None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Holds one of the model's in-flight slots around the upstream call (a no-op for a
        model without ``max_in_flight``)."""
        gate = self.gates.get(model) if self.gates else None
        if gate is None:
            return self._no_gate
        return _admitted(gate, model, principal)

    async def take_slot(self, model: str, principal: Principal | None) -> AdmissionGate | None:
        """Waits for one of the model's in-flight slots (429 when the queue is full, 503 when
        the wait times out); the caller releases the returned gate when the request ends.
        None: the model has no ``max_in_flight``. For the Envoy layout, where the request
        ends in a later gRPC message rather than inside one call."""
        gate = self.gates.get(model) if self.gates else None
        if gate is not None:
            await _acquire(gate, model, principal)
        return gate


async def _acquire(gate: AdmissionGate, model: str, principal: Principal | None) -> None:
    try:
        await gate.acquire(principal.priority if principal is not None else 0)
    except QueueFull:
        raise queue_full(model) from None
    except QueueTimeout:
        raise queue_timeout(model, gate.timeout_s) from None


@contextlib.asynccontextmanager
async def _admitted(
    gate: AdmissionGate, model: str, principal: Principal | None
) -> AsyncIterator[None]:
    await _acquire(gate, model, principal)
    try:
        yield
    finally:
        gate.release()
