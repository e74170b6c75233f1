"""The semantic router: text -> one embedding -> signals -> decision -> body changes.

One object per runtime, built from config (candidate phrases embedded at load). The
embedding engine and the trained head are shared across reloads; they are the expensive
parts and change only with the embedding config.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mixroute.config.schema import MixrouteConfig, RouteConfig
from mixroute.observability.tracing import NO_TRACE, RequestTrace
from mixroute.semantic.decision import choose_model, matching_routes
from mixroute.semantic.embedding import EmbeddingEngine, Vector
from mixroute.semantic.heads import LinearHead
from mixroute.semantic.mutate import apply_reasoning, apply_system_prompt
from mixroute.semantic.signals import (
    ContextSignal,
    DomainSignal,
    KeywordSignal,
    SignalResults,
    similarity_signals,
)
from mixroute.semantic.text import classification_text, extract_conversation
from mixroute.semantic.tools import ToolSelection, select_tools

DEFAULT_ROUTE = "default"


@dataclass(slots=True)
class RoutingOutcome:
    """A decision with everything needed to apply and explain it."""

    model: str | None
    route: RouteConfig | None
    route_name: str
    route_strength: float
    signals: SignalResults
    vector: Vector
    text: str = ""
    candidates: list[tuple[str, float]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    matched_routes: list[str] = field(default_factory=list)
    tools: ToolSelection | None = None
    elapsed_ms: float = 0.0

    @property
    def reasoning(self) -> bool:
        return bool(self.route and self.route.reasoning and self.route.reasoning.enabled)


class SemanticRouter:
    def __init__(
        self,
        config: MixrouteConfig,
        engine: EmbeddingEngine,
        domain: DomainSignal,
        embeddings: list[Any],
        categories: list[Any],
    ) -> None:
        self._config = config
        self.engine = engine
        self.domain = domain
        self._keywords = [KeywordSignal(k) for k in config.signals.keywords]
        self._embeddings = embeddings
        self._categories = categories
        self._contexts = [ContextSignal(c) for c in config.signals.context]
        self._conversation = config.semantic.conversation

    @classmethod
    async def build(
        cls, config: MixrouteConfig, engine: EmbeddingEngine, head: LinearHead
    ) -> SemanticRouter:
        embeddings, categories = await asyncio.to_thread(
            similarity_signals,
            config.signals.embeddings,
            config.signals.categories,
            engine.embed_now,
        )
        domain = DomainSignal(head, config.signals.domain)
        return cls(config, engine, domain, embeddings, categories)

    async def signals_for_text(
        self, text: str, all_text: str | None = None, trace: RequestTrace = NO_TRACE
    ) -> tuple[SignalResults, Vector]:
        with trace.span("mixroute.signal.embedding"):
            vector = await self.engine.embed(text)
        with trace.span("mixroute.signal.domain") as span:
            category, confidence, probabilities, over = self.domain.evaluate(vector)
            span.set_attribute("mixroute.category", category)
        with trace.span("mixroute.signal.keywords") as span:
            keywords = {k.name: k.matches(text) for k in self._keywords}
            span.set_attribute("mixroute.matched", [n for n, hit in keywords.items() if hit])
        with trace.span("mixroute.signal.context") as span:
            tokenizer_count = self.engine.model.count_tokens
            tokens = tokenizer_count(all_text) if all_text is not None else tokenizer_count(text)
            contexts = {c.name: c.matches(tokens) for c in self._contexts}
            span.set_attribute("mixroute.prompt_tokens", tokens)
        results = SignalResults(
            category=category,
            confidence=confidence,
            probabilities=probabilities,
            domains=over,
            keywords=keywords,
            prompt_tokens=tokens,
            contexts=contexts,
        )
        with trace.span("mixroute.signal.similarity") as span:
            for signal in self._embeddings:
                value = signal.similarity(vector)
                if value >= signal.threshold:
                    results.embeddings[signal.name] = value
            for signal in self._categories:
                value = signal.similarity(vector)
                if value >= signal.threshold:
                    results.categories[signal.name] = value
            span.set_attribute("mixroute.matched", [*results.embeddings, *results.categories])
        return results, vector

    async def decide(
        self,
        kind: str,
        path: str,
        body: dict[str, Any],
        is_available: Callable[[str], bool],
        trace: RequestTrace = NO_TRACE,
    ) -> RoutingOutcome:
        started = time.perf_counter()
        conversation = extract_conversation(kind, path, body)
        text = classification_text(
            conversation,
            self._conversation.user_turns,
            self._conversation.followup_max_tokens,
            self.engine.model.count_tokens,
        )
        signals, vector = await self.signals_for_text(text, conversation.all_text(), trace)
        needed = signals.prompt_tokens + _requested_output(body)
        outcome = RoutingOutcome(
            model=None,
            route=None,
            route_name=DEFAULT_ROUTE,
            route_strength=signals.confidence,
            signals=signals,
            vector=vector,
            text=text,
        )
        matched = matching_routes(self._config.routes, signals)
        outcome.matched_routes = [route.name for route, _ in matched]
        for route, value in matched:
            choice = choose_model(route, self._config.models, is_available, needed)
            outcome.candidates = choice.scores
            outcome.skipped.extend(choice.skipped)
            if choice.model is not None:
                outcome.model, outcome.route = choice.model, route
                outcome.route_name, outcome.route_strength = route.name, value
                break
        if outcome.model is None:
            default = self._config.routing.default_model
            outcome.model = self._config.aliases().get(default or "", default)
        outcome.elapsed_ms = (time.perf_counter() - started) * 1000
        return outcome

    async def apply(self, outcome: RoutingOutcome, path: str, body: dict[str, Any]) -> None:
        """Make the body what the chosen model should receive."""
        route = outcome.route
        if route is None:
            return
        if route.system_prompt is not None:
            apply_system_prompt(body, path, route.system_prompt)
        if route.reasoning is not None and outcome.model is not None:
            settings = self._config.models.get(outcome.model)
            apply_reasoning(body, settings.reasoning_family if settings else None, route.reasoning)
        tool_settings = route.tools or None
        if tool_settings is not None and "tools" in body:
            outcome.tools = await select_tools(body, outcome.vector, tool_settings, self.engine)


def _requested_output(body: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0
