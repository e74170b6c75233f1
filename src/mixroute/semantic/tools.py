"""Tool selection: send the model only the tools the conversation needs.

Each tool is embedded once as "name: description" (vectors are cached by the embedding
engine's LRU, so a tool list repeated across requests costs nothing after the first time)
and scored against the request's own embedding. The ``min_keep`` best tools always stay;
others must be among the ``top_k`` and reach ``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixroute.config.schema import ToolSelectionConfig
from mixroute.semantic.embedding import EmbeddingEngine, Vector


@dataclass(slots=True)
class ToolSelection:
    kept: int
    total: int
    added: int = 0

    def header(self) -> str:
        return f"{self.kept}/{self.total}"


def tool_text(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    function = tool.get("function") if tool.get("type", "function") == "function" else None
    source = function if isinstance(function, dict) else tool  # Anthropic tools are flat
    name = source.get("name")
    if not isinstance(name, str):
        return None
    description = source.get("description")
    return f"{name.replace('_', ' ')}: {description if isinstance(description, str) else ''}"


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    source = function if isinstance(function, dict) else tool
    name = source.get("name")
    return name if isinstance(name, str) else None


async def select_tools(
    body: dict[str, Any],
    vector: Vector,
    settings: ToolSelectionConfig,
    engine: EmbeddingEngine,
) -> ToolSelection | None:
    """Filter ``body["tools"]`` in place; None when the request is left alone."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not settings.enabled or choice not in (None, "auto"):
        return None
    offered = list(tools) if isinstance(tools, list) else []
    if not offered:  # the catalogue extends tool-using requests; it never adds tools to chat
        return None
    names = {_tool_name(t) for t in offered}
    extra = [t for t in settings.catalogue if _tool_name(t) not in names]
    candidates = offered + extra
    texts = [tool_text(t) for t in candidates]
    scorable = [i for i, t in enumerate(texts) if t is not None]
    if not scorable:
        return None
    vectors = await engine.embed_many([texts[i] or "" for i in scorable])
    similarity = vectors @ vector
    order = [scorable[i] for i in np.argsort(-similarity, kind="stable")]
    score = dict(zip(scorable, similarity.tolist(), strict=True))
    keep: list[int] = []
    for rank, index in enumerate(order):
        floor = rank < settings.min_keep and index < len(offered)
        if floor or (len(keep) < settings.top_k and score[index] >= settings.threshold):
            keep.append(index)
    unscorable = [i for i in range(len(offered)) if texts[i] is None]  # never drop what we
    keep.extend(unscorable)  # cannot judge
    keep.sort()
    kept_tools = [candidates[i] for i in keep]
    added = sum(1 for i in keep if i >= len(offered))
    body["tools"] = kept_tools
    return ToolSelection(kept=len(kept_tools), total=len(offered), added=added)
