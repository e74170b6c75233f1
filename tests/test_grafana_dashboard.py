"""deploy/grafana/mixroute.json: a dashboard Grafana can import, whose queries name only
series the gateway exports, with labels those series have."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from helpers import ROOT
from mixroute.observability.metrics import Metrics

DASHBOARD = ROOT / "deploy" / "grafana" / "mixroute.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["query"]["query"])
    return found


def exported() -> tuple[set[str], dict[str, set[str]]]:
    """Every sample name a scrape shows once each metric has a value (counters' ``_total``,
    histograms' ``_bucket``/``_sum``/``_count``), and each metric's labels by sample name."""
    metrics = Metrics()
    labels: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names = tuple(metric._labelnames)
        child = metric.labels(*["x"] * len(names)) if names else metric
        if isinstance(child, Counter):
            child.inc()
        elif isinstance(child, Gauge):
            child.set(1)
        elif isinstance(child, Histogram):
            child.observe(0.1)
        base = metric._name
        for suffix in ("", "_total", "_bucket", "_sum", "_count"):
            labels[base + suffix] = set(names) | ({"le"} if suffix == "_bucket" else set())
    samples = {
        s.name
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    return samples, labels


def test_dashboard_shape() -> None:
    dashboard = load()
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"] and panel["type"] in ("timeseries", "stat")
        assert panel["datasource"] == DATASOURCE
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["refId"] and target["expr"]


def test_queries_name_exported_series_and_their_labels() -> None:
    samples, labels = exported()
    referenced: set[str] = set()
    for expr in queries(load()):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names = re.findall(r"\bmixroute_\w+", expr)
        assert names, expr
        referenced |= set(names)
        for name in names:
            assert name in samples, f"{name} is not exported ({expr})"
        for name, selector in re.findall(r"\b(mixroute_\w+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in labels[name], f"{name} has no label {label}"
        grouped = {g.strip() for by in re.findall(r"\bby \(([^)]*)\)", expr) for g in by.split(",")}
        assert grouped <= set().union(*(labels[n] for n in names)), expr
        if "histogram_quantile" in expr:
            assert all(n.endswith("_bucket") for n in names) and "le" in grouped, expr
    # The panels the issue asks for are there.
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in referenced}
    for wanted in (
        "mixroute_requests_by_route_total",
        "mixroute_request_errors_total",
        "mixroute_request_duration_seconds",
        "mixroute_time_to_first_token_seconds",
        "mixroute_time_per_output_token_seconds",
        "mixroute_tokens_total",
        "mixroute_cache_lookups_total",
        "mixroute_guard_decisions_total",
        "mixroute_endpoint_in_flight",
        "mixroute_endpoint_available",
        "mixroute_endpoint_engine_waiting",
        "mixroute_endpoint_engine_kv_usage_ratio",
        "mixroute_decision_duration_seconds",
    ):
        assert wanted in bases, f"no panel uses {wanted}"
