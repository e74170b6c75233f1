"""Shared plumbing for the benchmark scripts: setup, processes, wrk, machine facts, docs.

The scripts run from ``.venv`` (the one ``make install`` builds), so everything they need
beyond it is set up here, idempotently: a separate ``.venv-bench`` for the peer gateways
(their pins conflict with ours) and Debian's ``wrk``. All servers bind 127.0.0.1 on ports
picked at run time, each in its own process group so that stopping it stops its children.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
DOC_PATH = ROOT / "docs" / "benchmarks.md"
BENCH_VENV = ROOT / ".venv-bench"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"
HOST = "127.0.0.1"
MODEL = "bench-model"
# A random-looking but fixed key: LiteLLM refuses to start without a master key, and every
# target gets the same request, header included, so the comparison stays like for like.
API_KEY = "sk-bench-5f0e3c1a9b7d42e8a6c4f1d3b2e0a9c8"

VLLM_ROUTER_REQ = "vllm-router==0.1.17"
LITELLM_VERSION = "1.110.2"
PYSPY_REQ = "py-spy==0.4.3"
BENCH_REQUIREMENTS = (VLLM_ROUTER_REQ, f"litellm[proxy]=={LITELLM_VERSION}", PYSPY_REQ)
# Packages published in lockstep with LiteLLM that its ``proxy`` extra pins exactly; when the
# index lacks the pinned release the proxy is installed without them (see ensure_bench_env).
LITELLM_COMPANIONS = ("litellm-proxy", "litellm-proxy-extras", "litellm-enterprise")


# --------------------------------------------------------------------------- setup


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the results table."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BENCH_PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _marker_path() -> Path:
    return BENCH_VENV / ".installed.json"


def _litellm_proxy_requirements() -> list[str]:
    """The ``proxy`` extra of the installed LiteLLM, read from its own metadata."""
    code = (
        "import json; from importlib.metadata import requires;"
        "from packaging.requirements import Requirement\n"
        "out = []\n"
        "for r in requires('litellm') or []:\n"
        "    q = Requirement(r)\n"
        "    if q.marker and q.marker.evaluate({'extra': 'proxy'})"
        " and not q.marker.evaluate({'extra': ''}):\n"
        "        q.marker = None; out.append(str(q))\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run(
        [str(BENCH_PYTHON), "-c", code], capture_output=True, text=True, check=True
    )
    return list(json.loads(done.stdout))


def _install_litellm_without_companions() -> list[str]:
    """Install LiteLLM and its proxy extra minus the companion pins the index lacks.

    The proxy server itself ships inside the ``litellm`` wheel; the companions add DB
    migrations and enterprise hooks that a pass-through benchmark never touches.
    """
    base = _pip([VLLM_ROUTER_REQ, f"litellm=={LITELLM_VERSION}", PYSPY_REQ])
    if base.returncode:
        raise RuntimeError(f"pip install into {BENCH_VENV} failed:\n{base.stderr[-3000:]}")
    reqs = _litellm_proxy_requirements()
    dropped = [r for r in reqs if re.split(r"[\s=<>!~\[;]", r, maxsplit=1)[0] in LITELLM_COMPANIONS]
    kept = [r for r in reqs if r not in dropped]
    extra = _pip([*kept, f"litellm=={LITELLM_VERSION}", VLLM_ROUTER_REQ])
    if extra.returncode:
        raise RuntimeError(f"pip install of LiteLLM's proxy extra failed:\n{extra.stderr[-3000:]}")
    return dropped


def ensure_bench_env() -> dict[str, Any]:
    """Create ``.venv-bench`` with the peers once; later runs read the marker and return."""
    wanted = list(BENCH_REQUIREMENTS)
    marker = _marker_path()
    if BENCH_PYTHON.exists() and marker.exists():
        info: dict[str, Any] = json.loads(marker.read_text())
        if info.get("requirements") == wanted:
            return info
    if not BENCH_PYTHON.exists():
        log(f"creating {BENCH_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    log(f"installing {' '.join(wanted)} into {BENCH_VENV.name} (once; a few minutes)")
    full = _pip(wanted)
    dropped: list[str] = []
    if full.returncode:
        log(
            "litellm[proxy] did not resolve on this index; installing its proxy extra "
            "without the companion packages " + ", ".join(LITELLM_COMPANIONS)
        )
        dropped = _install_litellm_without_companions()
    info = {"requirements": wanted, "litellm_proxy_extra_dropped": dropped}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return info


def ensure_wrk() -> str:
    """Return the path of ``wrk``, installing Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing and this is not root: run `apt-get install -y wrk`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("installing wrk with apt-get")
    cmd = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk but it is not on PATH")
    return found


# --------------------------------------------------------------------------- processes


