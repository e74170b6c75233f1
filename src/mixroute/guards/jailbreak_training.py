"""Training the jailbreak head: data loading, de-duplication, model selection, calibration.

Training data is the project's own train split plus two MIT-licensed PyPI corpora,
``bastioncorpus`` (attacks and look-alike benign "false-positive traps") and
``jailbreak-corpus-mini-py`` (attacks only). No other public jailbreak corpus is used, and
the held-out split is never read here: every choice (the regression's C, how strongly the
lexical features count, whether they are used at all, the temperature and the default
threshold) comes from stratified 5-fold cross-validation on the training data, so the
held-out numbers in ``mixroute.evaluation.jailbreak`` stay an honest estimate.
scikit-learn is a training-only dependency, imported inside the fitting function.

Run ``python -m mixroute.guards.jailbreak_training`` to retrain and write
``mixroute/data/heads/jailbreak.npz``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mixroute.evaluation.classification import expected_calibration_error
from mixroute.evaluation.jailbreak import roc_auc, threshold_for_recall
from mixroute.guards.jailbreak import CLASSES, JailbreakHead, LexicalFeatures
from mixroute.semantic.embedding import EmbeddingModel, Matrix
from mixroute.semantic.heads import builtin_head_path
from mixroute.semantic.training import minimize_in_log_space

PROJECT = "project"
BASTION = "bastioncorpus"
MINI = "jailbreak-corpus-mini"
SOURCES = (PROJECT, BASTION, MINI)
SPLITS = ("train", "heldout")

C_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
# Multiplier of the lexical block before fitting. Embedding components are ~0.05 (unit
# vectors of 384 dims) and lexical values ~0.7 (log 2), so with one C for both the scale
# sets how cheaply the regression can lean on a pattern; CV picks it.
LEXICAL_SCALES = (0.5, 1.0, 2.0)
CV_FOLDS = 5
SEED = 0
DEDUP_THRESHOLD = 0.95
TARGET_RECALL = 0.90
EMBED_BATCH = 32

Progress = Callable[[str], None]
Float64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 = jailbreak / prompt injection, 0 = benign
    source: str
    kind: str


def default_data_dir() -> Path:
    return Path(str(resources.files("mixroute") / "data/guards/jailbreak"))


def load_project_split(split: str, data_dir: Path | None = None) -> list[Example]:
    """One split of the project's own data: JSON lines of ``{"text", "label", "kind"}``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = (data_dir or default_data_dir()) / f"{split}.jsonl"
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        label = int(row["label"])
        if label not in (0, 1) or not str(row["text"]).strip():
            raise ValueError(f"{path}:{number}: needs a text and a label of 0 or 1")
        examples.append(Example(str(row["text"]), label, PROJECT, str(row.get("kind", ""))))
    return examples


def load_bastion() -> list[Example]:
    """bastioncorpus rows: malicious ones are attacks, "benign_*" ones are hard negatives.

    Rows may carry a ``{canary}`` slot for the corpus's own probe runner; it is removed.
    """
    import bastioncorpus  # type: ignore[import-untyped]

    return [
        Example(row.stripped(), int(row.is_malicious), BASTION, row.category)
        for row in bastioncorpus.load_corpus()
    ]


def load_mini() -> list[Example]:
    """jailbreak-corpus-mini fixtures, all attacks."""
    import jailbreak_corpus_mini  # type: ignore[import-untyped]

    return [
        Example(fixture.prompt, 1, MINI, fixture.category)
        for fixture in jailbreak_corpus_mini.load_corpus()
    ]


def load_training_examples(data_dir: Path | None = None) -> list[Example]:
    """Project train split first, then the two corpora: on a duplicate the first one wins."""
    return [*load_project_split("train", data_dir), *load_bastion(), *load_mini()]


