"""How often the semantic cache serves a paraphrase, and how often it serves a wrong answer.

On the project's own set (``data/cache``): every paraphrase group stores its first text and
every near-miss pair stores one side, all in ONE scope, so entries compete as they would in a
busy cache. Each remaining paraphrase is then looked up (a hit on its own group is right; a
hit on anything else is wrong), and the other side of each pair (any hit is wrong). Pairs are
run in both directions. Thresholds are swept with and without the second check.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from mixroute.cache.check import Facts, agree, facts
from mixroute.semantic.embedding import EmbeddingModel, Matrix

THRESHOLDS = (0.70, 0.75, 0.78, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96)


@dataclass
class CacheEvalResult:
    threshold: float
    second_check: bool
    paraphrase_queries: int = 0
    paraphrase_hits: int = 0
    paraphrase_wrong: int = 0
    near_miss_queries: int = 0
    near_miss_wrong: int = 0
    wrong_by_kind: Counter[str] = field(default_factory=Counter)
    queries_by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def hit_rate(self) -> float:
        return self.paraphrase_hits / max(self.paraphrase_queries, 1)

    @property
    def near_miss_wrong_rate(self) -> float:
        return self.near_miss_wrong / max(self.near_miss_queries, 1)


def cache_data_dir() -> Path:
    return Path(str(resources.files("mixroute") / "data/cache"))


def _read(path: Path, split: str) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split == "all" or r.get("split") == split]


def evaluate_cache(
    model: EmbeddingModel, split: str = "test", data_dir: Path | None = None
) -> tuple[list[CacheEvalResult], float]:
    """All (threshold, second check) results and the p50 second-check time in microseconds."""
    folder = data_dir or cache_data_dir()
    groups = _read(folder / "paraphrases.jsonl", split)
    pairs = _read(folder / "near_misses.jsonl", split)
    texts: list[str] = []
    for group in groups:
        texts.extend(str(t) for t in group["texts"])  # type: ignore[attr-defined]
    for pair in pairs:
        texts.extend([str(pair["a"]), str(pair["b"])])
    unique = list(dict.fromkeys(texts))
    vectors: Matrix = np.concatenate(
        [model.embed(unique[i : i + 32]) for i in range(0, len(unique), 32)]
    )
    index = {text: row for row, text in enumerate(unique)}
    fact_cache = {text: facts(text) for text in unique}
    timings = []
    for text in unique[:200]:
        started = time.perf_counter()
        agree(facts(text), fact_cache[text])
        timings.append((time.perf_counter() - started) * 1e6)

    results = []
    for second_check in (False, True):
        for threshold in THRESHOLDS:
            result = CacheEvalResult(threshold, second_check)
            for direction in (0, 1):
                _run(result, direction, groups, pairs, vectors, index, fact_cache)
            results.append(result)
    return results, float(np.median(timings))


def _run(
    result: CacheEvalResult,
    direction: int,
    groups: list[dict[str, object]],
    pairs: list[dict[str, object]],
    vectors: Matrix,
    index: dict[str, int],
    fact_cache: dict[str, Facts],
) -> None:
    stored: list[tuple[str, str]] = []  # (text, owner id)
    queries: list[tuple[str, str, str]] = []  # (text, owner id, kind or "paraphrase")
    for group in groups:
        members = [str(t) for t in group["texts"]]  # type: ignore[attr-defined]
        first = members[0] if direction == 0 else members[-1]
        stored.append((first, str(group["id"])))
        queries.extend((t, str(group["id"]), "paraphrase") for t in members if t != first)
    for pair in pairs:
        keep, ask = ("a", "b") if direction == 0 else ("b", "a")
        stored.append((str(pair[keep]), str(pair["id"])))
        queries.append((str(pair[ask]), str(pair["id"]), str(pair["kind"])))
    matrix = vectors[[index[t] for t, _ in stored]]
    for text, owner, kind in queries:
        scores = matrix @ vectors[index[text]]
        order = np.argsort(-scores)[:4]
        hit_owner = None
        for row in order:
            if scores[row] < result.threshold:
                break
            if result.second_check and not agree(
                fact_cache[text],
                fact_cache[stored[row][0]],
            ):
                continue
            hit_owner = stored[row][1]
            break
        if kind == "paraphrase":
            result.paraphrase_queries += 1
            if hit_owner == owner:
                result.paraphrase_hits += 1
            elif hit_owner is not None:
                result.paraphrase_wrong += 1
        else:
            result.near_miss_queries += 1
            result.queries_by_kind[kind] += 1
            if hit_owner is not None:
                result.near_miss_wrong += 1
                result.wrong_by_kind[kind] += 1


def format_cache_report(results: list[CacheEvalResult], check_us: float, split: str) -> str:
    lines = [
        f"semantic cache evaluation on the {split} split "
        f"({results[0].paraphrase_queries} paraphrase lookups, "
        f"{results[0].near_miss_queries} near-miss lookups, both directions)",
        "",
        "threshold  second-check  paraphrase-hits  paraphrase-wrong  near-miss-wrong",
    ]
    for r in results:
        lines.append(
            f"{r.threshold:9.2f}  {'on ' if r.second_check else 'off':>12}  "
            f"{r.hit_rate:15.1%}  {r.paraphrase_wrong / max(r.paraphrase_queries, 1):16.1%}  "
            f"{r.near_miss_wrong_rate:15.1%}"
        )
    lines += ["", f"second check: p50 {check_us:.1f} us per comparison (both texts' facts)", ""]
    for r in results:
        if r.second_check and r.threshold in (0.86, 0.88, 0.90, 0.92):
            kinds = ", ".join(
                f"{kind} {r.wrong_by_kind[kind]}/{r.queries_by_kind[kind]}"
                for kind in sorted(r.queries_by_kind)
            )
            lines.append(f"wrong hits by kind at {r.threshold:.2f} with the check: {kinds}")
    return "\n".join(lines) + "\n"
