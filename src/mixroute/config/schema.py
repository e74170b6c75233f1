"""The one configuration schema.

Everything the gateway does is decided by a ``MixrouteConfig``. It is validated once, on load,
and the runtime is built from it; no other module reads YAML or environment variables.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mixroute.access.config import AccessConfig, check_key_targets
from mixroute.balancer.discovery.config import KubernetesDiscoveryConfig
from mixroute.observability.config import ObservabilityConfig

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
POLICY_NAMES = (
    "round_robin",
    "least_outstanding",
    "power_of_two",
    "session",
    "prefix",
    "load_aware",
    "kv_aware",
)
PolicyName = Literal[
    "round_robin",
    "least_outstanding",
    "power_of_two",
    "session",
    "prefix",
    "load_aware",
    "kv_aware",
]


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
    drain_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM/SIGINT: how long requests and streams in flight may take to "
        "finish after the listener closed; what is left then is cut.",
    )
    dashboard: bool = Field(
        True, description="Serve the web dashboard at /dashboard (its data APIs need admin_key)."
    )


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
    api_key: str | None = Field(None, repr=False)  # never in logs or error messages

    @model_validator(mode="after")
    def _replace_needs_key(self) -> AuthConfig:
        if self.mode == "replace" and not self.api_key:
            raise ValueError("auth.mode 'replace' needs auth.api_key")
        return self


class KVEventsConfig(StrictModel):
    """Where an engine publishes its KV-cache events (vLLM's ZMQ publisher; docs/kv-events.md)."""

    pub: str = Field(description="The PUB socket, e.g. tcp://10.0.0.5:5557.")
    replay: str | None = Field(None, description="The replay (ROUTER) socket, for gaps.")
    topic: str = ""
    block_size: int = Field(16, ge=1, description="The engine's KV block size in tokens.")


class TokenizerConfig(StrictModel):
    """The engine's tokenizer, needed to match requests against KV events exactly."""

    kind: Literal["hf", "sim"] = Field(description="hf: a tokenizer.json; sim: the simulator's.")
    path: str | None = None
    template: Literal["chatml", "llama3"] = "chatml"

    @model_validator(mode="after")
    def _path_for_hf(self) -> TokenizerConfig:
        if self.kind == "hf" and not self.path:
            raise ValueError("tokenizer kind 'hf' needs path (a tokenizer.json)")
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
    kv_events: KVEventsConfig | None = None
    role: Literal["both", "prefill", "decode"] = Field(
        "both",
        description="Disaggregated serving: a model with prefill endpoints sends each "
        "request to a prefill endpoint first, then to a decode endpoint (docs/balancer.md).",
    )

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


class PricingConfig(StrictModel):
    prompt_per_million: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    completion_per_million: float = Field(0.0, ge=0)

    @property
    def blended(self) -> float:
        return self.prompt_per_million + self.completion_per_million


class ModelConfig(StrictModel):
    aliases: list[str] = Field(default_factory=list)
    policy: PolicyName | None = Field(None, description="Overrides balancer.policy.")
    reasoning_family: Literal["qwen3", "deepseek", "gpt-oss"] | None = Field(
        None, description="How this model's reasoning switch is spelled in a request."
    )
    context_length: int | None = Field(None, gt=0, description="Prompt + output tokens.")
    pricing: PricingConfig | None = None
    tokenizer: TokenizerConfig | None = Field(
        None, description="The engine's tokenizer, for exact KV-event prefix matching."
    )
    pii_allowed: list[str] = Field(
        default_factory=list,
        description='PII types this model may receive ("*": all), '
        "e.g. a model that runs on your own hardware.",
    )
    max_in_flight: int | None = Field(
        None, ge=1, description="Admission: requests of this model upstream at once."
    )
    max_queue: int = Field(
        100, ge=0, description="Admission: requests waiting beyond max_in_flight (then 429)."
    )
    queue_timeout_s: float = Field(
        30.0, gt=0, description="Admission: longest wait in the queue (then 503)."
    )


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


class ScorerWeightsConfig(StrictModel):
    """Weights of the scorers the load- and cache-aware policies add up (docs/balancer.md)."""

    prefix: float = Field(2.0, ge=0)
    queue: float = Field(1.0, ge=0)
    kv: float = Field(0.5, ge=0)
    in_flight: float = Field(1.0, ge=0)


class PrefixRoutingConfig(StrictModel):
    block_chars: int = Field(256, ge=16, description="Characters per prompt block (~64 tokens).")
    max_blocks: int = Field(256, ge=1, description="Leading blocks of a prompt considered.")
    min_match_blocks: int = Field(
        2, ge=1, description="Below this many matched blocks, load alone decides."
    )
    max_index_blocks: int = Field(200_000, ge=1, description="Bound of the prefix index.")
    load_factor: float = Field(
        1.5, ge=1.0, description="Bounded load: no endpoint above this times the mean in-flight."
    )


class SaturationConfig(StrictModel):
    max_waiting: float = Field(
        32,
        ge=0,
        description="Engine queue length that rules out an "
        "endpoint (unless every endpoint is past it).",
    )
    max_kv_usage: float = Field(0.97, ge=0, le=1)


class EngineStatsConfig(StrictModel):
    enabled: bool | None = Field(
        None, description="Default: when the policy reads them (load_aware, kv_aware)."
    )
    interval_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(1.0, gt=0)
    path: str = "/metrics"


class BalancerConfig(StrictModel):
    policy: PolicyName = "round_robin"
    session: SessionConfig = Field(default_factory=SessionConfig)
    health: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    weights: ScorerWeightsConfig = Field(default_factory=ScorerWeightsConfig)
    prefix: PrefixRoutingConfig = Field(default_factory=PrefixRoutingConfig)
    saturation: SaturationConfig = Field(default_factory=SaturationConfig)
    stats: EngineStatsConfig = Field(default_factory=EngineStatsConfig)


class RoutingConfig(StrictModel):
    auto_models: list[str] = Field(default_factory=lambda: ["MoM", "auto"])
    default_model: str | None = Field(
        None, description="Where MoM/auto requests go when no route decides."
    )


DOMAIN_LABELS = (
    "biology",
    "business",
    "chemistry",
    "computer science",
    "economics",
    "engineering",
    "health",
    "history",
    "law",
    "math",
    "philosophy",
    "physics",
    "psychology",
    "other",
)


class CustomEmbeddingModelConfig(StrictModel):
    name: str
    onnx: str = Field(description="Path of a BERT-style ONNX model.")
    tokenizer: str = Field(description="Path of its tokenizer.json.")
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_tokens: int = Field(256, gt=0)


class EmbeddingConfig(StrictModel):
    model: Literal["builtin"] | CustomEmbeddingModelConfig = "builtin"
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads.")
    cache_size: int = Field(4096, ge=0, description="Recent texts whose vectors are kept.")


class ConversationConfig(StrictModel):
    """Which text the signals read (see docs/routing.md, "What is classified")."""

    user_turns: int = Field(3, ge=1, le=20, description="Most recent user turns considered.")
    followup_max_tokens: int = Field(
        24,
        ge=0,
        description="A last user turn shorter than this is a follow-up: earlier "
        "user turns are classified with it.",
    )


class DomainSignalConfig(StrictModel):
    threshold: float = Field(0.5, ge=0, le=1, description="Calibrated confidence needed.")
    thresholds: dict[str, float] = Field(default_factory=dict)
    head: str | None = Field(None, description="A head .npz trained with `mixroute train`.")

    @field_validator("thresholds")
    @classmethod
    def _known_categories(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DOMAIN_LABELS))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; expected some of {DOMAIN_LABELS}")
        return value