def embed_texts(model: EmbeddingModel, texts: Sequence[str], batch: int = EMBED_BATCH) -> Matrix:
    """Embed in batches of similar length (less padding), returned in input order."""
    result = np.zeros((len(texts), model.dimension), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        result[rows] = model.embed([texts[i] for i in rows])
    return result


@dataclass(frozen=True)
class Duplicate:
    dropped: Example
    kept: Example
    similarity: float

    @property
    def conflicting(self) -> bool:
        return self.dropped.label != self.kept.label


def dedupe(
    examples: Sequence[Example], vectors: Matrix, threshold: float = DEDUP_THRESHOLD
) -> tuple[npt.NDArray[np.bool_], list[Duplicate]]:
    """Keep mask dropping an example whose normalized text or embedding (cosine >=
    threshold) repeats an earlier kept one.

    A copy in another fold inflates cross-validation, and the corpora repeat the classic
    attacks ("Ignore all previous instructions...") that the project data also has.
    """
    keep = np.zeros(len(examples), dtype=np.bool_)
    duplicates: list[Duplicate] = []
    seen: dict[str, int] = {}
    for i, example in enumerate(examples):
        key = " ".join(example.text.lower().split())
        kept = np.flatnonzero(keep[:i])
        sims = vectors[kept] @ vectors[i] if kept.size else np.zeros(0, dtype=np.float32)
        if key in seen:
            duplicates.append(Duplicate(example, examples[seen[key]], 1.0))
        elif sims.size and float(sims.max()) >= threshold:
            j = int(kept[int(sims.argmax())])
            duplicates.append(Duplicate(example, examples[j], float(sims.max())))
        else:
            keep[i] = True
            seen[key] = i
    return keep, duplicates


@dataclass(frozen=True)
class TrainingData:
    """De-duplicated training examples with their embeddings and lexical features."""

    examples: list[Example]
    vectors: Matrix
    lexical: npt.NDArray[np.float32]
    lexical_names: tuple[str, ...]
    raw_counts: dict[str, Counter[int]]
    duplicates: list[Duplicate]
    embedding_model: str

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return np.array([e.label for e in self.examples], dtype=np.int64)

    def counts(self) -> dict[str, Counter[int]]:
        result: dict[str, Counter[int]] = {source: Counter() for source in SOURCES}
        for example in self.examples:
            result[example.source][example.label] += 1
        return result


def prepare_training_data(
    model: EmbeddingModel, data_dir: Path | None = None, progress: Progress | None = None
) -> TrainingData:
    examples = load_training_examples(data_dir)
    raw: dict[str, Counter[int]] = {source: Counter() for source in SOURCES}
    for example in examples:
        raw[example.source][example.label] += 1
    if progress:
        progress(f"embedding {len(examples)} training examples")
    vectors = embed_texts(model, [e.text for e in examples])
    keep, duplicates = dedupe(examples, vectors)
    kept = [e for e, k in zip(examples, keep, strict=True) if k]
    features = LexicalFeatures()
    return TrainingData(
        examples=kept,
        vectors=vectors[keep],
        lexical=features.compute_many([e.text for e in kept]),
        lexical_names=features.names,
        raw_counts=raw,
        duplicates=duplicates,
        embedding_model=model.spec.name,
    )


def _sigmoid(z: Float64) -> Float64:
    result: Float64 = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    return result


def binary_nll(logits: Float64, labels: npt.NDArray[np.int64], temperature: float = 1.0) -> float:
    z = logits / temperature
    # -log sigmoid(z) for positives, -log sigmoid(-z) for negatives, computed stably.
    signed = np.where(labels == 1, z, -z)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def fit_temperature(
    logits: Float64, labels: npt.NDArray[np.int64], low: float = 0.05, high: float = 20.0
) -> float:
    """Sigmoid temperature minimizing NLL (unimodal in log T)."""
    return minimize_in_log_space(lambda t: binary_nll(logits, labels, t), low, high)


def binary_ece(probabilities: Float64, labels: npt.NDArray[np.int64]) -> float:
    """Top-label ECE of a binary classifier (confidence of whichever class it predicts)."""
    predicted = probabilities >= 0.5
    confidence = np.where(predicted, probabilities, 1.0 - probabilities)
    return expected_calibration_error(confidence, predicted == (labels == 1))


@dataclass(frozen=True)
class CvScore:
    c: float
    lexical_scale: float | None  # None: embedding only
    auc: float
    fpr_at_target: float


@dataclass(frozen=True)
class JailbreakTrainingReport:
    embedding_model: str
    raw_counts: dict[str, dict[int, int]]
    used_counts: dict[str, dict[int, int]]
    duplicates_dropped: int
    conflicts: list[tuple[str, str]]  # near-duplicates with opposite labels (dropped, kept)
    duplicate_examples: list[tuple[str, str]]
    folds: int
    cv_scores: list[CvScore]
    chosen: CvScore
    best_embedding_only: CvScore
    best_with_lexical: CvScore | None
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    threshold: float
    oof_recall_at_threshold: float
    oof_fpr_at_threshold: float
    lexical_weights: dict[str, float]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """Human-readable summary printed by the training command."""
        lines = [f"jailbreak head on {self.embedding_model} embeddings", "training data:"]
        lines.append(f"  {'source':<24}{'attacks':>9}{'benign':>9}   (after de-duplication)")
        for source in SOURCES:
            raw, used = self.raw_counts[source], self.used_counts[source]
            lines.append(
                f"  {source:<24}{raw.get(1, 0):>9}{raw.get(0, 0):>9}"
                f"   ({used.get(1, 0)} / {used.get(0, 0)})"
            )
        lines.append(
            f"near-duplicates dropped (same text or cosine >= {DEDUP_THRESHOLD}): "
            f"{self.duplicates_dropped}, of which {len(self.conflicts)} with the opposite label"
        )
        lines += [f"  dropped {a!r}\n     (as {b!r})" for a, b in self.duplicate_examples]
        lines += [f"  label conflict: {a!r} vs {b!r}" for a, b in self.conflicts]
        lines.append(
            f"{self.folds}-fold stratified cross-validation on the training data "
            f"(AUC, false-positive rate at {TARGET_RECALL:.0%} recall):"
        )
        for score in self.cv_scores:
            mark = "  <- chosen" if score == self.chosen else ""
            lexical = "off" if score.lexical_scale is None else f"x{score.lexical_scale:g}"
            lines.append(
                f"  lexical {lexical:<5} C={score.c:<5g} AUC {score.auc:.4f}"
                f"  FPR@{TARGET_RECALL:.0%} {score.fpr_at_target:.3f}{mark}"
            )
        lines.append(
            f"ablation (best of each, CV): embedding only AUC {self.best_embedding_only.auc:.4f}"
            f" FPR@{TARGET_RECALL:.0%} {self.best_embedding_only.fpr_at_target:.3f}"
        )
        if self.best_with_lexical is not None:
            lines[-1] += (
                f"; + lexical AUC {self.best_with_lexical.auc:.4f}"
                f" FPR@{TARGET_RECALL:.0%} {self.best_with_lexical.fpr_at_target:.3f}"
            )
        lines += [
            f"temperature: {self.temperature:.4f} (fitted on out-of-fold logits)",
            f"out-of-fold NLL: {self.nll_before:.4f} -> {self.nll_after:.4f}; "
            f"ECE: {self.ece_before:.4f} -> {self.ece_after:.4f}",
            f"default threshold: {self.threshold:.2f} (out-of-fold recall "
            f"{self.oof_recall_at_threshold:.3f}, false-positive rate "
            f"{self.oof_fpr_at_threshold:.3f})",
        ]
        if self.lexical_weights:
            lines.append("lexical weights (logit per log1p(count), after temperature):")
            ranked = sorted(self.lexical_weights.items(), key=lambda kv: -abs(kv[1]))
            lines += [f"  {name:<18} {weight:+.3f}" for name, weight in ranked]
        lines += [*self.notes, f"trained in {self.seconds:.1f} s"]
        return "\n".join(lines)


def _design(data: TrainingData, scale: float | None) -> npt.NDArray[np.float64]:
    if scale is None:
        return data.vectors.astype(np.float64)
    return np.hstack([data.vectors, data.lexical * scale]).astype(np.float64)


def _make(c: float) -> Any:  # scikit-learn ships no type information
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=10000, tol=1e-6)


