"""The decision engine: rules over signal results -> a route -> a model.

Pure functions of their inputs, so a decision can be replayed and explained. Ties are
broken deterministically: higher priority, then stronger match, then route name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mixroute.config.schema import Condition, ModelConfig, RouteConfig
from mixroute.semantic.signals import SignalResults


def strength(condition: Condition, signals: SignalResults) -> float | None:
    """How strongly a condition matches (0..1), or None when it does not."""
    if condition.domain is not None:
        return signals.domains.get(condition.domain)
    if condition.keyword is not None:
        return 1.0 if signals.keywords.get(condition.keyword) else None
    if condition.embedding is not None:
        return signals.embeddings.get(condition.embedding)
    if condition.category is not None:
        return signals.categories.get(condition.category)
    if condition.context is not None:
        return 1.0 if signals.contexts.get(condition.context) else None
    if condition.all is not None:
        values = [strength(child, signals) for child in condition.all]
        return None if any(v is None for v in values) else min(v for v in values if v is not None)
    if condition.any is not None:
        matched = [v for v in (strength(c, signals) for c in condition.any) if v is not None]
        return max(matched) if matched else None
    assert condition.not_ is not None
    return 1.0 if strength(condition.not_, signals) is None else None


def matching_routes(
    routes: list[RouteConfig], signals: SignalResults
) -> list[tuple[RouteConfig, float]]:
    matched = []
    for route in routes:
        value = signals.confidence if route.when is None else strength(route.when, signals)
        if value is not None:
            matched.append((route, value))
    matched.sort(key=lambda item: (-item[0].priority, -item[1], item[0].name))
    return matched


@dataclass(slots=True)
class ModelChoice:
    model: str | None
    scores: list[tuple[str, float]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (model, reason)


def choose_model(
    route: RouteConfig,
    models: Mapping[str, ModelConfig],
    is_available: Callable[[str], bool],
    needed_tokens: int,
) -> ModelChoice:
    """The best candidate that can answer: available, long enough context, price-weighted."""
    prices = {c.model: _price(models.get(c.model)) for c in route.models}
    top_price = max(prices.values()) or 1.0
    choice = ModelChoice(model=None)
    ranked = []
    for order, candidate in enumerate(route.models):
        effective = candidate.score - route.cost_weight * prices[candidate.model] / top_price
        choice.scores.append((candidate.model, round(effective, 4)))
        ranked.append((-effective, order, candidate.model))
    for _, _, model in sorted(ranked):
        settings = models.get(model)
        if settings and settings.context_length and needed_tokens > settings.context_length:
            choice.skipped.append((model, "context_length"))
            continue
        if not is_available(model):
            choice.skipped.append((model, "no_endpoint"))
            continue
        choice.model = model
        break
    return choice


def _price(settings: ModelConfig | None) -> float:
    return settings.pricing.blended if settings and settings.pricing else 0.0
