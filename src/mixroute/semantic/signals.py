"""Signals: small readers of the request's one embedding (or its text).

Each signal is built once per runtime (candidate phrases are embedded at config load) and
evaluated per request in microseconds; only the request's own embedding costs real time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mixroute.config.schema import (
    CategorySignalConfig,
    ContextSignalConfig,
    DomainSignalConfig,
    EmbeddingSignalConfig,
    KeywordSignalConfig,
)
from mixroute.semantic.embedding import Matrix, Vector
from mixroute.semantic.heads import LinearHead


@dataclass(slots=True)
class SignalResults:
    """Everything the decision engine may read about one request."""

    category: str
    confidence: float
    probabilities: dict[str, float]
    domains: dict[str, float] = field(default_factory=dict)  # categories over threshold
    keywords: dict[str, bool] = field(default_factory=dict)
    embeddings: dict[str, float] = field(default_factory=dict)
    categories: dict[str, float] = field(default_factory=dict)
    contexts: dict[str, bool] = field(default_factory=dict)
    prompt_tokens: int = 0


class DomainSignal:
    """The 14 built-in MMLU-Pro categories from a trained, calibrated linear head."""

    def __init__(self, head: LinearHead, settings: DomainSignalConfig) -> None:
        self.head = head
        self._thresholds = [settings.thresholds.get(c, settings.threshold) for c in head.classes]

    def evaluate(self, vector: Vector) -> tuple[str, float, dict[str, float], dict[str, float]]:
        probabilities = self.head.probabilities(vector)
        best = int(np.argmax(probabilities))
        by_class = {c: float(p) for c, p in zip(self.head.classes, probabilities, strict=True)}
        over = {
            c: float(p)
            for c, p, t in zip(self.head.classes, probabilities, self._thresholds, strict=True)
            if p >= t
        }
        return self.head.classes[best], float(probabilities[best]), by_class, over


class KeywordSignal:
    def __init__(self, settings: KeywordSignalConfig) -> None:
        self.name = settings.name
        self._all = settings.match == "all"
        self._patterns = [
            re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)", re.IGNORECASE)
            for term in settings.terms
        ] + [re.compile(pattern) for pattern in settings.regex]

    def matches(self, text: str) -> bool:
        if self._all:
            return all(p.search(text) for p in self._patterns)
        return any(p.search(text) for p in self._patterns)


class SimilaritySignal:
    """Best cosine similarity between the request and a set of phrases.

    Serves both ``embeddings`` signals (candidate phrases) and user-defined ``categories``
    (a description and example prompts): no training, the examples are the model.
    """

    def __init__(self, name: str, threshold: float, vectors: Matrix) -> None:
        self.name = name
        self.threshold = threshold
        self._vectors = vectors

    def similarity(self, vector: Vector) -> float:
        return float(np.max(self._vectors @ vector))


class ContextSignal:
    def __init__(self, settings: ContextSignalConfig) -> None:
        self.name = settings.name
        self._min = settings.min_tokens
        self._max = settings.max_tokens

    def matches(self, tokens: int) -> bool:
        return tokens >= self._min and (self._max is None or tokens <= self._max)


Embedder = Callable[[list[str]], npt.NDArray[np.float32]]


def similarity_signals(
    embeddings: Sequence[EmbeddingSignalConfig],
    categories: Sequence[CategorySignalConfig],
    embed: Embedder,
) -> tuple[list[SimilaritySignal], list[SimilaritySignal]]:
    """Embed every candidate phrase in one batch (at config load, off the event loop)."""
    texts: list[str] = []
    spans: list[tuple[int, int]] = []
    for item in embeddings:
        spans.append((len(texts), len(texts) + len(item.candidates)))
        texts.extend(item.candidates)
    for category in categories:
        phrases = [*category.examples, *([category.description] if category.description else [])]
        spans.append((len(texts), len(texts) + len(phrases)))
        texts.extend(phrases)
    matrix = embed(texts) if texts else np.zeros((0, 0), np.float32)
    sources: list[EmbeddingSignalConfig | CategorySignalConfig] = [*embeddings, *categories]
    built = [
        SimilaritySignal(item.name, item.threshold, matrix[start:end])
        for item, (start, end) in zip(sources, spans, strict=True)
    ]
    return built[: len(embeddings)], built[len(embeddings) :]