class KeywordSignalConfig(StrictModel):
    name: str
    terms: list[str] = Field(
        default_factory=list,
        description="Words or phrases, matched case-insensitively on word boundaries.",
    )
    regex: list[str] = Field(default_factory=list)
    match: Literal["any", "all"] = "any"

    @model_validator(mode="after")
    def _something_to_match(self) -> KeywordSignalConfig:
        if not self.terms and not self.regex:
            raise ValueError("a keyword signal needs terms or regex")
        for pattern in self.regex:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile: {exc}") from exc
        return self


class EmbeddingSignalConfig(StrictModel):
    name: str
    candidates: list[str] = Field(min_length=1)
    threshold: float = Field(0.5, ge=-1, le=1)


class ContextSignalConfig(StrictModel):
    name: str
    min_tokens: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, gt=0)


class CategorySignalConfig(StrictModel):
    """A user-defined category: a description and example prompts, no retraining."""

    name: str
    description: str = ""
    examples: list[str] = Field(min_length=1)
    threshold: float = Field(0.5, ge=-1, le=1)


class SignalsConfig(StrictModel):
    domain: DomainSignalConfig = Field(default_factory=DomainSignalConfig)
    keywords: list[KeywordSignalConfig] = Field(default_factory=list)
    embeddings: list[EmbeddingSignalConfig] = Field(default_factory=list)
    context: list[ContextSignalConfig] = Field(default_factory=list)
    categories: list[CategorySignalConfig] = Field(default_factory=list)

    def names(self) -> dict[str, set[str]]:
        return {
            "keyword": {s.name for s in self.keywords},
            "embedding": {s.name for s in self.embeddings},
            "context": {s.name for s in self.context},
            "category": {s.name for s in self.categories},
        }


