"""Where a one-process mixroute spends its CPU while it passes 64 connections through.

Run with ``.venv/bin/python bench/profile_hotpath.py``. It starts the simulator
(``--no-latency``) and ``mixroute serve --workers 1``, puts wrk's 64-connection load on it
(plain, then streamed) and samples the gateway with py-spy (``--native``, so the garbage
collector, syscalls and uvloop's C show up next to the Python frames). The collapsed stacks
land in ``bench/results/profile-{plain,stream}.txt`` (feed them to flamegraph.pl or
speedscope), a summary in ``bench/results/profile.json``, and the tables in
docs/benchmarks.md between the ``profile`` markers. Percentages are of the samples where
the gateway was on a CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as bl
from passthrough import start_backend, start_mixroute

_LINE_NO = re.compile(r":\d+\)$")
_LIBC_CALLS = {
    "write",
    "writev",
    "send",
    "sendmsg",
    "read",
    "readv",
    "recv",
    "recvfrom",
    "recvmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "getpid",
    "clock_gettime",
}
# Functions whose inclusive share the doc reports, as they appear in py-spy frames.
KEY_FUNCTIONS = (
    "_inference (mixroute/api/openai.py)",
    "Forwarder.forward (mixroute/proxy/forward.py)",
    "Forwarder._attempt (mixroute/proxy/forward.py)",
    "Forwarder._relay_stream (mixroute/proxy/forward.py)",
    "ClientSession._request (aiohttp/client.py)",
    "ClientResponse.read (aiohttp/client_reqrep.py)",
    "_upstream_headers (mixroute/proxy/forward.py)",
    "_client_headers (mixroute/proxy/forward.py)",
    "parse_json_body (mixroute/api/parsing.py)",
    "MetricWrapperBase.labels (prometheus_client/metrics.py)",
    "Timeout.__aenter__ (asyncio/timeouts.py)",
    "Timeout.__aexit__ (asyncio/timeouts.py)",
    "RequestHandler.finish_response (aiohttp/web_protocol.py)",
    "StreamResponse.prepare (aiohttp/web_response.py)",
    "StreamResponse.write (aiohttp/web_response.py)",
    "gc_collect_main (libpython3.11.so.1.0)",
)


@dataclass(frozen=True)
class Sample:
    """One collapsed stack (outermost frame first) and how many samples it got."""

    frames: tuple[str, ...]
    count: int


def read_collapsed(path: Path) -> list[Sample]:
    """py-spy's raw format: ``frame;frame;... count`` per line, line numbers dropped."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = tuple(_LINE_NO.sub(")", f) for f in stack.split(";"))
            out.append(Sample(frames, int(count)))
    return out


def _is_python(frame: str) -> bool:
    return ".py)" in frame


def area(frames: Sequence[str]) -> str:
    """Which part of the stack a sample's CPU belongs to, innermost decisive frame first."""
    leaf = frames[-1]
    if "gc_collect" in leaf or "gc_" in leaf.split(" (")[0]:
        return "garbage collector"
    if leaf.split(" (")[0] in _LIBC_CALLS and "libc" in leaf:
        return "syscalls (socket read/write, epoll)"
    python = [f for f in frames if _is_python(f)]
    inner = python[-1] if python else ""
    if "mixroute/" in inner:
        return "mixroute's own code"
    if "prometheus_client/" in inner:
        return "metrics (prometheus_client)"
    if "asyncio/timeouts.py" in inner:
        return "asyncio.timeout"
    if "aiohttp/" in inner:
        if any(
            (
                "ClientSession." in f
                or "client_proto" in f
                or "ClientResponse." in f
                or "ClientRequest." in f
            )
            for f in python
        ):
            return "aiohttp client (upstream side)"
        return "aiohttp server (client side)"
    if inner.startswith(("Runner.run", "run (uvloop")):
        return "event loop, C parsers, refcounting (uvloop/CPython C)"
    return "other Python" if inner else "other native"


def _share(counter: Counter[str], total: int, top: int) -> list[dict[str, Any]]:
    return [
        {"name": name, "samples": n, "pct": round(100 * n / total, 1)}
        for name, n in counter.most_common(top)
    ]


def summarise(samples: Iterable[Sample], top: int = 15) -> dict[str, Any]:
    """Self time per function, CPU per area, and inclusive time of the key functions."""
    samples = list(samples)
    total = sum(s.count for s in samples) or 1
    self_time: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for s in samples:
        self_time[s.frames[-1]] += s.count
        areas[area(s.frames)] += s.count
        for name in set(s.frames) & set(KEY_FUNCTIONS):
            inclusive[name] += s.count
    return {
        "samples": total,
        "self": _share(self_time, total, top),
        "areas": _share(areas, total, len(areas)),
        "inclusive": [
            {"name": k, "samples": inclusive[k], "pct": round(100 * inclusive[k] / total, 1)}
            for k in KEY_FUNCTIONS
            if inclusive[k]
        ],
    }


