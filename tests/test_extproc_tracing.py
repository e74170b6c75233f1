"""Tracing in the Envoy layout: real Envoy, ``python -m mixroute.extproc`` exporting OTLP to
a collector in this process, real simulators, the real openai SDK."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from helpers import SimPool, Topology, free_port, stop_process, wait_for_status, wait_port
from mixroute.config.loader import validate_config
from mixroute.demo import DEMO_MODELS, demo_config
from mixroute.extproc.envoy_config import clusters_from_config

pytestmark = pytest.mark.timeout(60)

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT_ID = "00f067aa0ba902b7"
ROOT = "POST /v1/chat/completions"


class Collector:
    """An OTLP/HTTP trace collector: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                export = ExportTraceServiceRequest.FromString(body)
                with collector._lock:
                    for resource in export.resource_spans:
                        for scope in resource.scope_spans:
                            collector.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, timeout: float = 15.0) -> list[Span]:
        """The spans of one trace, once its root has arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                spans = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if any(s.name == ROOT for s in spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"no root span for trace {trace_id}")


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Collector]]:
    workdir = tmp_path_factory.mktemp("extproc-tracing")
    pool = SimPool()
    top = Topology()
    collector = Collector()
    try:
        for model in DEMO_MODELS:
            pool.start(model, f"{model}-0", wait=False)
        for sim in pool.sims:
            sim.wait_healthy()
        raw = demo_config(pool.sims)  # type: ignore[arg-type]
        raw["guards"]["pii"]["enabled"] = False  # presidio's load time buys nothing here
        raw["observability"] = {"tracing": {"enabled": True, "otlp_endpoint": collector.url}}
        path = workdir / "traced.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        grpc = free_port()
        argv = [sys.executable, "-m", "mixroute.extproc", "--config", str(path)]
        # The batch exporter sends every 100 ms instead of every 5 s (an OpenTelemetry setting).
        os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"
        try:
            process = top.start([*argv, "--port", str(grpc)], workdir / "extproc.log")
        finally:
            del os.environ["OTEL_BSP_SCHEDULE_DELAY"]
        settings = {
            "clusters": clusters_from_config(validate_config(raw)),
            "processor": [f"127.0.0.1:{grpc}"],
            "default_model": raw["routing"]["default_model"],
        }
        top.start_envoy("traced", settings, workdir)
        wait_port(grpc, process)
        wait_for_status(top.urls["traced-admin"] + "/ready", 200, timeout=30)
        yield top, collector
    finally:
        for process in reversed(top.processes):
            stop_process(process)
        pool.stop_all()
        collector.server.shutdown()


def test_a_client_trace_goes_through_the_processor_to_the_model(
    traced: tuple[Topology, Collector],
) -> None:
    top, collector = traced
    api = openai.OpenAI(base_url=top.urls["traced"] + "/v1", api_key="x", max_retries=0)
    raw = api.chat.completions.with_raw_response.create(
        model="MoM",
        messages=[{"role": "user", "content": "What is the integral of x^2 from 0 to 3?"}],
        extra_headers={
            "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01",
            "x-sim-echo": "1",
            "x-mixroute-cache-control": "no-cache",
        },
    )
    assert raw.headers["x-mixroute-model"] == "math-llm"
    seen = json.loads(raw.parse().choices[0].message.content or "{}")
    _version, trace_id, parent_id, flags = seen["headers"]["traceparent"].split("-")
    assert trace_id == CLIENT_TRACE_ID and flags == "01"
    assert parent_id != CLIENT_PARENT_ID  # the processor's span is the model server's parent

    spans = collector.trace(CLIENT_TRACE_ID)
    by_name = {s.name: s for s in spans}
    root = by_name[ROOT]
    assert root.parent_span_id.hex() == CLIENT_PARENT_ID
    assert root.span_id.hex() == parent_id
    for stage in ("mixroute.parse", "mixroute.decision", "mixroute.guards", "mixroute.cache"):
        assert by_name[stage].parent_span_id == root.span_id, stage
    assert "mixroute.signal.domain" in by_name
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["mixroute.model"].string_value == "math-llm"
    assert "http.response.status_code" not in attributes  # forwarded: Envoy relays the answer


def test_a_refusal_is_a_whole_trace(traced: tuple[Topology, Collector]) -> None:
    top, collector = traced
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    api = openai.OpenAI(base_url=top.urls["traced"] + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(
            model="no-such-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
    root = {s.name: s for s in collector.trace(trace_id)}[ROOT]
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["http.response.status_code"].int_value == 404
    assert attributes["error.type"].string_value == "model_not_found"
