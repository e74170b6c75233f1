"""The guards as the gateway holds them: detectors built once, run off the event loop.

The PII detector (presidio + spaCy) is built in a thread at start (a second or two) and runs
on its own single thread per request; the jailbreak detector reads the request's shared
embedding, so it costs microseconds beyond vectors the router already made.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mixroute.config.schema import GuardsConfig
from mixroute.guards.jailbreak import JailbreakDetector
from mixroute.semantic.embedding import EmbeddingEngine
from mixroute.semantic.heads import builtin_head_path

if TYPE_CHECKING:  # presidio and spaCy take most of a second to import: only when enabled
    from mixroute.guards.entities import PIIEntity
    from mixroute.guards.pii import PIIDetector


class GuardService:
    def __init__(
        self,
        settings: GuardsConfig,
        pii: PIIDetector | None,
        jailbreak: JailbreakDetector | None,
        engine: EmbeddingEngine | None,
    ) -> None:
        self.settings = settings
        self.pii = pii
        self.jailbreak = jailbreak
        self.engine = engine
        self._pii_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pii")

    @classmethod
    async def build(cls, settings: GuardsConfig, engine: EmbeddingEngine | None) -> GuardService:
        pii = None
        if settings.pii.enabled:
            from mixroute.guards.pii import PIIDetector

            pii = await asyncio.to_thread(
                PIIDetector,
                settings.pii.entities,
                settings.pii.score_threshold,
                settings.pii.names,
            )
        jailbreak = None
        if settings.jailbreak.enabled:
            assert engine is not None, "the jailbreak guard needs the embedding engine"
            jailbreak = await asyncio.to_thread(
                JailbreakDetector.load, builtin_head_path("jailbreak"), engine.model.spec.name
            )
        return cls(settings, pii, jailbreak, engine)

    def fits(self, settings: GuardsConfig) -> bool:
        return settings == self.settings

    def close(self) -> None:
        self._pii_thread.shutdown(wait=False)

    async def find_pii(self, messages: list[dict[str, Any]]) -> list[tuple[int, PIIEntity]]:
        assert self.pii is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pii_thread, self.pii.detect_messages, messages)

    async def jailbreak_score(self, texts: list[str], vectors: dict[str, Any]) -> float:
        """The highest attack probability over ``texts`` (vectors reused where given)."""
        assert self.jailbreak is not None and self.engine is not None
        best = 0.0
        for text in texts:
            if not text.strip():
                continue
            vector = vectors.get(text)
            if vector is None:
                vector = await self.engine.embed(text)
            best = max(best, self.jailbreak.score(text, vector))
        return best

    @property
    def jailbreak_threshold(self) -> float:
        assert self.jailbreak is not None
        configured = self.settings.jailbreak.threshold
        return configured if configured is not None else self.jailbreak.threshold
