"""docs/metrics.md and the registry name the same metrics, with the same types and labels."""

from __future__ import annotations

import re

from prometheus_client.metrics import MetricWrapperBase

from helpers import ROOT
from mixroute.observability.metrics import Metrics

ROW = re.compile(r"^\| `(mixroute_\w+)` \| (counter|gauge|histogram) \|([^|]*)\|")


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, kind, labels = match.groups()
            assert name not in table, f"{name} is documented twice"
            table[name] = (kind, tuple(sorted(x.strip() for x in labels.split(",") if x.strip())))
    return table


def declared() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Names as a scrape shows them: counters with their ``_total`` suffix."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            kind = metric._type
            name = metric._name + ("_total" if kind == "counter" else "")
            found[name] = (kind, tuple(sorted(metric._labelnames)))
    return found


def test_docs_table_matches_the_registry() -> None:
    docs, code = documented(), declared()
    assert len(code) > 20
    assert sorted(set(code) - set(docs)) == [], "declared but not documented"
    assert sorted(set(docs) - set(code)) == [], "documented but not declared"
    for name, (kind, labels) in code.items():
        assert docs[name] == (kind, labels), f"{name}: docs say {docs[name]}, code {kind} {labels}"


def test_registry_holds_exactly_the_declared_metrics() -> None:
    """Nothing registers a metric outside the ``Metrics`` attributes the docs are checked
    against."""
    metrics = Metrics()
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in metrics.registry.collect()
    }
    assert families == set(declared())
