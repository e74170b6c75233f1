"""Pass-through overhead of mixroute next to its peers, all in front of one simulator.

Run with ``make bench`` (or ``.venv/bin/python bench/passthrough.py``). Targets, on the same
``mixroute.sim --no-latency`` backend: direct (no gateway), mixroute with 1 and 2 workers,
LiteLLM proxy, and the Rust vllm-router. Per target and round: req/s at 64 connections,
streamed req/s at 64 connections and p50/p99 at 1 connection, with wrk. Rounds interleave the
targets (each round starts one target later) so machine noise spreads evenly; the report is
the median over rounds of each round's ratio (or difference) to direct in that same round.

Load generator, gateway and backend all share this machine's cores (2 here), so a gateway's
CPU is taken from the backend and wrk: the ratios measure the cost of a hop, not a network.

Writes bench/results/passthrough.json and regenerates the results section of
docs/benchmarks.md (``--quick`` writes passthrough-quick.json and leaves the doc alone).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as bl

DEFAULT_ROUNDS = 5
DEFAULT_DURATION_S = 5
DEFAULT_WARMUP_S = 2
LOAD_CONNECTIONS = 64
LATENCY_CONNECTIONS = 1
COMMAND = ".venv/bin/python bench/passthrough.py"  # what `make bench` runs

# The targets, checked against the one-process gateway.
GOAL_RPS_X = 0.25
GOAL_ADDED_P50_MS = 0.3
GOAL_STREAM_X = 0.4

# "Measured elsewhere" context from the issue (a 2-core machine like ours).
REFERENCE = (
    ("Production Stack router (Python)", "0.05x", "+1.1 ms"),
    ("LiteLLM proxy", "0.01x", "+10.5 ms"),
    ("vllm-router (Rust)", "~1.0x", "+0.07 ms"),
    ("bare aiohttp proxy", "0.28x", "+0.3 ms"),
)


@dataclass
class Target:
    """One thing wrk talks to; ``gateway`` is None for the backend itself."""

    name: str
    description: str
    base_url: str
    gateway: bl.Service | None

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"


# --------------------------------------------------------------------------- starting


def start_backend(services: bl.Services) -> tuple[bl.Service, str]:
    """The simulator at full speed: the ceiling every gateway is measured against."""
    port = bl.free_port()
    service = services.start("backend", bl.sim_argv(port, bl.MODEL, "--no-latency"))
    url = f"http://{bl.HOST}:{port}"
    bl.wait_ready(service, f"{url}/health")
    return service, url


def _mixroute_argv() -> list[str]:
    script = Path(sys.executable).with_name("mixroute")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mixroute.cli"]


def start_mixroute(services: bl.Services, backend: str, workers: int) -> Target:
    port = bl.free_port()
    argv = [
        *_mixroute_argv(),
        "--log-level",
        "WARNING",
        "serve",
        "--backend",
        f"{bl.MODEL}={backend}",
        "--host",
        bl.HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    service = services.start(f"mixroute-{workers}w", argv)
    url = f"http://{bl.HOST}:{port}"
    bl.wait_ready(service, f"{url}/ready")
    return Target(service.name, f"mixroute serve --workers {workers}", url, service)


def start_vllm_router(services: bl.Services, backend: str) -> Target:
    """The Rust router, round_robin like mixroute's default, quiet logs."""
    port = bl.free_port()
    argv = [
        str(bl.BENCH_VENV / "bin" / "vllm-router"),
        "--host",
        bl.HOST,
        "--port",
        str(port),
        "--worker-urls",
        backend,
        "--policy",
        "round_robin",
        "--log-level",
        "warning",
        "--prometheus-host",
        bl.HOST,
        "--prometheus-port",
        str(bl.free_port()),
    ]
    service = services.start("vllm-router", argv)
    url = f"http://{bl.HOST}:{port}"
    bl.wait_ready(service, f"{url}/health")
    return Target(service.name, "vllm-router --policy round_robin", url, service)


def _litellm_config(backend: str) -> str:
    """Proxy config: one OpenAI-compatible model, every callback and telemetry off."""
    return (
        "model_list:\n"
        f"  - model_name: {bl.MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{bl.MODEL}\n"
        f"      api_base: {backend}/v1\n"
        "      api_key: dummy\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "  callbacks: []\n"
        "  success_callback: []\n"
        "  failure_callback: []\n"
        "general_settings:\n"
        f"  master_key: {bl.API_KEY}\n"
        "  disable_spend_logs: true\n"
    )