class Condition(StrictModel):
    """One node of a route's rule: exactly one signal match or one of all / any / not."""

    domain: str | None = None
    keyword: str | None = None
    embedding: str | None = None
    context: str | None = None
    category: str | None = None
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(None, alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        given = [
            k
            for k in ("domain", "keyword", "embedding", "context", "category", "all", "any", "not_")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "a condition has exactly one of domain, keyword, embedding, context, category, "
                f"all, any, not (got {[g.rstrip('_') for g in given] or 'none'})"
            )
        if self.domain is not None and self.domain not in DOMAIN_LABELS:
            raise ValueError(f"domain {self.domain!r} is not one of {DOMAIN_LABELS}")
        for branch in (self.all, self.any):
            if branch is not None and not branch:
                raise ValueError("all/any need at least one condition")
        return self

    def references(self) -> list[tuple[str, str]]:
        """Every (signal kind, name) this condition reads, recursively."""
        found = [
            (kind, getattr(self, kind))
            for kind in ("keyword", "embedding", "context", "category")
            if getattr(self, kind) is not None
        ]
        for child in [*(self.all or []), *(self.any or []), *([self.not_] if self.not_ else [])]:
            found.extend(child.references())
        return found


class CandidateModel(StrictModel):
    model: str
    score: float = Field(1.0, ge=0, le=1)


class ReasoningConfig(StrictModel):
    enabled: bool
    effort: Literal["low", "medium", "high"] = "medium"


class SystemPromptConfig(StrictModel):
    text: str = Field(min_length=1)
    mode: Literal["insert", "replace"] = "insert"


class ToolSelectionConfig(StrictModel):
    enabled: bool = False
    top_k: int = Field(5, ge=1)
    threshold: float = Field(
        0.2, ge=-1, le=1, description="Similarity a tool needs beyond the floor."
    )
    min_keep: int = Field(2, ge=1, description="Floor: the best tools kept whatever their score.")
    catalogue: list[dict[str, Any]] = Field(
        default_factory=list, description="OpenAI tool definitions that may be added when relevant."
    )


class RouteCacheConfig(StrictModel):
    """Per-route cache settings; unset fields inherit the global ``cache`` section."""

    enabled: bool | None = None
    similarity_threshold: float | None = Field(None, ge=0, le=1)
    allow_sampled: bool | None = None


PII_TYPES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IP_ADDRESS",
    "IBAN_CODE",
    "PERSON",
    "LOCATION",
    "STREET_ADDRESS",
    "URL",
)


class PIIPolicyConfig(StrictModel):
    """What happens when a request carries PII its target model may not receive."""

    action: Literal["block", "redact", "reroute", "flag", "off"] | None = None
    reroute_to: str | None = Field(
        None,
        description="Model for `reroute` (default: the "
        "first model whose pii_allowed covers the request).",
    )
    output: Literal["off", "flag", "mask"] | None = None


class JailbreakPolicyConfig(StrictModel):
    action: Literal["block", "flag", "off"] | None = None
    threshold: float | None = Field(None, ge=0, le=1)