def _out_of_fold(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.int64],
    strata: npt.NDArray[np.str_],
    c: float,
    folds: int,
) -> Float64:
    from sklearn.model_selection import StratifiedKFold

    logits = np.zeros(len(y), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
    for train, test in splitter.split(x, strata):
        logits[test] = _make(c).fit(x[train], y[train]).decision_function(x[test])
    return logits


def fit_jailbreak_head(
    data: TrainingData,
    *,
    lexical: bool = True,
    c_grid: Sequence[float] = C_GRID,
    scales: Sequence[float] = LEXICAL_SCALES,
    folds: int = CV_FOLDS,
    progress: Progress | None = None,
) -> tuple[JailbreakHead, JailbreakTrainingReport]:
    """Pick (lexical scale, C) by CV AUC, calibrate, choose the threshold, fit on all.

    Folds are stratified by source and label so every fold holds attacks and benign
    prompts of each corpus. ``lexical=False`` restricts the search to the embedding
    alone (the ablation); with ``lexical=True`` the embedding-only settings are searched
    too, and lexical features are kept only if they win on cross-validation.
    """
    started = time.perf_counter()
    y = data.labels
    strata = np.array([f"{e.source}:{e.label}" for e in data.examples])
    configs: list[float | None] = [None, *(scales if lexical else ())]
    scores: list[CvScore] = []
    oof: dict[tuple[float, float | None], Float64] = {}
    for scale in configs:
        x = _design(data, scale)
        for c in c_grid:
            logits = _out_of_fold(x, y, strata, c, folds)
            oof[(c, scale)] = logits
            scores.append(
                CvScore(c, scale, roc_auc(logits, y), _fpr_at_recall(logits, y, TARGET_RECALL))
            )
            if progress:
                progress(f"lexical={scale} C={c:g}: AUC {scores[-1].auc:.4f}")
    # Highest AUC wins; ties go to embedding only, then the smaller C (the simpler model).
    chosen = max(scores, key=lambda s: (round(s.auc, 4), s.lexical_scale is None, -s.c))
    logits = oof[(chosen.c, chosen.lexical_scale)]
    temperature = fit_temperature(logits, y)
    calibrated = _sigmoid(logits / temperature)
    # The default threshold keeps TARGET_RECALL of the out-of-fold attacks, rounded down
    # to two decimals so the rounding never costs recall.
    threshold = math.floor(threshold_for_recall(calibrated, y, TARGET_RECALL) * 100) / 100
    flagged = calibrated >= threshold

    x = _design(data, chosen.lexical_scale)
    final = _make(chosen.c).fit(x, y)
    weights = np.asarray(final.coef_, dtype=np.float64).reshape(-1)
    dim = data.vectors.shape[1]
    lexical_coef = weights[dim:] * (chosen.lexical_scale or 0.0)
    names = data.lexical_names if chosen.lexical_scale is not None else ()
    head = JailbreakHead(
        classes=CLASSES,
        coef=np.stack([np.zeros(dim), weights[:dim]]).astype(np.float32),
        intercept=np.array([0.0, float(final.intercept_[0])], dtype=np.float32),
        temperature=temperature,
        embedding_model=data.embedding_model,
        lexical_names=names,
        lexical_coef=lexical_coef.astype(np.float32),
        threshold=threshold,
    )
    embedding_only = [s for s in scores if s.lexical_scale is None]
    with_lexical = [s for s in scores if s.lexical_scale is not None]
    pairs = [(d.dropped.text[:70], d.kept.text[:70]) for d in data.duplicates[:5]]
    report = JailbreakTrainingReport(
        embedding_model=data.embedding_model,
        raw_counts={s: dict(c) for s, c in data.raw_counts.items()},
        used_counts={s: dict(c) for s, c in data.counts().items()},
        duplicates_dropped=len(data.duplicates),
        conflicts=[(d.dropped.text, d.kept.text) for d in data.duplicates if d.conflicting],
        duplicate_examples=pairs,
        folds=folds,
        cv_scores=scores,
        chosen=chosen,
        best_embedding_only=max(embedding_only, key=lambda s: (round(s.auc, 4), -s.c)),
        best_with_lexical=(
            max(with_lexical, key=lambda s: (round(s.auc, 4), -s.c)) if with_lexical else None
        ),
        temperature=temperature,
        nll_before=binary_nll(logits, y),
        nll_after=binary_nll(logits, y, temperature),
        ece_before=binary_ece(_sigmoid(logits), y),
        ece_after=binary_ece(calibrated, y),
        threshold=threshold,
        oof_recall_at_threshold=float(flagged[y == 1].mean()),
        oof_fpr_at_threshold=float(flagged[y == 0].mean()),
        lexical_weights={
            name: float(w) / temperature for name, w in zip(names, lexical_coef, strict=True)
        },
        seconds=time.perf_counter() - started,
    )
    return head, report


def _fpr_at_recall(scores: Float64, labels: npt.NDArray[np.int64], recall: float) -> float:
    threshold = threshold_for_recall(scores, labels, recall)
    return float((scores[labels == 0] >= threshold).mean())


def train_jailbreak(
    model: EmbeddingModel,
    data_dir: Path | None = None,
    *,
    lexical: bool = True,
    progress: Progress | None = None,
) -> tuple[JailbreakHead, JailbreakTrainingReport]:
    """Load, embed and de-duplicate the training data, then fit and calibrate the head."""
    started = time.perf_counter()
    data = prepare_training_data(model, data_dir, progress)
    head, report = fit_jailbreak_head(data, lexical=lexical, progress=progress)
    return head, replace(report, seconds=time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    from mixroute.semantic.embedding import builtin_minilm

    parser = argparse.ArgumentParser(description="Train the jailbreak head.")
    parser.add_argument("--out", type=Path, default=builtin_head_path("jailbreak"))
    parser.add_argument("--no-lexical", action="store_true", help="embedding features only")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    model = EmbeddingModel(builtin_minilm(), threads=1)
    head, report = train_jailbreak(
        model, lexical=not args.no_lexical, progress=print if args.verbose else None
    )
    head.save(args.out)
    print(report.format())
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