def sim_argv(port: int, model: str, *extra: str) -> list[str]:
    """The command line of one simulator (``mixroute.sim``) on ``HOST:port``."""
    sim = [sys.executable, "-m", "mixroute.sim"]
    return [*sim, "--host", HOST, "--port", str(port), "--model", model, *extra]


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the tiny race until the server binds is fine)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One server started by the benchmark, in its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def pids(self) -> list[int]:
        """Every live process of the group (a multi-worker gateway forks its workers)."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.proc.pid:  # field 5 of stat: process group id
                    out.append(int(stat.parent.name))
        return out


@dataclass
class Services:
    """Starts servers and guarantees they are all stopped, whatever ends the run."""

    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mixroute-bench-")))
    started: list[Service] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Service:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                cwd=self.log_dir,
            )
        service = Service(name, proc, log_path)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            _stop_group(service.proc)
        self.started.clear()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=8)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def running_services() -> Iterator[Services]:
    """A Services whose servers die with the run: on return, exception, Ctrl-C or SIGTERM."""
    services = Services()

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield services
    finally:
        services.stop_all()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(services.log_dir, ignore_errors=True)


def http(
    method: str, url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One request with the standard library; (status, body), status 0 when unreachable."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_ready(service: Service, url: str, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if the server died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited early:\n{service.log_tail()}")
        if http("GET", url, timeout=2.0)[0] == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"{service.name} not ready at {url} after {timeout_s:g}s:\n{service.log_tail()}"
    )


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU seconds of ``pids`` so far (from /proc, no extra dependency)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def system_cpu_seconds() -> tuple[float, float]:
    """CPU seconds all cores spent so far, from /proc/stat: (tasks, interrupts).

    Tasks is user+nice+system+steal; interrupts (irq+softirq) is kept apart because on this
    kernel loopback TCP work done in softirq is charged to no process, so it is not "other
    work on the machine" but part of every target's cost.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + steal) / tick, (irq + softirq) / tick


def children_cpu_seconds() -> float:
    """CPU seconds of this script's finished children so far: that is wrk's share."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait_s: float = 120.0, busy_limit_pct: float = 25.0) -> float:
    """Wait (bounded) until the machine is nearly idle; return the busy % last seen.

    Other work on the same 2 cores skews every ratio, so the run starts when the machine
    is quiet if it can, and each measurement records the CPU used by anything else anyway.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = sum(system_cpu_seconds())
        time.sleep(1.0)
        busy_pct = 100 * (sum(system_cpu_seconds()) - before)
        if busy_pct <= busy_limit_pct or time.monotonic() >= deadline:
            return busy_pct
        log(f"machine busy ({busy_pct:.0f}% of a core used by other work); waiting")


# --------------------------------------------------------------------------- load


def chat_body(stream: bool) -> bytes:
    """The small chat request every target gets: 8 output tokens, optionally streamed."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 8,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


_LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,'
    .. '"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,'
    .. '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"mean_us":%.1f,"max_us":%.0f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def write_wrk_script(directory: Path, stream: bool) -> Path:
    """A wrk Lua script that POSTs the chat body and prints its numbers as one JSON line."""
    path = directory / ("chat-stream.lua" if stream else "chat.lua")
    lua = (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{chat_body(stream).decode()}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n' + _LUA_DONE
    )
    path.write_text(lua)
    return path


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run measured; latencies in milliseconds."""

    connections: int
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration_s: int) -> WrkRun:
    """Run wrk once: one thread per 32 connections (at most 2, the machine has 2 cores).

    wrk takes whole seconds only, hence the int.
    """
    threads = max(1, min(2, connections // 32))
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=duration_s + 60
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result for {url}:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    errors = sum(int(raw[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return WrkRun(
        connections=connections,
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        requests=int(raw["requests"]),
        errors=errors,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
    )


# --------------------------------------------------------------------------- facts


def _pkg_version(python: Path, name: str) -> str | None:
    code = f"from importlib.metadata import version; print(version({name!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def _wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(wrk: str) -> dict[str, Any]:
    """Facts a reader needs to compare runs: cores, CPU, Python, and every package version."""
    ours = Path(sys.executable)
    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "packages": {
            "mixroute": _pkg_version(ours, "mixroute"),
            "aiohttp": _pkg_version(ours, "aiohttp"),
            "uvloop": _pkg_version(ours, "uvloop"),
            "vllm-router": _pkg_version(BENCH_PYTHON, "vllm-router"),
            "litellm": _pkg_version(BENCH_PYTHON, "litellm"),
            "py-spy": _pkg_version(BENCH_PYTHON, "py-spy"),
            "wrk": _wrk_version(wrk),
        },
    }


# --------------------------------------------------------------------------- docs


def replace_between_markers(path: Path, name: str, content: str) -> None:
    """Regenerate one marked section of a doc, keeping the hand-written rest as it is."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{content.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def rel(path: Path) -> str:
    """A repo-relative path for messages and docs."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)