class RouteGuardsConfig(StrictModel):
    pii: PIIPolicyConfig | None = None
    jailbreak: JailbreakPolicyConfig | None = None


class RouteConfig(StrictModel):
    name: str = Field(min_length=1)
    priority: int = 0
    when: Condition | None = Field(
        None,
        description="Omitted: a catch-all that matches every request (give it the "
        "lowest priority).",
    )
    models: list[CandidateModel] = Field(min_length=1)
    cost_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="0 ignores prices; 1 lets the "
        "cheapest candidate win unless scores differ a lot.",
    )
    reasoning: ReasoningConfig | None = None
    system_prompt: SystemPromptConfig | None = None
    tools: ToolSelectionConfig | None = None
    cache: RouteCacheConfig | None = None
    guards: RouteGuardsConfig | None = None


class SemanticConfig(StrictModel):
    enabled: bool | None = Field(
        None, description="Load the embedding model; default: when routes or signals exist."
    )
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)


class PgvectorConfig(StrictModel):
    dsn: str = Field(description="postgresql:// URI; the role needs CREATE on first use.")
    table: str = Field("mixroute_cache", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    pool_size: int = Field(4, ge=1, le=64)


class CacheConfig(StrictModel):
    enabled: bool = False
    backend: Literal["memory", "pgvector"] = "memory"
    max_entries: int = Field(10_000, ge=1)
    ttl_s: float = Field(3600.0, gt=0)
    similarity_threshold: float = Field(
        0.82, ge=0, le=1, description="Chosen on the dev split of data/cache (docs/cache.md)."
    )
    second_check: bool = Field(
        True, description="Numbers, entities, negation, units and code language must agree."
    )
    turns: int = Field(
        3,
        ge=1,
        le=50,
        description="Conversation turns (of any role) before the last user "
        "turn that must match exactly.",
    )
    sampling_params: list[str] = Field(
        default_factory=lambda: [
            "temperature",
            "top_p",
            "top_k",
            "max_tokens",
            "max_completion_tokens",
            "seed",
            "stop",
            "presence_penalty",
            "frequency_penalty",
            "n",
            "response_format",
            "logit_bias",
            "reasoning_effort",
            "chat_template_kwargs",
        ],
        description="Request fields that change the answer and so are part of the key.",
    )
    allow_sampled: bool = Field(
        True, description="Serve requests with temperature > 0 (or unset) from the cache."
    )
    store_tool_calls: bool = False
    hnsw_above: int = Field(
        20_000, ge=1, description="A scope with more entries than this uses an HNSW index."
    )
    hnsw_ef_search: int = Field(128, ge=1, description="Recall@1 0.99 at 100k (benchmarks).")
    timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="A lookup or store that takes longer is given up: a miss, never an error.",
    )
    pgvector: PgvectorConfig | None = None

    @model_validator(mode="after")
    def _backend_settings(self) -> CacheConfig:
        if self.backend == "pgvector" and self.pgvector is None:
            raise ValueError("backend 'pgvector' needs cache.pgvector.dsn")
        return self


class PIIGuardConfig(StrictModel):
    enabled: bool = False
    entities: list[str] = Field(default_factory=lambda: [t for t in PII_TYPES if t != "URL"])
    score_threshold: float = Field(0.5, ge=0, le=1)
    names: bool = Field(
        True,
        description="Detect PERSON/LOCATION with spaCy (only when a "
        "cheap pre-filter says a name may be present).",
    )
    action: Literal["block", "redact", "reroute", "flag", "off"] = "flag"
    reroute_to: str | None = None
    output: Literal["off", "flag", "mask"] = Field(
        "off",
        description="Scan non-streamed answers for PII the model produced: flag it in "
        "x-mixroute-pii-output, or mask it.",
    )
    block_with: Literal["completion", "error"] = Field(
        "completion",
        description="A refusal as a chat completion (finish_reason "
        "content_filter; SSE when streaming), or a 400 error.",
    )

    @field_validator("entities")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(PII_TYPES))
        if unknown:
            raise ValueError(f"unknown PII types {unknown}; expected some of {PII_TYPES}")
        return value


