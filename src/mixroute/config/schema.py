"""The one configuration schema.

Everything the gateway does is decided by a ``MixrouteConfig``. It is validated once, on load,
and the runtime is built from it; no other module reads YAML or environment variables.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
POLICY_NAMES = ("round_robin", "least_outstanding", "power_of_two", "session")
PolicyName = Literal["round_robin", "least_outstanding", "power_of_two", "session"]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0)
    admin_key: str | None = Field(
        None, description="When set, /api/v1/* and /admin/* need it in x-mixroute-admin-key."
    )
    reload_interval_s: float = Field(1.0, gt=0, description="How often the file is checked.")


class TimeoutsConfig(StrictModel):
    connect_s: float = Field(5.0, gt=0)
    first_byte_s: float = Field(
        300.0,
        gt=0,
        description="Until the upstream's response headers arrive (a whole answer "
        "when not streaming).",
    )
    idle_s: float = Field(60.0, gt=0, description="Longest silence between two body chunks.")


class AuthConfig(StrictModel):
    """What the upstream sees in ``Authorization``."""

    mode: Literal["forward", "replace", "drop"] = "forward"
    api_key: str | None = None

    @model_validator(mode="after")
    def _replace_needs_key(self) -> AuthConfig:
        if self.mode == "replace" and not self.api_key:
            raise ValueError("auth.mode 'replace' needs auth.api_key")
        return self


class EndpointConfig(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    url: str
    model: str = Field(min_length=1, description="The public model name clients ask for.")
    served_model: str | None = Field(
        None,
        description="The model id the upstream expects, when it differs (llama.cpp "
        "reports a file name).",
    )
    weight: float = Field(1.0, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL like http://10.0.0.5:8000, got {url!r}")
        return url.rstrip("/")

    @property
    def upstream_model(self) -> str:
        return self.served_model or self.model


class ModelConfig(StrictModel):
    aliases: list[str] = Field(default_factory=list)
    policy: PolicyName | None = Field(None, description="Overrides balancer.policy.")


class HealthCheckConfig(StrictModel):
    enabled: bool = True
    path: str = "/health"
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    unhealthy_after: int = Field(2, ge=1, description="Consecutive failed probes.")
    healthy_after: int = Field(1, ge=1, description="Consecutive good probes.")


class CircuitBreakerConfig(StrictModel):
    """Passive ejection: failures seen on real traffic open the breaker."""

    failure_threshold: int = Field(3, ge=1, description="Consecutive failures that open it.")
    base_ejection_s: float = Field(1.0, gt=0)
    max_ejection_s: float = Field(30.0, gt=0)


class RetryConfig(StrictModel):
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_s: float = Field(0.02, ge=0)


class SessionConfig(StrictModel):
    header: str | None = "x-user-id"
    body_field: str | None = Field(None, description="e.g. 'user' (the OpenAI user field).")
    load_factor: float = Field(
        1.25,
        ge=1.0,
        description="Bounded-load: no endpoint takes more than this times the mean in-flight load.",
    )


class BalancerConfig(StrictModel):
    policy: PolicyName = "round_robin"
    session: SessionConfig = Field(default_factory=SessionConfig)
    health: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)


class RoutingConfig(StrictModel):
    auto_models: list[str] = Field(default_factory=lambda: ["MoM", "auto"])
    default_model: str | None = Field(
        None, description="Where MoM/auto requests go when no route decides."
    )


class MixrouteConfig(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> MixrouteConfig:
        names = [e.name for e in self.endpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoints: duplicate endpoint names {duplicates}")
        served = self.served_models()
        for model in self.models:
            if model not in served:
                raise ValueError(
                    f"models.{model}: no endpoint serves this model (served: {sorted(served)})"
                )
        seen: dict[str, str] = {}
        for model, settings in self.models.items():
            for alias in settings.aliases:
                if alias in served or alias in self.routing.auto_models or alias in seen:
                    raise ValueError(
                        f"models.{model}.aliases: {alias!r} is already a model, an auto model "
                        "or another alias"
                    )
                seen[alias] = model
        auto_clash = set(self.routing.auto_models) & served
        if auto_clash:
            raise ValueError(
                f"routing.auto_models: {sorted(auto_clash)} is also served by an endpoint"
            )
        default = self.routing.default_model
        if default is not None and default not in served and default not in seen:
            raise ValueError(
                f"routing.default_model: {default!r} is not served by any endpoint "
                f"(served: {sorted(served)})"
            )
        return self

    def served_models(self) -> set[str]:
        return {e.model for e in self.endpoints}

    def aliases(self) -> dict[str, str]:
        return {a: m for m, s in self.models.items() for a in s.aliases}
