"""``mixroute demo``: starts, serves, stops with every child gone; two can run side by side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from helpers import alive, child_pids, free_port, wait_for_status


def start_demo(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mixroute.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.timeout(180)
def test_two_demos_serve_and_stop_cleanly() -> None:
    ports = [free_port(), free_port()]
    demos = [start_demo(port) for port in ports]
    try:
        for port in ports:
            wait_for_status(f"http://127.0.0.1:{port}/ready", 200, timeout=90)
        children = {demo.pid: child_pids(demo.pid) for demo in demos}
        for pids in children.values():
            assert len(pids) >= 6  # at least 3 models x 2 replicas
        for port in ports:
            api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
            models = {m.id for m in api.models.list()}
            assert {"MoM", "auto"} <= models and len(models) >= 5
            seen_endpoints = set()
            for i in range(4):
                raw = api.chat.completions.with_raw_response.create(
                    model="math-llm", messages=[{"role": "user", "content": f"2+{i}?"}]
                )
                assert raw.headers["x-mixroute-cache"] == "miss"
                seen_endpoints.add(raw.headers["x-mixroute-endpoint"])
            assert seen_endpoints == {"math-llm-0", "math-llm-1"}  # round-robin in the demo
            again = api.chat.completions.with_raw_response.create(
                model="math-llm", messages=[{"role": "user", "content": "2+3?"}]
            )
            assert again.headers["x-mixroute-cache"] == "hit"
            auto = api.chat.completions.create(
                model="MoM", messages=[{"role": "user", "content": "hello"}]
            )
            assert auto.model in models
        for demo in demos:
            demo.send_signal(signal.SIGTERM)
        for demo in demos:
            assert demo.wait(30) == 0
        deadline = time.monotonic() + 10
        leftovers = {pid for pids in children.values() for pid in pids if alive(pid)}
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.1)
            leftovers = {pid for pid in leftovers if alive(pid)}
        assert not leftovers
    finally:
        for demo in demos:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