def start_litellm(services: bl.Services, backend: str) -> Target:
    """LiteLLM proxy with its default single worker; needs a master key to start at all."""
    port = bl.free_port()
    config = services.log_dir / "litellm.yaml"
    config.write_text(_litellm_config(backend))
    env = {
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MASTER_KEY": bl.API_KEY,
    }
    argv = [
        str(bl.BENCH_VENV / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        bl.HOST,
        "--port",
        str(port),
    ]
    service = services.start("litellm", argv, env)
    url = f"http://{bl.HOST}:{port}"
    bl.wait_ready(service, f"{url}/health/liveliness", timeout_s=180)
    return Target(service.name, "litellm --config (1 worker)", url, service)


def check_answers(target: Target) -> None:
    """One plain and one streamed request must succeed before any load is sent."""
    status, body = bl.http("POST", target.chat_url, bl.chat_body(stream=False), timeout=30)
    if status != 200 or b'"choices"' not in body:
        raise RuntimeError(f"{target.name}: chat answered {status}: {body[:300]!r}")
    status, body = bl.http("POST", target.chat_url, bl.chat_body(stream=True), timeout=30)
    if status != 200 or b"data: [DONE]" not in body:
        raise RuntimeError(f"{target.name}: stream answered {status}: {body[:300]!r}")


def start_targets(services: bl.Services, names: Sequence[str]) -> tuple[bl.Service, list[Target]]:
    backend, url = start_backend(services)
    starters: dict[str, Callable[[], Target]] = {
        "direct": lambda: Target("direct", "the simulator itself", url, None),
        "mixroute-1w": lambda: start_mixroute(services, url, 1),
        "mixroute-2w": lambda: start_mixroute(services, url, 2),
        "litellm": lambda: start_litellm(services, url),
        "vllm-router": lambda: start_vllm_router(services, url),
    }
    targets = []
    for name in names:
        bl.log(f"starting {name}")
        target = starters[name]()
        check_answers(target)
        targets.append(target)
    return backend, targets


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration_s: int
    warmup_s: int
    max_other_cpu_pct: float
    redo_budget_s: float


@dataclass
class CpuWindow:
    """CPU used while it is open by the gateway, the backend, wrk, the kernel and the rest."""

    gateway_pids: list[int]
    backend_pids: list[int]

    def __post_init__(self) -> None:
        self._start = self._read()

    def _read(self) -> tuple[float, ...]:
        return (
            bl.cpu_seconds(self.gateway_pids),
            bl.cpu_seconds(self.backend_pids),
            bl.children_cpu_seconds(),
            *bl.system_cpu_seconds(),
            time.monotonic(),
        )

    def percentages(self) -> dict[str, float]:
        """Percent of one core each; "other" is task CPU that no part of the benchmark used."""
        end = self._read()
        gw, be, wrk, tasks, irq, wall = (b - a for a, b in zip(self._start, end, strict=True))
        pct = {
            "gateway": gw,
            "backend": be,
            "wrk": wrk,
            "softirq": irq,
            "other": tasks - gw - be - wrk,
        }
        return {f"{k}_cpu_pct": round(max(0.0, 100 * v / wall), 1) for k, v in pct.items()}


def measure_once(
    wrk: str, scripts: dict[bool, Path], target: Target, backend: bl.Service, s: Settings
) -> dict[str, Any]:
    """One round for one target: warm-up, 64-conn plain, 64-conn streamed, 1-conn latency."""
    gateway_pids = target.gateway.pids() if target.gateway else []
    whole = CpuWindow(gateway_pids, backend.pids())
    bl.run_wrk(wrk, target.chat_url, scripts[False], LOAD_CONNECTIONS, s.warmup_s)
    window = CpuWindow(gateway_pids, backend.pids())
    load = bl.run_wrk(wrk, target.chat_url, scripts[False], LOAD_CONNECTIONS, s.duration_s)
    cpu = window.percentages()
    time.sleep(0.3)
    stream = bl.run_wrk(wrk, target.chat_url, scripts[True], LOAD_CONNECTIONS, s.duration_s)
    time.sleep(0.3)
    latency = bl.run_wrk(wrk, target.chat_url, scripts[False], LATENCY_CONNECTIONS, s.duration_s)
    time.sleep(0.3)
    return {
        "load": load.as_dict(),
        "stream": stream.as_dict(),
        "latency": latency.as_dict(),
        **cpu,
        "other_cpu_pct_whole": whole.percentages()["other_cpu_pct"],
    }


def measure(
    wrk: str,
    scripts: dict[bool, Path],
    target: Target,
    backend: bl.Service,
    s: Settings,
    budget: RedoBudget,
) -> dict[str, Any]:
    """measure_once, redone (at most twice) when other work on the machine disturbed it.

    The machine is shared; a measurement during which something else used more than
    ``s.max_other_cpu_pct`` of a core says more about that something than about the target.
    Redos and the waits before them draw on one budget per run, so a machine that never
    calms down costs minutes, not hours; the last attempt is kept either way.
    """
    result: dict[str, Any] = {}
    for attempt in range(1, 4):
        started = time.monotonic()
        result = measure_once(wrk, scripts, target, backend, s)
        result["attempts"] = attempt
        if attempt > 1:
            budget.spend(time.monotonic() - started)
        if result["other_cpu_pct_whole"] <= s.max_other_cpu_pct or budget.left_s <= 0:
            break
        bl.log(
            f"{target.name}: other work used {result['other_cpu_pct_whole']:.0f}% of a core "
            "meanwhile; measuring again"
        )
        started = time.monotonic()
        bl.wait_for_quiet(min(60.0, budget.left_s))
        budget.spend(time.monotonic() - started)
    return result


@dataclass
class RedoBudget:
    """Seconds the whole run may spend redoing disturbed measurements."""

    left_s: float

    def spend(self, seconds: float) -> None:
        self.left_s -= seconds


def run_rounds(
    wrk: str, targets: Sequence[Target], backend: bl.Service, s: Settings, workdir: Path
) -> dict[str, list[dict[str, Any]]]:
    """Every round measures every target; round r starts r targets later in the list."""
    scripts = {flag: bl.write_wrk_script(workdir, flag) for flag in (False, True)}
    budget = RedoBudget(s.redo_budget_s)
    rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for r in range(s.rounds):
        shift = r % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            result = measure(wrk, scripts, target, backend, s, budget)
            rounds[target.name].append({"round": r + 1, **result})
            bl.log(
                f"round {r + 1}/{s.rounds} {target.name:12} "
                f"{result['load']['rps']:9.0f} req/s  stream {result['stream']['rps']:9.0f}"
                f"  p50 {result['latency']['p50_ms']:.3f} ms"
            )
    return rounds


# --------------------------------------------------------------------------- summarising


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians over rounds; ratios and added latency are paired with direct's same round."""
    direct = rounds["direct"]
    out: dict[str, dict[str, float]] = {}
    for name, rows in rounds.items():
        pairs = list(zip(rows, direct, strict=True))
        out[name] = {
            "rps": _median([r["load"]["rps"] for r in rows]),
            "rps_x": _median([r["load"]["rps"] / d["load"]["rps"] for r, d in pairs]),
            "stream_rps": _median([r["stream"]["rps"] for r in rows]),
            "stream_x": _median([r["stream"]["rps"] / d["stream"]["rps"] for r, d in pairs]),
            "p50_ms": _median([r["latency"]["p50_ms"] for r in rows]),
            "p99_ms": _median([r["latency"]["p99_ms"] for r in rows]),
            "added_p50_ms": _median(
                [r["latency"]["p50_ms"] - d["latency"]["p50_ms"] for r, d in pairs]
            ),
            "added_p99_ms": _median(
                [r["latency"]["p99_ms"] - d["latency"]["p99_ms"] for r, d in pairs]
            ),
            "gateway_cpu_pct": _median([r["gateway_cpu_pct"] for r in rows]),
            "backend_cpu_pct": _median([r["backend_cpu_pct"] for r in rows]),
            "wrk_cpu_pct": _median([r["wrk_cpu_pct"] for r in rows]),
            "softirq_cpu_pct": _median([r["softirq_cpu_pct"] for r in rows]),
            "other_cpu_pct": _median([r["other_cpu_pct"] for r in rows]),
            "redos": float(sum(r.get("attempts", 1) - 1 for r in rows)),
            "errors": float(
                sum(r[k]["errors"] for r in rows for k in ("load", "stream", "latency"))
            ),
        }
    return out


def goals(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The issue's targets, judged on the one-process gateway."""
    one = summary.get("mixroute-1w")
    if one is None:
        return {}
    return {
        "rps_x": {
            "goal": f">= {GOAL_RPS_X}",
            "value": one["rps_x"],
            "met": one["rps_x"] >= GOAL_RPS_X,
        },
        "added_p50_ms": {
            "goal": f"<= {GOAL_ADDED_P50_MS}",
            "value": one["added_p50_ms"],
            "met": one["added_p50_ms"] <= GOAL_ADDED_P50_MS,
        },
        "stream_x": {
            "goal": f">= {GOAL_STREAM_X}",
            "value": one["stream_x"],
            "met": one["stream_x"] >= GOAL_STREAM_X,
        },
    }


# (header, summary key, format); "added" columns make no sense for direct itself.
PERF_COLUMNS = (
    ("req/s @64", "rps", "{:.0f}"),
    ("x direct", "rps_x", "{:.3f}"),
    ("stream req/s @64", "stream_rps", "{:.0f}"),
    ("stream x direct", "stream_x", "{:.3f}"),
    ("p50 @1 ms", "p50_ms", "{:.3f}"),
    ("added p50 ms", "added_p50_ms", "{:+.3f}"),
    ("p99 @1 ms", "p99_ms", "{:.3f}"),
    ("added p99 ms", "added_p99_ms", "{:+.3f}"),
    ("errors", "errors", "{:.0f}"),
)
CPU_COLUMNS = (
    ("req/s @64", "rps", "{:.0f}"),
    ("gateway", "gateway_cpu_pct", "{:.0f}"),
    ("backend", "backend_cpu_pct", "{:.0f}"),
    ("wrk", "wrk_cpu_pct", "{:.0f}"),
    ("kernel softirq", "softirq_cpu_pct", "{:.0f}"),
    ("other work", "other_cpu_pct", "{:.0f}"),
)
_NOT_FOR_DIRECT = {"added_p50_ms", "added_p99_ms", "gateway_cpu_pct"}


def table_rows(
    summary: dict[str, dict[str, float]], columns: Sequence[tuple[str, str, str]]
) -> list[list[str]]:
    """One row per target, formatted; the header row first."""
    rows = [["target", *[c[0] for c in columns]]]
    for name, values in summary.items():
        cells = [name]
        for _, key, fmt in columns:
            skip = name == "direct" and key in _NOT_FOR_DIRECT
            cells.append("-" if skip else fmt.format(values[key]))
        rows.append(cells)
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def markdown_table(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def render_doc_section(data: dict[str, Any]) -> str:
    """The generated results section of docs/benchmarks.md, from the JSON alone."""
    m, s = data["machine"], data["settings"]
    pk = m["packages"]
    rows = [r for target_rows in data["rounds"].values() for r in target_rows]
    redos, measured = sum(r.get("attempts", 1) > 1 for r in rows), len(rows)
    budget = f" within {s['redo_budget_s']:g} s per run" if "redo_budget_s" in s else ""
    lines = [
        f"Generated by `make bench` (`{COMMAND}`) on {data['generated']}; raw numbers and "
        "every round in `bench/results/passthrough.json`.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, Linux "
        f"{m['kernel']}. **wrk, the gateway and the backend share the same {m['nproc']} cores** "
        "(no pinning), so every CPU cycle a gateway spends is taken from the backend and the "
        "load generator.",
        "",
        f"Versions: mixroute {pk['mixroute']} (aiohttp {pk['aiohttp']}, uvloop {pk['uvloop']}), "
        f"vllm-router {pk['vllm-router']}, LiteLLM {pk['litellm']}, {pk['wrk']}.",
        "",
        f"Load: {s['rounds']} rounds, each target {s['warmup_s']:g} s warm-up then "
        f"{s['duration_s']:g} s per measurement; req/s with {LOAD_CONNECTIONS} connections "
        f"(2 wrk threads), latency with {LATENCY_CONNECTIONS} connection. Request: one short "
        "chat message, `max_tokens: 8` (stream: the same with `stream: true`; wrk times the "
        "whole streamed answer). Every column is the median over rounds; `x direct` and "
        "`added` pair each round with direct's numbers of the same round. `kernel softirq` is "
        "loopback TCP work the kernel charges to no process; `other work` is CPU used by "
        f"processes outside the benchmark (noise: a measurement during which it exceeded "
        f"{s.get('max_other_cpu_pct', 30):g}% of a core was redone, at most twice{budget}; "
        f"{redos} of {measured} were redone in this run).",
        "",
        markdown_table(table_rows(data["summary"], PERF_COLUMNS)),
        "",
        "Where the CPU went during the 64-connection plain run, in % of one core (medians):",
        "",
        markdown_table(table_rows(data["summary"], CPU_COLUMNS)),
        "",
    ]
    lines += _goal_lines(data.get("goals", {}))
    return "\n".join(lines)


def _goal_lines(result: dict[str, dict[str, Any]]) -> list[str]:
    if not result:
        return []
    label = {
        "rps_x": "req/s at 64 connections, x direct",
        "added_p50_ms": "added p50 at 1 connection, ms",
        "stream_x": "streamed req/s at 64 connections, x direct",
    }
    lines = ["Goals from the issue, for mixroute with one process:", ""]
    for key, g in result.items():
        verdict = "met" if g["met"] else "**not met**"
        lines.append(f"- {label[key]}: {g['value']:.3f} (goal {g['goal']}): {verdict}")
    return lines


# --------------------------------------------------------------------------- main


TARGET_NAMES = ("direct", "mixroute-1w", "mixroute-2w", "litellm", "vllm-router")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help=f"default {DEFAULT_ROUNDS}")
    p.add_argument(
        "--duration",
        type=int,
        default=None,
        help=f"seconds per measurement, default {DEFAULT_DURATION_S:g}",
    )
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP_S, help="seconds, default 2")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 3 s; writes passthrough-quick.json, no doc",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGET_NAMES),
        help="comma-separated subset (direct is always included)",
    )
    p.add_argument(
        "--max-other-cpu",
        type=float,
        default=30.0,
        help="redo a measurement when other work used more than this %% of a core (default 30)",
    )
    p.add_argument(
        "--redo-budget",
        type=float,
        default=300.0,
        help="seconds the run may spend on redos and waiting for quiet (default 300)",
    )
    p.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument(
        "--doc-only",
        action="store_true",
        help="measure nothing: regenerate the doc section from bench/results/passthrough.json",
    )
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else DEFAULT_ROUNDS)
    args.duration = args.duration or (3 if args.quick else DEFAULT_DURATION_S)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(TARGET_NAMES))
    if unknown:
        p.error(f"unknown targets {unknown}; choose from {', '.join(TARGET_NAMES)}")
    args.target_names = ["direct", *[n for n in TARGET_NAMES[1:] if n in names]]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.doc_only:
        data = json.loads((bl.RESULTS_DIR / "passthrough.json").read_text())
        bl.replace_between_markers(bl.DOC_PATH, "passthrough", render_doc_section(data))
        bl.log(f"updated {bl.rel(bl.DOC_PATH)} from bench/results/passthrough.json")
        return 0
    env_info = bl.ensure_bench_env()
    wrk = bl.ensure_wrk()
    settings = Settings(
        args.rounds, args.duration, args.warmup, args.max_other_cpu, args.redo_budget
    )
    busy_at_start = bl.wait_for_quiet()
    started = time.monotonic()
    with bl.running_services() as services:
        backend, targets = start_targets(services, args.target_names)
        rounds = run_rounds(wrk, targets, backend, settings, services.log_dir)
    summary = summarise(rounds)
    data = {
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            **settings.__dict__,
            "load_connections": LOAD_CONNECTIONS,
            "latency_connections": LATENCY_CONNECTIONS,
        },
        "machine": bl.machine_info(wrk),
        "bench_env": env_info,
        "other_busy_pct_at_start": round(busy_at_start, 1),
        "targets": {t.name: t.description for t in targets},
        "summary": summary,
        "goals": goals(summary),
        "reference_measured_elsewhere": [list(r) for r in REFERENCE],
        "rounds": rounds,
        "wall_s": round(time.monotonic() - started, 1),
    }
    write_outputs(data, quick=args.quick, doc=not (args.quick or args.no_doc))
    return 0


def write_outputs(data: dict[str, Any], *, quick: bool, doc: bool) -> None:
    bl.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = bl.RESULTS_DIR / ("passthrough-quick.json" if quick else "passthrough.json")
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(text_table(table_rows(data["summary"], PERF_COLUMNS)))
    print()
    print("CPU during the 64-connection run, % of one core:")
    print(text_table(table_rows(data["summary"], CPU_COLUMNS)))
    print()
    for line in _goal_lines(data["goals"]):
        print(line)
    bl.log(f"wrote {bl.rel(out)}")
    if doc:
        bl.replace_between_markers(bl.DOC_PATH, "passthrough", render_doc_section(data))
        bl.log(f"updated {bl.rel(bl.DOC_PATH)}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        bl.log("interrupted; all servers stopped")
        sys.exit(130)
