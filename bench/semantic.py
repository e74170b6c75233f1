"""Semantic layer speed: the decision against a bare embedding, and classified requests/s.

Part 1 (one process, one inference thread): for our own held-out questions (distinct
texts, so no LRU hits: the engine's cache is off) time the bare embedding and the full
decision (embedding + every signal + rules + model choice) of the demo config, the same at
512 tokens, and both guards (PII detection + jailbreak head on the shared embedding).

Part 2 (through the gateway, all on the same 2 cores): the demo's routes and guards with
its cache off, one simulator per model with --no-latency, and wrk cycling through the
distinct held-out questions as MoM requests. Reports req/s and latency, median of rounds.

    .venv/bin/python bench/semantic.py [--rounds 3] [--duration 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from mixroute.config.loader import validate_config
from mixroute.demo import DEMO_MODELS, demo_config
from mixroute.guards.jailbreak import JailbreakDetector
from mixroute.guards.pii import PIIDetector
from mixroute.semantic.embedding import EmbeddingEngine, EmbeddingModel, builtin_minilm
from mixroute.semantic.heads import LinearHead, builtin_head_path
from mixroute.semantic.router import SemanticRouter

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results/semantic.json"
DOC = ROOT / "docs/benchmarks.md"


def heldout_questions() -> list[str]:
    folder = ROOT / "src/mixroute/data/domain/heldout"
    texts = []
    for path in sorted(folder.glob("*.txt")):
        texts.extend(line for line in path.read_text().splitlines() if line.strip())
    return list(dict.fromkeys(texts))


class FakeSim:
    def __init__(self, model: str) -> None:
        self.model, self.name, self.url = model, f"{model}-0", "http://127.0.0.1:9"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def in_process(texts: list[str]) -> dict[str, Any]:
    model = EmbeddingModel(builtin_minilm(), threads=1)
    engine = EmbeddingEngine(model, cache_size=0)
    config = validate_config(demo_config([FakeSim(m) for m in DEMO_MODELS]))  # type: ignore[list-item]
    head = LinearHead.load(builtin_head_path("domain"), model.spec.name)
    router = await SemanticRouter.build(config, engine, head)
    for text in texts[:20]:  # warm-up
        model.embed([text])
    embed_ms, decide_ms, tokens = [], [], []
    for text in texts:
        started = time.perf_counter()
        model.embed([text])
        embed_ms.append((time.perf_counter() - started) * 1000)
        body = {"model": "MoM", "messages": [{"role": "user", "content": text}]}
        started = time.perf_counter()
        await router.decide("chat", "/v1/chat/completions", body, lambda m: True)
        decide_ms.append((time.perf_counter() - started) * 1000)
        tokens.append(model.count_tokens(text))
    long_text = " ".join(texts)[:6000]
    while model.count_tokens(long_text) < 520:
        long_text += " " + long_text
    long_embed, long_decide = [], []
    for _ in range(20):
        body = {"model": "MoM", "messages": [{"role": "user", "content": long_text}]}
        started = time.perf_counter()
        model.embed([long_text])
        long_embed.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await router.decide("chat", "/v1/chat/completions", body, lambda m: True)
        long_decide.append((time.perf_counter() - started) * 1000)
    pii = PIIDetector()
    jailbreak = JailbreakDetector.load(builtin_head_path("jailbreak"), model.spec.name)
    guard_ms, guard_with_embedding_ms = [], []
    for text in texts[:300]:
        vector = model.embed([text])[0]
        started = time.perf_counter()
        pii.detect_messages([{"role": "user", "content": text}])
        jailbreak.score(text, vector)
        guard_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        vector = model.embed([text])[0]
        pii.detect_messages([{"role": "user", "content": text}])
        jailbreak.score(text, vector)
        guard_with_embedding_ms.append((time.perf_counter() - started) * 1000)
    engine.close()
    return {
        "prompts": len(texts),
        "prompt_tokens_p50": pct([float(t) for t in tokens], 50),
        "embedding_p50_ms": round(pct(embed_ms, 50), 3),
        "decision_p50_ms": round(pct(decide_ms, 50), 3),
        "decision_p99_ms": round(pct(decide_ms, 99), 3),
        "decision_over_embedding": round(pct(decide_ms, 50) / pct(embed_ms, 50), 3),
        "tokens_512_embedding_p50_ms": round(pct(long_embed, 50), 3),
        "tokens_512_decision_p50_ms": round(pct(long_decide, 50), 3),
        "guards_p50_ms": round(pct(guard_ms, 50), 3),
        "guards_p99_ms": round(pct(guard_ms, 99), 3),
        "guards_with_embedding_p50_ms": round(pct(guard_with_embedding_ms, 50), 3),
    }


def wrk_script(directory: Path, texts: list[str]) -> Path:
    bodies = [
        json.dumps({"model": "MoM", "max_tokens": 8, "messages": [{"role": "user", "content": t}]})
        for t in texts
    ]
    table = ",\n".join(f"[==[{b}]==]" for b in bodies)
    lua = (
        f"local bodies = {{\n{table}\n}}\n"
        "local i = 0\n"
        'local headers = {["Content-Type"] = "application/json"}\n'
        "request = function()\n  i = i % #bodies + 1\n"
        '  return wrk.format("POST", nil, headers, bodies[i])\nend\n'
    )
    path = directory / "mom.lua"
    path.write_text(lua + benchlib._LUA_DONE)
    return path


def through_gateway(texts: list[str], rounds: int, duration: int) -> dict[str, Any]:
    wrk = benchlib.ensure_wrk()
    results = []
    with benchlib.running_services() as services:
        sims = []
        for model in DEMO_MODELS:
            port = benchlib.free_port()
            service = services.start(f"sim-{model}", benchlib.sim_argv(port, model, "--no-latency"))
            sims.append((model, port, service))
        for _, port, service in sims:
            benchlib.wait_ready(service, f"http://127.0.0.1:{port}/health")

        class Sim:
            def __init__(self, model: str, port: int) -> None:
                self.model, self.name, self.url = model, f"{model}-0", f"http://127.0.0.1:{port}"

        config = demo_config([Sim(m, p) for m, p, _ in sims])  # type: ignore[misc]
        config["cache"]["enabled"] = False
        config["semantic"] = {"embedding": {"cache_size": 0}}
        path = services.log_dir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        port = benchlib.free_port()
        gateway = services.start(
            "gateway",
            [str(ROOT / ".venv/bin/mixroute"), "serve", "--config", str(path), "--port", str(port)],
        )
        benchlib.wait_ready(gateway, f"http://127.0.0.1:{port}/ready")
        script = wrk_script(services.log_dir, texts)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        benchlib.run_wrk(wrk, url, script, 8, 2)  # warm-up
        for _ in range(rounds):
            run = benchlib.run_wrk(wrk, url, script, 16, duration)
            results.append(run.as_dict())
            benchlib.log(
                f"gateway MoM: {run.rps:.0f} req/s, p50 {run.p50_ms:.1f} ms, errors {run.errors}"
            )
    return {
        "connections": 16,
        "rounds": results,
        "rps_median": round(statistics.median(r["rps"] for r in results), 1),
        "p50_ms_median": round(statistics.median(r["p50_ms"] for r in results), 2),
        "p99_ms_median": round(statistics.median(r["p99_ms"] for r in results), 2),
        "errors": sum(r["errors"] for r in results),
    }


def render(data: dict[str, Any]) -> str:
    p, g = data["in_process"], data["gateway"]
    return "\n".join(
        [
            f"Generated by `.venv/bin/python bench/semantic.py` on {data['date']}; raw numbers in "
            "`bench/results/semantic.json`. Prompts: our own held-out domain questions "
            f"({p['prompts']} distinct, median {p['prompt_tokens_p50']:.0f} tokens), the "
            "embedding LRU off so every request pays for its embedding.",
            "",
            "| measure (one inference thread) | p50 ms | goal |",
            "|---|---|---|",
            f"| bare embedding (MiniLM int8) | {p['embedding_p50_ms']} | |",
            f"| full decision (embedding + all signals + rules) | {p['decision_p50_ms']} "
            f"(x{p['decision_over_embedding']} the embedding; p99 {p['decision_p99_ms']}) "
            "| <= 1.5x the embedding |",
            f"| bare embedding, 512-token prompt (truncated to 256) | "
            f"{p['tokens_512_embedding_p50_ms']} | |",
            f"| full decision, 512-token prompt | {p['tokens_512_decision_p50_ms']} | <= 60 |",
            f"| both guards (PII + jailbreak head), shared embedding excluded | "
            f"{p['guards_p50_ms']} (p99 {p['guards_p99_ms']}) | |",
            f"| both guards including the embedding they share | "
            f"{p['guards_with_embedding_p50_ms']} | <= 8 |",
            "",
            f"Through the gateway (demo routes, jailbreak and PII guards on, cache off; one "
            f"simulator per model with `--no-latency`; wrk, gateway and simulators on the same "
            f"2 cores; {g['connections']} connections, median of {len(g['rounds'])} rounds): "
            f"**{g['rps_median']} classified requests/s** (goal >= 100), p50 {g['p50_ms_median']} "
            f"ms, p99 {g['p99_ms_median']} ms, {g['errors']} errors.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    texts = heldout_questions()
    if args.quick:
        texts, args.rounds, args.duration = texts[:200], 1, 3
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "in_process": asyncio.run(in_process(texts)),
    }
    benchlib.log(json.dumps(data["in_process"]))
    data["gateway"] = through_gateway(texts, args.rounds, args.duration)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2))
    benchlib.replace_between_markers(DOC, "semantic", render(data))
    print(render(data))


if __name__ == "__main__":
    main()
