"""Tool selection on the project's own set (``data/tools``): does the tool that should be
called survive the filter, and how many prompt tokens do the dropped tools save?

Each line is a conversation, the names of the 10-50 tools offered, and the one tool that
should be called next. The request is built with the catalogue's full definitions and run
through the same code as the gateway: the window rule picks the text, one embedding, then
``select_tools``. Tokens are counted with the embedding model's WordPiece tokenizer over the
tools' JSON: an estimate of what the target model's tokenizer would count.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mixroute.config.schema import ConversationConfig, ToolSelectionConfig
from mixroute.semantic.embedding import EmbeddingEngine, EmbeddingModel
from mixroute.semantic.text import classification_text, extract_conversation
from mixroute.semantic.tools import select_tools

SETTINGS = (
    ToolSelectionConfig(enabled=True, top_k=3, threshold=0.2, min_keep=2),
    ToolSelectionConfig(enabled=True, top_k=5, threshold=0.2, min_keep=2),
    ToolSelectionConfig(enabled=True, top_k=8, threshold=0.2, min_keep=3),
    ToolSelectionConfig(enabled=True, top_k=10, threshold=0.1, min_keep=5),
)


@dataclass
class ToolsResult:
    settings: ToolSelectionConfig
    requests: int = 0
    survived: int = 0
    tools_offered: int = 0
    tools_kept: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    select_ms: float = 0.0

    def line(self) -> str:
        s = self.settings
        return (
            f"top_k={s.top_k:<3} threshold={s.threshold:<4} min_keep={s.min_keep:<2}  "
            f"right tool kept {self.survived / self.requests:6.1%}  "
            f"tools kept {self.tools_kept}/{self.tools_offered} "
            f"({self.tools_kept / self.tools_offered:5.1%})  "
            f"tool tokens saved {1 - self.tokens_after / self.tokens_before:5.1%}  "
            f"selection {self.select_ms / self.requests:.2f} ms/request"
        )


def _data(path: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    folder = Path(str(resources.files("mixroute") / "data/tools"))
    catalogue = {
        t["function"]["name"]: t for t in json.loads((folder / "catalogue.json").read_text())
    }
    lines = (path or folder / "eval.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()], catalogue


async def evaluate_tools(model: EmbeddingModel, path: Path | None = None) -> list[ToolsResult]:
    rows, catalogue = _data(path)
    engine = EmbeddingEngine(model, cache_size=8192)
    window = ConversationConfig()
    results = []
    try:
        for settings in SETTINGS:
            result = ToolsResult(settings)
            for row in rows:
                tools = [catalogue[name] for name in row["tools"]]
                body = {"model": "m", "messages": row["messages"], "tools": tools}
                text = classification_text(
                    extract_conversation("chat", "", body),
                    window.user_turns,
                    window.followup_max_tokens,
                    model.count_tokens,
                )
                vector = await engine.embed(text)
                started = time.perf_counter()
                await select_tools(body, vector, settings, engine)
                result.select_ms += (time.perf_counter() - started) * 1000
                kept = [t["function"]["name"] for t in body["tools"]]
                result.requests += 1
                result.survived += row["expected"] in kept
                result.tools_offered += len(tools)
                result.tools_kept += len(kept)
                result.tokens_before += model.count_tokens(json.dumps(tools))
                result.tokens_after += model.count_tokens(json.dumps(body["tools"]))
            results.append(result)
    finally:
        engine.close()
    return results


def format_tools_report(results: list[ToolsResult]) -> str:
    header = (
        f"tool selection on data/tools/eval.jsonl ({results[0].requests} requests with "
        "10-50 tools each; the settings were not tuned on this set)"
    )
    return "\n".join([header, "", *(r.line() for r in results)]) + "\n"