# --------------------------------------------------------------------------- running


def profile_once(
    wrk: str, url: str, gateway: bl.Service, stream: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """wrk's 64-connection load for the whole window, py-spy on the gateway in its middle."""
    script = bl.write_wrk_script(gateway.log_path.parent, stream)
    out = bl.RESULTS_DIR / f"profile-{'stream' if stream else 'plain'}.txt"
    load_s = args.duration + args.warmup + 3
    load = subprocess.Popen(
        [wrk, "-t2", "-c64", f"-d{load_s}s", "--timeout", "10s", "-s", str(script), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(args.warmup)
        cpu_before, started = bl.cpu_seconds([gateway.proc.pid]), time.monotonic()
        spy = [
            str(bl.BENCH_VENV / "bin" / "py-spy"),
            "record",
            "--pid",
            str(gateway.proc.pid),
            "--duration",
            str(args.duration),
            "--rate",
            str(args.rate),
            "--format",
            "raw",
            "--output",
            str(out),
        ]
        spy += ["--native"] if args.native else ["--nonblocking"]
        subprocess.run(spy, check=True, capture_output=True, timeout=args.duration + 60)
        cpu_pct = (
            100 * (bl.cpu_seconds([gateway.proc.pid]) - cpu_before) / (time.monotonic() - started)
        )
        output, _ = load.communicate(timeout=load_s + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    line = next((ln for ln in output.splitlines() if ln.startswith("WRKJSON ")), "WRKJSON {}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    rps = raw["requests"] / (raw["duration_us"] / 1e6) if raw else 0.0
    return {
        "mode": "stream" if stream else "plain",
        "raw_stacks": bl.rel(out),
        "gateway_cpu_pct": round(cpu_pct, 1),
        "rps_under_profiler": round(rps, 1),
        **summarise(read_collapsed(out), args.top),
    }


def render_doc_section(data: dict[str, Any]) -> str:
    """Tables for docs/benchmarks.md, generated from profile.json."""
    lines = [
        f"Generated by `.venv/bin/python bench/profile_hotpath.py` on {data['generated']}: py-spy "
        f"{data['py_spy']} at {data['rate']} Hz for {data['duration_s']} s "
        f"({'--native, blocking' if data['native'] else '--nonblocking'}) on `mixroute serve "
        "--workers 1` under wrk's 64 connections, same 2 cores as the backend and wrk. "
        "Percentages are of on-CPU samples of the gateway process.",
    ]
    for run in data["runs"]:
        lines += [
            "",
            f"**{run['mode']}** ({run['samples']} samples, gateway at "
            f"{run['gateway_cpu_pct']:.0f}% of a core, {run['rps_under_profiler']:.0f} req/s "
            "while sampled; stacks in "
            f"`{run['raw_stacks']}`)",
            "",
            "| area (innermost frame) | % |",
            "|---|---|",
            *[f"| {a['name']} | {a['pct']:.1f} |" for a in run["areas"]],
            "",
            "| top self time | % |",
            "|---|---|",
            *[f"| `{s['name']}` | {s['pct']:.1f} |" for s in run["self"][:12]],
            "",
            "| inclusive time | % |",
            "|---|---|",
            *[f"| `{s['name']}` | {s['pct']:.1f} |" for s in run["inclusive"]],
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds sampled per mode")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rate", type=int, default=100, help="samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument(
        "--no-native",
        dest="native",
        action="store_false",
        help="Python frames only, --nonblocking (less perturbation, less detail)",
    )
    p.add_argument("--no-doc", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bl.ensure_bench_env()
    wrk = bl.ensure_wrk()
    bl.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    bl.wait_for_quiet()
    with bl.running_services() as services:
        _backend, backend_url = start_backend(services)
        target = start_mixroute(services, backend_url, workers=1)
        assert target.gateway is not None
        runs = []
        for stream in (False, True):
            bl.log(f"profiling mixroute-1w, {'streamed' if stream else 'plain'} requests")
            runs.append(profile_once(wrk, target.chat_url, target.gateway, stream, args))
    data = {
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "py_spy": bl.machine_info(wrk)["packages"]["py-spy"],
        "rate": args.rate,
        "duration_s": args.duration,
        "native": args.native,
        "runs": runs,
    }
    out = bl.RESULTS_DIR / "profile.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    section = render_doc_section(data)
    print(section)
    bl.log(f"wrote {bl.rel(out)}")
    if not args.no_doc:
        bl.replace_between_markers(bl.DOC_PATH, "profile", section)
        bl.log(f"updated {bl.rel(bl.DOC_PATH)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        bl.log("interrupted; all servers stopped")
        sys.exit(130)
