"""Load the expensive semantic parts (embedding model, trained heads) once per process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mixroute.config.schema import EmbeddingConfig, SignalsConfig
from mixroute.semantic.embedding import (
    EmbeddingEngine,
    EmbeddingModel,
    EmbeddingModelSpec,
    builtin_minilm,
)
from mixroute.semantic.heads import LinearHead, builtin_head_path


@dataclass
class SemanticAssets:
    engine: EmbeddingEngine
    domain_head: LinearHead
    embedding_config: EmbeddingConfig
    head_path: Path

    def fits(self, embedding: EmbeddingConfig, signals: SignalsConfig) -> bool:
        return embedding == self.embedding_config and _head_path(signals) == self.head_path

    def close(self) -> None:
        self.engine.close()


def _spec(config: EmbeddingConfig) -> EmbeddingModelSpec:
    if config.model == "builtin":
        return builtin_minilm()
    custom = config.model
    return EmbeddingModelSpec(
        name=custom.name,
        onnx_path=Path(custom.onnx),
        tokenizer_path=Path(custom.tokenizer),
        pooling=custom.pooling,
        normalize=custom.normalize,
        max_tokens=custom.max_tokens,
    )


def _head_path(signals: SignalsConfig) -> Path:
    return Path(signals.domain.head) if signals.domain.head else builtin_head_path("domain")


def load_assets(embedding: EmbeddingConfig, signals: SignalsConfig) -> SemanticAssets:
    """Blocking (model load, file hashing): call it from a thread."""
    model = EmbeddingModel(_spec(embedding), threads=embedding.threads)
    head_path = _head_path(signals)
    head = LinearHead.load(head_path, embedding_model=model.spec.name)
    return SemanticAssets(
        engine=EmbeddingEngine(model, cache_size=embedding.cache_size),
        domain_head=head,
        embedding_config=embedding,
        head_path=head_path,
    )
