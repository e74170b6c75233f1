"""Held-out evaluation of the jailbreak detector: ranking, operating points, latency.

A guard is judged at an operating point, not by accuracy: how many attacks it catches
(recall) against how many ordinary users it blocks (false-positive rate). Benign and
hard-benign prompts ("How do I kill a zombie process?") are reported separately because
they fail in different ways, and the threshold that reaches 90% recall is reported next to
the default one so a reader can see the trade-off. ROC AUC is computed here with numpy
(Mann-Whitney U with tied ranks averaged) so the gateway never needs scikit-learn.

Run ``python -m mixroute.evaluation.jailbreak [--ablation]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mixroute.guards.jailbreak import JailbreakDetector
from mixroute.semantic.embedding import EmbeddingModel, Matrix

BENIGN = "benign"
HARD_BENIGN = "hard_benign"
TARGET_RECALL = 0.90
LEAK_THRESHOLD = 0.92

Scores = Sequence[float] | npt.NDArray[np.floating]
Labels = Sequence[int] | npt.NDArray[np.integer]


def roc_auc(scores: Scores, labels: Labels) -> float:
    """Probability that a random attack outscores a random benign prompt (ties count half).

    Equal to the area under the ROC curve; computed from average ranks, O(n log n).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs at least one positive and one negative example")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.arange(1, len(s) + 1, dtype=np.float64)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    if np.any(counts > 1):  # average the ranks of tied scores
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    u = ranks[y].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def threshold_for_recall(scores: Scores, labels: Labels, recall: float) -> float:
    """The highest threshold t with at least ``recall`` of the positives scoring >= t."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    positives = np.sort(s[y])[::-1]
    if positives.size == 0:
        raise ValueError("no positive examples")
    # round() first so 0.9 * 120 = 108.00000000000001 does not ask for a 109th attack
    needed = max(1, int(np.ceil(round(recall * positives.size, 9))))
    return float(positives[min(needed, positives.size) - 1])


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    threshold: float
    recall: float
    fpr_benign: float
    fpr_hard_benign: float
    fpr_all: float


@dataclass(frozen=True)
class JailbreakEvaluation:
    title: str
    count: int
    attacks: int
    benign: int
    hard_benign: int
    auc: float
    auc_hard_benign: float  # attacks against hard-benign prompts only
    default: OperatingPoint
    at_target_recall: OperatingPoint
    at_half: OperatingPoint
    recall_by_kind: dict[str, tuple[int, int]]  # kind -> (caught, total) at the default
    false_positives: list[tuple[float, str, str]]  # (score, kind, text) at the default
    missed: list[tuple[float, str, str]]
    score_p50_ms: float | None = None  # detector.score only (head + lexical)
    score_p90_ms: float | None = None
    total_p50_ms: float | None = None  # embedding of the text + detector.score
    total_p90_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def format(self, examples: int = 12) -> str:
        """Plain-text report: counts, AUC, operating points, recall by kind, latency."""
        lines = [self.title] if self.title else []
        lines += [
            f"examples        {self.count}  (attacks {self.attacks}, benign {self.benign}, "
            f"hard benign {self.hard_benign})",
            f"ROC AUC         {self.auc:.4f}   (attacks vs hard benign only: "
            f"{self.auc_hard_benign:.4f})",
            "",
            f"{'operating point':<22}{'threshold':>10}{'recall':>8}{'FP benign':>11}"
            f"{'FP hard':>9}{'FP all':>8}",
        ]
        for point in (self.default, self.at_target_recall, self.at_half):
            lines.append(
                f"{point.name:<22}{point.threshold:>10.4f}{point.recall:>8.3f}"
                f"{point.fpr_benign:>11.3f}{point.fpr_hard_benign:>9.3f}{point.fpr_all:>8.3f}"
            )
        lines += ["", "recall by attack kind at the default threshold:"]
        width = max((len(k) for k in self.recall_by_kind), default=4)
        for kind, (caught, total) in sorted(self.recall_by_kind.items()):
            lines.append(f"  {kind:<{width}}  {caught:>3}/{total:<3}  {caught / total:.3f}")
        if self.score_p50_ms is not None and self.score_p90_ms is not None:
            lines += [
                "",
                "latency per prompt (ms, one thread):",
                f"  score only (no embedding)    p50 {self.score_p50_ms:.4f}  "
                f"p90 {self.score_p90_ms:.4f}",
            ]
        if self.total_p50_ms is not None and self.total_p90_ms is not None:
            lines.append(
                f"  embedding + score            p50 {self.total_p50_ms:.2f}  "
                f"p90 {self.total_p90_ms:.2f}"
            )
        for heading, rows in (
            ("false positives at the default threshold", self.false_positives),
            ("missed attacks at the default threshold", self.missed),
        ):
            if examples <= 0:
                continue
            lines += ["", f"{heading} ({len(rows)}, up to {examples} shown):"]
            lines += [
                f"  {score:.3f}  {kind:<24} {text[:90]!r}" for score, kind, text in rows[:examples]
            ]
        lines += self.notes
        return "\n".join(lines) + "\n"


def _point(
    name: str,
    threshold: float,
    scores: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.str_],
) -> OperatingPoint:
    flagged = scores >= threshold
    negatives = labels == 0

    def rate(mask: npt.NDArray[np.bool_]) -> float:
        return float(flagged[mask].mean()) if mask.any() else float("nan")

    return OperatingPoint(
        name=name,
        threshold=threshold,
        recall=rate(labels == 1),
        fpr_benign=rate(negatives & (kinds == BENIGN)),
        fpr_hard_benign=rate(negatives & (kinds == HARD_BENIGN)),
        fpr_all=rate(negatives),
    )


def evaluate_scores(
    scores: Scores,
    labels: Labels,
    kinds: Sequence[str],
    texts: Sequence[str],
    default_threshold: float,
    title: str = "",
) -> JailbreakEvaluation:
    """All accuracy metrics from precomputed probabilities (latency fields left empty)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    k = np.asarray(kinds, dtype=np.str_)
    attack = y == 1
    hard = (y == 0) & (k == HARD_BENIGN)
    target = threshold_for_recall(s, y, TARGET_RECALL)
    flagged = s >= default_threshold
    by_kind: dict[str, tuple[int, int]] = {}
    for kind in sorted(set(k[attack].tolist())):
        members = attack & (k == kind)
        by_kind[kind] = (int(flagged[members].sum()), int(members.sum()))
    false_positives = sorted(
        ((float(s[i]), str(k[i]), texts[int(i)]) for i in np.flatnonzero(flagged & ~attack)),
        reverse=True,
    )
    missed = sorted(
        (float(s[i]), str(k[i]), texts[int(i)]) for i in np.flatnonzero(~flagged & attack)
    )
    return JailbreakEvaluation(
        title=title,
        count=len(y),
        attacks=int(attack.sum()),
        benign=int(((y == 0) & (k == BENIGN)).sum()),
        hard_benign=int(hard.sum()),
        auc=roc_auc(s, y),
        auc_hard_benign=roc_auc(s[attack | hard], y[attack | hard]),
        default=_point("default threshold", default_threshold, s, y, k),
        at_target_recall=_point(f"{TARGET_RECALL:.0%} recall", target, s, y, k),
        at_half=_point("threshold 0.5", 0.5, s, y, k),
        recall_by_kind=by_kind,
        false_positives=false_positives,
        missed=missed,
    )


