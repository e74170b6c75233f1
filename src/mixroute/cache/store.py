"""The interface every cache backend implements, and what it stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mixroute.cache.key import CacheRequest
from mixroute.semantic.embedding import Vector


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A complete chat answer, normalized so it can be replayed as JSON or as SSE."""

    model: str
    content: str
    finish_reason: str
    usage: dict[str, Any] | None
    tool_calls: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "content": self.content,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "tool_calls": self.tool_calls,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachedAnswer:
        return cls(
            model=str(data["model"]),
            content=str(data.get("content") or ""),
            finish_reason=str(data.get("finish_reason") or "stop"),
            usage=data.get("usage"),
            tool_calls=data.get("tool_calls"),
        )


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: CachedAnswer
    similarity: float
    exact: bool


class SemanticCache(Protocol):
    """Backends: ``MemoryCache`` (one process) and ``PgvectorCache`` (shared)."""

    async def lookup(
        self, request: CacheRequest, vector: Vector, threshold: float
    ) -> CacheHit | None: ...

    async def store(self, request: CacheRequest, vector: Vector, answer: CachedAnswer) -> None: ...

    async def close(self) -> None: ...

    def size(self) -> int: ...
