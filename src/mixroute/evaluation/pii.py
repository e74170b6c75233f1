"""Span-level evaluation of the PII detector on a JSON Lines file.

A predicted span is correct when its type equals the gold span's type and the two overlap
by at least half of the *gold* span's length. Half, not exact offsets, because the data
rules and the detector can legitimately disagree on a trailing word ("Strasbourg next")
or a title, while a prediction that covers under half of the gold value would leave most
of it unmasked. Matching is one-to-one (each gold span can be claimed once, by the
prediction with the largest overlap), so two predictions on one gold span count one true
positive and one false positive.

The false-positive rate is per *line*: the share of PII-free lines (``"entities": []``)
with any detection at all, since a single spurious span is what rewrites a clean prompt.
Latency is per prompt, single thread, measured after one warm-up pass.

Run: ``python -m mixroute.evaluation.pii src/mixroute/data/guards/pii/dev.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mixroute.guards.entities import PIIEntity
from mixroute.guards.pii import PRIORITY

MIN_GOLD_OVERLAP = 0.5

STRUCTURED_TYPES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IP_ADDRESS",
    "IBAN_CODE",
)
NAME_AND_ADDRESS_TYPES = ("PERSON", "LOCATION", "STREET_ADDRESS")


class Detector(Protocol):
    """What the evaluation needs: ``PIIDetector`` satisfies it."""

    def detect(self, text: str) -> list[PIIEntity]: ...


@dataclass(frozen=True)
class GoldSpan:
    type: str
    start: int
    end: int


@dataclass(frozen=True)
class Example:
    text: str
    entities: tuple[GoldSpan, ...]


@dataclass(frozen=True)
class TypeStats:
    """Counts and rates for one entity type."""

    type: str
    support: int  # gold spans
    predicted: int
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.support if self.support else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass(frozen=True)
class PIIReport:
    """Result of one evaluation run; ``format()`` renders the text table."""

    path: str
    lines: int
    per_type: tuple[TypeStats, ...]
    clean_lines: int
    clean_lines_flagged: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_p50_clean_ms: float
    latency_p50_without_ner_ms: float | None  # prompts the pre-filter kept away from spaCy
    latency_p50_with_ner_ms: float | None
    ner_runs: int | None  # spaCy passes over the whole file, when the detector counts them
    ner_runs_clean: int | None  # ... and over its PII-free lines

    @property
    def fp_rate_clean(self) -> float:
        return self.clean_lines_flagged / self.clean_lines if self.clean_lines else 0.0

    def stats(self, entity_type: str) -> TypeStats:
        for row in self.per_type:
            if row.type == entity_type:
                return row
        raise KeyError(entity_type)

    def micro(self, types: Sequence[str]) -> TypeStats:
        """Pooled counts over several types (e.g. all structured identifiers)."""
        rows = [r for r in self.per_type if r.type in types]
        return TypeStats(
            "+".join(types),
            sum(r.support for r in rows),
            sum(r.predicted for r in rows),
            sum(r.true_positives for r in rows),
        )

    def format(self) -> str:
        lines = [
            f"PII detector evaluation: {self.path} ({self.lines} lines)",
            "match rule: same type and overlap >= 50% of the gold span, one-to-one",
            "",
            f"{'type':<16}{'support':>8}{'pred':>6}{'tp':>6}{'precision':>11}{'recall':>8}"
            f"{'f1':>7}",
        ]
        for row in self.per_type:
            lines.append(
                f"{row.type:<16}{row.support:>8}{row.predicted:>6}{row.true_positives:>6}"
                f"{row.precision:>11.3f}{row.recall:>8.3f}{row.f1:>7.3f}"
            )
        for label, types in (
            ("structured", STRUCTURED_TYPES),
            ("names+address", NAME_AND_ADDRESS_TYPES),
        ):
            row = self.micro(types)
            lines.append(
                f"{label:<16}{row.support:>8}{row.predicted:>6}{row.true_positives:>6}"
                f"{row.precision:>11.3f}{row.recall:>8.3f}{row.f1:>7.3f}"
            )
        lines += [
            "",
            f"PII-free lines flagged: {self.clean_lines_flagged}/{self.clean_lines}"
            f" = {self.fp_rate_clean:.1%}",
            f"latency per prompt (single thread): p50 {self.latency_p50_ms:.2f} ms, "
            f"p99 {self.latency_p99_ms:.2f} ms; p50 on PII-free lines "
            f"{self.latency_p50_clean_ms:.2f} ms",
        ]
        if self.ner_runs is not None and self.ner_runs_clean is not None:
            lines.append(
                f"spaCy NER ran on {self.ner_runs}/{self.lines} lines "
                f"({self.ner_runs_clean}/{self.clean_lines} PII-free lines)"
            )
        if self.latency_p50_without_ner_ms is not None:
            lines.append(f"p50 without the NER pass: {self.latency_p50_without_ner_ms:.2f} ms")
        if self.latency_p50_with_ner_ms is not None:
            lines.append(f"p50 with the NER pass: {self.latency_p50_with_ner_ms:.2f} ms")
        return "\n".join(lines)


def load_examples(path: Path) -> list[Example]:
    """Read ``{"text", "entities": [{"type", "start", "end"}]}`` lines."""
    examples = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            spans = tuple(GoldSpan(e["type"], e["start"], e["end"]) for e in row["entities"])
            examples.append(Example(row["text"], spans))
    return examples


def match_spans(gold: Sequence[GoldSpan], predicted: Sequence[PIIEntity]) -> int:
    """Number of one-to-one matches (same type, overlap >= half the gold length)."""
    pairs = []
    for gi, g in enumerate(gold):
        for pi, p in enumerate(predicted):
            if p.type != g.type:
                continue
            overlap = min(g.end, p.end) - max(g.start, p.start)
            if overlap >= MIN_GOLD_OVERLAP * (g.end - g.start) and overlap > 0:
                pairs.append((overlap, gi, pi))
    used_gold: set[int] = set()
    used_pred: set[int] = set()
    for _, gi, pi in sorted(pairs, reverse=True):
        if gi not in used_gold and pi not in used_pred:
            used_gold.add(gi)
            used_pred.add(pi)
    return len(used_gold)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def evaluate_pii(detector: Detector, path: Path | str) -> PIIReport:
    """Per-type precision/recall, FP rate on PII-free lines and latency for one file."""
    path = Path(path)
    examples = load_examples(path)
    for example in examples:  # warm-up: first calls pay for lazy regex compilation
        detector.detect(example.text)
    counts_ner = isinstance(getattr(detector, "ner_calls", None), int)
    support: dict[str, int] = {}
    predicted: dict[str, int] = {}
    hits: dict[str, int] = {}
    latencies: list[float] = []
    by_ner: dict[bool, list[float]] = {False: [], True: []}
    clean_latencies: list[float] = []
    clean_flagged = 0
    ner_runs = 0
    ner_runs_clean = 0
    for example in examples:
        before = int(getattr(detector, "ner_calls", 0))
        started = time.perf_counter()
        found = detector.detect(example.text)
        elapsed = (time.perf_counter() - started) * 1000.0
        ran_ner = counts_ner and int(getattr(detector, "ner_calls", 0)) > before
        latencies.append(elapsed)
        by_ner[ran_ner].append(elapsed)
        ner_runs += ran_ner
        if not example.entities:
            clean_latencies.append(elapsed)
            clean_flagged += bool(found)
            ner_runs_clean += ran_ner
        for g in example.entities:
            support[g.type] = support.get(g.type, 0) + 1
        for p in found:
            predicted[p.type] = predicted.get(p.type, 0) + 1
        for kind in {g.type for g in example.entities} | {p.type for p in found}:
            hits[kind] = hits.get(kind, 0) + match_spans(
                [g for g in example.entities if g.type == kind],
                [p for p in found if p.type == kind],
            )
    kinds = [k for k in PRIORITY if k in support or k in predicted]
    kinds += sorted((set(support) | set(predicted)) - set(kinds))
    rows = tuple(
        TypeStats(k, support.get(k, 0), predicted.get(k, 0), hits.get(k, 0)) for k in kinds
    )
    return PIIReport(
        path=str(path),
        lines=len(examples),
        per_type=rows,
        clean_lines=len(clean_latencies),
        clean_lines_flagged=clean_flagged,
        latency_p50_ms=statistics.median(latencies) if latencies else 0.0,
        latency_p99_ms=_percentile(latencies, 0.99),
        latency_p50_clean_ms=statistics.median(clean_latencies) if clean_latencies else 0.0,
        latency_p50_without_ner_ms=_median(by_ner[False]) if counts_ner else None,
        latency_p50_with_ner_ms=_median(by_ner[True]) if counts_ner else None,
        ner_runs=ner_runs if counts_ner else None,
        ner_runs_clean=ner_runs_clean if counts_ner else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the default detector (all ten types) on one file and print the table."""
    from mixroute.guards.pii import PIIDetector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", type=Path)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    detector = PIIDetector(PRIORITY, score_threshold=args.threshold)
    print(evaluate_pii(detector, args.path).format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