def _percentiles(values_ms: list[float]) -> tuple[float, float]:
    p50, p90 = np.percentile(np.asarray(values_ms), [50, 90])
    return float(p50), float(p90)


def evaluate_jailbreak(
    detector: JailbreakDetector,
    model: EmbeddingModel,
    texts: Sequence[str],
    labels: Labels,
    kinds: Sequence[str],
    *,
    vectors: Matrix | None = None,
    timing_rounds: int = 5,
    title: str = "",
) -> tuple[JailbreakEvaluation, Matrix]:
    """Score every example one at a time, as the gateway would, and time it.

    Embeddings are computed one text per call (that is the request path) unless
    ``vectors`` is given, in which case only ``score`` is timed. The score-only latency
    is the median over ``timing_rounds`` passes of every held-out prompt. Returns the
    evaluation and the embeddings (for reuse, e.g. by an ablation).
    """
    total_ms: list[float] = []
    if vectors is None:
        rows = []
        detector.score(texts[0], model.embed([texts[0]])[0])  # warm-up
        for text in texts:
            start = time.perf_counter()
            vector = model.embed([text])[0]
            detector.score(text, vector)
            total_ms.append((time.perf_counter() - start) * 1e3)
            rows.append(vector)
        vectors = np.stack(rows).astype(np.float32)
    scores = [detector.score(t, v) for t, v in zip(texts, vectors, strict=True)]
    score_ms: list[float] = []
    for _ in range(timing_rounds):
        for text, vector in zip(texts, vectors, strict=True):
            start = time.perf_counter()
            detector.score(text, vector)
            score_ms.append((time.perf_counter() - start) * 1e3)
    result = evaluate_scores(scores, labels, kinds, texts, detector.threshold, title)
    s50, s90 = _percentiles(score_ms)
    t50, t90 = _percentiles(total_ms) if total_ms else (None, None)
    timed = replace(result, score_p50_ms=s50, score_p90_ms=s90, total_p50_ms=t50, total_p90_ms=t90)
    return timed, vectors


def main(argv: Sequence[str] | None = None) -> int:
    # Imported here: the training module imports this one for its metrics.
    from mixroute.guards.jailbreak_training import (
        fit_jailbreak_head,
        load_project_split,
        prepare_training_data,
    )
    from mixroute.semantic.embedding import builtin_minilm
    from mixroute.semantic.heads import builtin_head_path

    parser = argparse.ArgumentParser(description="Evaluate the jailbreak head on held-out data.")
    parser.add_argument("--head", type=Path, default=builtin_head_path("jailbreak"))
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also train an embedding-only head on the train data and evaluate it",
    )
    args = parser.parse_args(argv)
    model = EmbeddingModel(builtin_minilm(), threads=1)
    detector = JailbreakDetector.load(args.head, embedding_model=model.spec.name)
    heldout = load_project_split("heldout")
    texts = [e.text for e in heldout]
    labels = [e.label for e in heldout]
    kinds = [e.kind for e in heldout]
    lexical = "with" if detector.lexical is not None else "without"
    evaluation, vectors = evaluate_jailbreak(
        detector,
        model,
        texts,
        labels,
        kinds,
        title=f"jailbreak head {args.head.name} ({lexical} lexical features), held-out split",
    )
    print(evaluation.format())
    if args.ablation:
        data = prepare_training_data(model)
        nearest = (vectors @ data.vectors.T).max(axis=1)
        leaks = int((nearest >= LEAK_THRESHOLD).sum())
        print(
            f"held-out prompts with a training example at cosine >= {LEAK_THRESHOLD}: {leaks} "
            f"(closest {float(nearest.max()):.3f})"
        )
        head, _ = fit_jailbreak_head(data, lexical=False)
        plain = JailbreakDetector(head)
        ablation, _ = evaluate_jailbreak(
            plain,
            model,
            texts,
            labels,
            kinds,
            vectors=vectors,
            title="ablation: embedding-only head (same data, C by CV), held-out split",
        )
        print(ablation.format(examples=0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
