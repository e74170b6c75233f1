"""``mixroute bench routing --quick --json`` prints one JSON object with every policy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
def test_bench_routing_json_contract() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixroute.cli",
            "bench",
            "routing",
            "--quick",
            "--json",
            "--policies",
            "round_robin,prefix",
            "--users",
            "4",
            "--rounds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    report = json.loads(done.stdout)
    assert set(report["policies"]) == {"round_robin", "prefix"}
    for row in report["policies"].values():
        assert set(row) >= {"ttft_p50_ms", "ttft_p99_ms", "rps"}
        assert row["ttft_p50_ms"] > 0 and row["rps"] > 0 and row["errors"] == 0