class JailbreakGuardConfig(StrictModel):
    enabled: bool = False
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Default: the head's recommended threshold (90% recall on training data).",
    )
    action: Literal["block", "flag", "off"] = "block"
    on_error: Literal["open", "closed"] = Field(
        "open",
        description="If the detector fails: let the request through (open) or block it (closed).",
    )
    turns: int = Field(
        4,
        ge=1,
        le=50,
        description="Recent user and tool messages scanned, so "
        "an attack earlier in the conversation is still seen.",
    )
    block_with: Literal["completion", "error"] = "completion"


class GuardsConfig(StrictModel):
    pii: PIIGuardConfig = Field(default_factory=PIIGuardConfig)
    jailbreak: JailbreakGuardConfig = Field(default_factory=JailbreakGuardConfig)


class DiscoveryConfig(StrictModel):
    """Sources that add endpoints at run time (docs/balancer.md, Discovery)."""

    kubernetes: KubernetesDiscoveryConfig | None = None


class MixrouteConfig(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    routes: list[RouteConfig] = Field(default_factory=list)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)

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
        self._check_signals_and_routes(served | set(seen))
        self._check_guards(served)
        check_key_targets(
            [(f"access.keys[{i}]", k.models, k.routes) for i, k in enumerate(self.access.keys)]
            + [("access.anonymous", self.access.anonymous.models, self.access.anonymous.routes)],
            served | set(seen),
            set(self.routing.auto_models),
            {r.name for r in self.routes} | {"default"},
        )
        return self

    def _check_signals_and_routes(self, known_models: set[str]) -> None:
        declared = self.signals.names()
        for kind, items in (
            ("keywords", self.signals.keywords),
            ("embeddings", self.signals.embeddings),
            ("context", self.signals.context),
            ("categories", self.signals.categories),
        ):
            names = [item.name for item in items]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"signals.{kind}: duplicate names {repeated}")
        route_names = [r.name for r in self.routes]
        repeated = sorted({n for n in route_names if route_names.count(n) > 1})
        if repeated:
            raise ValueError(f"routes: duplicate route names {repeated}")
        for index, route in enumerate(self.routes):
            where = f"routes[{index}] ({route.name})"
            for kind, name in route.when.references() if route.when else []:
                if name not in declared[kind]:
                    raise ValueError(
                        f"{where}.when: unknown {kind} signal {name!r}; declared: "
                        f"{sorted(declared[kind]) or 'none'} (this route could never match)"
                    )
            for candidate in route.models:
                if candidate.model not in known_models:
                    raise ValueError(
                        f"{where}.models: {candidate.model!r} is not served by any endpoint "
                        f"(served: {sorted(known_models)})"
                    )

    def _check_guards(self, known_models: set[str]) -> None:
        for name, settings in self.models.items():
            unknown = sorted(set(settings.pii_allowed) - set(PII_TYPES) - {"*"})
            if unknown:
                raise ValueError(f"models.{name}.pii_allowed: unknown PII types {unknown}")
        targets = [("guards.pii.reroute_to", self.guards.pii.reroute_to)] + [
            (f"routes ({r.name}).guards.pii.reroute_to", r.guards.pii.reroute_to)
            for r in self.routes
            if r.guards and r.guards.pii
        ]
        for where, model in targets:
            if model is not None and model not in known_models:
                raise ValueError(f"{where}: {model!r} is not served by any endpoint")

    def semantic_enabled(self) -> bool:
        if self.semantic.enabled is not None:
            return self.semantic.enabled
        signals = self.signals
        return bool(
            self.routes
            or signals.keywords
            or signals.embeddings
            or signals.categories
            or self.cache.enabled
            or self.guards.jailbreak.enabled
        )

    def served_models(self) -> set[str]:
        served = {e.model for e in self.endpoints}
        if self.discovery.kubernetes is not None:
            # Discovered endpoints appear at run time: models declared under `models:` count
            # as served, so aliases, routes and the default model may name them.
            served |= set(self.models)
        return served

    def aliases(self) -> dict[str, str]:
        return {a: m for m, s in self.models.items() for a in s.aliases}
