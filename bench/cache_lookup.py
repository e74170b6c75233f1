"""Cache lookup latency at 100k entries, and the HNSW ef that keeps recall (docs/benchmarks.md).

Vectors: real MiniLM embeddings of every text the project ships (domain questions, cache
set), and, to reach 100k, those embeddings with small Gaussian noise added and re-normalised
(a neighbourhood structure like real traffic: clusters of near-duplicates). Queries are other
real embeddings. Reports p50/p99 of one lookup (the cache's own ``MemoryCache.lookup_now``,
second check included) for the exact numpy path and for HNSW at several ef values, with
recall@1 of HNSW against exact search.

    .venv/bin/python bench/cache_lookup.py [--entries 100000] [--queries 500]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np

from mixroute.cache.key import CacheRequest
from mixroute.cache.memory import MemoryCache, VectorIndex
from mixroute.cache.store import CachedAnswer
from mixroute.config.schema import CacheConfig
from mixroute.semantic.embedding import EmbeddingModel, builtin_minilm


def shipped_texts() -> list[str]:
    root = Path(str(resources.files("mixroute") / "data"))
    texts = []
    for path in sorted((root / "domain").glob("*/*.txt")):
        texts.extend(line for line in path.read_text().splitlines() if line.strip())
    for line in (root / "cache/paraphrases.jsonl").read_text().splitlines():
        texts.extend(json.loads(line)["texts"])
    return list(dict.fromkeys(texts))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    model = EmbeddingModel(builtin_minilm())
    texts = shipped_texts()
    started = time.perf_counter()
    real = np.concatenate([model.embed(texts[i : i + 32]) for i in range(0, len(texts), 32)])
    print(f"embedded {len(texts)} texts in {time.perf_counter() - started:.0f}s")
    rng = np.random.default_rng(7)
    queries, base = real[: args.queries], real[args.queries :]
    picks = rng.integers(0, len(base), args.entries)
    noisy = base[picks] + rng.normal(scale=0.03, size=(args.entries, real.shape[1]))
    noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    noisy[: len(base)] = base

    exact = VectorIndex(real.shape[1], hnsw_above=10**9, ef_search=0)
    for i, vector in enumerate(noisy):
        exact.add(i, vector)
    truth = [exact.search(q, 1)[0][0] for q in queries]
    results = {}
    answer = CachedAnswer("m", "x", "stop", None)
    for label, hnsw_above, ef in [
        ("exact numpy", 10**9, 0),
        *[(f"hnsw ef={e}", 1000, e) for e in (16, 32, 64, 128)],
    ]:
        settings = CacheConfig(
            enabled=True,
            max_entries=args.entries + 1,
            hnsw_above=hnsw_above,
            hnsw_ef_search=max(ef, 1),
        )
        cache = MemoryCache(settings, real.shape[1])
        built = time.perf_counter()
        for i, vector in enumerate(noisy):
            cache.store_now(CacheRequest("s", f"text {i}", f"e{i}", False, False), vector, answer)
        build_s = time.perf_counter() - built
        index = cache._scopes["s"]
        found = [index.search(q, 1)[0][0] for q in queries]
        recall = float(np.mean([a == b for a, b in zip(found, truth, strict=True)]))
        timings = []
        for q in queries:
            request = CacheRequest("s", "what is the boiling point of water", "q", False, False)
            t0 = time.perf_counter()
            cache.lookup_now(request, q, 0.99)
            timings.append((time.perf_counter() - t0) * 1000)
        results[label] = {
            "p50_ms": round(percentile(timings, 50), 3),
            "p99_ms": round(percentile(timings, 99), 3),
            "recall_at_1": round(recall, 3),
            "build_s": round(build_s, 1),
        }
        print(label, results[label], flush=True)
    out = Path("bench/results/cache_lookup.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"entries": args.entries, "queries": args.queries, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
