"""Training the domain head: data loading, de-duplication, model selection, calibration.

Only the train split ever drives a choice here (the C of the logistic regression and the
softmax temperature both come from cross-validation on it), so the held-out split stays an
honest estimate. scikit-learn is a training-only dependency: it is imported inside
``fit_linear_head`` so the gateway never loads it.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mixroute.evaluation.classification import ECE_BINS, expected_calibration_error
from mixroute.semantic.embedding import EmbeddingModel, Matrix
from mixroute.semantic.heads import DOMAIN_CATEGORIES, LinearHead

SPLITS = ("train", "heldout")
DEDUP_THRESHOLD = 0.95
LEAK_THRESHOLD = 0.92
C_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
CV_FOLDS = 5
SEED = 0
EMBED_BATCH = 32

Progress = Callable[[str], None]


def category_slug(category: str) -> str:
    """File stem of a category: "computer science" -> "computer_science"."""
    return category.replace(" ", "_")


def default_domain_data_dir() -> Path:
    return Path(str(resources.files("mixroute") / "data/domain"))


def load_domain_split(
    data_dir: Path, split: str, per_class_limit: int | None = None
) -> list[tuple[str, str]]:
    """(text, category) pairs of one split, in ``DOMAIN_CATEGORIES`` order then file order.

    Blank lines are skipped. Every category must have a file: a head trained without one
    of the 14 classes would silently never predict it.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    examples: list[tuple[str, str]] = []
    for category in DOMAIN_CATEGORIES:
        path = data_dir / split / f"{category_slug(category)}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"missing {split} data for {category!r}: {path}")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [line for line in lines if line]
        if per_class_limit is not None:
            texts = texts[:per_class_limit]
        examples.extend((text, category) for text in texts)
    return examples


def embed_texts(
    model: EmbeddingModel, texts: Sequence[str], batch_size: int = EMBED_BATCH
) -> Matrix:
    """Embed many texts in batches of similar length, returned in input order.

    Sorting by length keeps padding, and so compute spent on padding tokens, small: a batch
    costs as much as its longest text times its size.
    """
    if not texts:
        return np.zeros((0, model.dimension), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    result = np.zeros((len(texts), model.dimension), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        result[rows] = model.embed([texts[i] for i in rows])
    return result


def dedupe(
    texts: Sequence[str], vectors: Matrix, threshold: float = DEDUP_THRESHOLD
) -> npt.NDArray[np.bool_]:
    """Keep mask: drop an item whose text or embedding (cosine >= threshold) repeats an
    earlier kept item; the first occurrence wins.

    Near-duplicates inflate cross-validation accuracy (a copy lands in the other fold) and
    give one question more weight than its neighbours. Vectors must be L2-normalized.
    """
    if len(texts) != len(vectors):
        raise ValueError("texts and vectors must have the same length")
    keep = np.ones(len(texts), dtype=np.bool_)
    seen: set[str] = set()
    block = 512
    for start in range(0, len(texts), block):
        sims = vectors[start : start + block] @ vectors.T
        for offset in range(sims.shape[0]):
            i = start + offset
            key = " ".join(texts[i].lower().split())
            earlier = sims[offset, :i] >= threshold
            if key in seen or bool(np.any(earlier & keep[:i])):
                keep[i] = False
            else:
                seen.add(key)
    return keep


@dataclass(frozen=True)
class Leak:
    """A held-out item too close to a train item to count as unseen."""

    heldout_index: int
    train_index: int
    similarity: float


def heldout_leaks(
    train_vectors: Matrix, heldout_vectors: Matrix, threshold: float = LEAK_THRESHOLD
) -> list[Leak]:
    """Held-out items whose nearest train item has cosine >= threshold.

    The threshold is looser than the de-duplication one: a paraphrase the head was trained
    on measures memory, not generalization, so it is excluded from held-out scoring.
    """
    leaks: list[Leak] = []
    if len(train_vectors) == 0:
        return leaks
    block = 512
    for start in range(0, len(heldout_vectors), block):
        sims = heldout_vectors[start : start + block] @ train_vectors.T
        nearest = sims.argmax(axis=1)
        best = sims[np.arange(sims.shape[0]), nearest]
        for offset in np.flatnonzero(best >= threshold):
            leaks.append(
                Leak(
                    heldout_index=start + int(offset),
                    train_index=int(nearest[offset]),
                    similarity=float(best[offset]),
                )
            )
    return leaks


@dataclass(frozen=True)
class TrainingReport:
    embedding_model: str
    counts: dict[str, int]  # per category, before de-duplication
    duplicates_dropped: int
    duplicate_examples: list[tuple[str, str]]  # (dropped text, kept text), a few for the log
    c_grid: tuple[float, ...]
    cv_accuracy_by_c: dict[float, float]
    chosen_c: float
    cv_accuracy: float
    folds: int
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return sum(self.counts.values())

    def format(self) -> str:
        """Human-readable summary for ``mixroute train``."""
        width = max(len(c) for c in self.counts)
        lines = [f"domain head on {self.embedding_model} embeddings"]
        lines.append(f"train examples: {self.examples}")
        lines += [f"  {category:<{width}}  {n}" for category, n in self.counts.items()]
        lines.append(
            f"near-duplicates dropped (cosine >= {DEDUP_THRESHOLD}): {self.duplicates_dropped}"
            f" -> {self.examples - self.duplicates_dropped} used"
        )
        lines += [f"  dropped {a!r} (duplicate of {b!r})" for a, b in self.duplicate_examples]
        lines.append(f"{self.folds}-fold cross-validation accuracy by C (train split only):")
        lines += [
            f"  C={c:<6g} {acc:.4f}{'  <- chosen' if c == self.chosen_c else ''}"
            for c, acc in self.cv_accuracy_by_c.items()
        ]
        lines += [
            f"chosen C: {self.chosen_c:g} (cross-val accuracy {self.cv_accuracy:.4f})",
            f"temperature: {self.temperature:.4f} (fitted on out-of-fold logits)",
            f"out-of-fold NLL: {self.nll_before:.4f} -> {self.nll_after:.4f}",
            f"out-of-fold ECE ({ECE_BINS} bins): {self.ece_before:.4f} before, "
            f"{self.ece_after:.4f} after temperature scaling",
            *self.notes,
            f"trained in {self.seconds:.1f} s",
        ]
        return "\n".join(lines)


def _log_softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def negative_log_likelihood(
    logits: npt.NDArray[np.float64], targets: npt.NDArray[np.int64], temperature: float = 1.0
) -> float:
    log_p = _log_softmax(logits / temperature)
    return float(-log_p[np.arange(len(targets)), targets].mean())


def minimize_in_log_space(
    cost: Callable[[float], float], low: float, high: float, tolerance: float = 1e-4
) -> float:
    """The x in [low, high] minimizing a cost unimodal in log x, by golden-section search.

    Searching in log space treats 0.5 and 2 symmetrically; no scipy needed.
    """
    ratio = (math.sqrt(5) - 1) / 2
    a, b = math.log(low), math.log(high)

    def at(log_x: float) -> float:
        return cost(math.exp(log_x))

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = at(c), at(d)
    while b - a > tolerance:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = at(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = at(d)
    return math.exp((a + b) / 2)


def fit_temperature(
    logits: npt.NDArray[np.float64],
    targets: npt.NDArray[np.int64],
    low: float = 0.05,
    high: float = 20.0,
    tolerance: float = 1e-4,
) -> float:
    """Softmax temperature minimizing NLL (convex in 1/T, hence unimodal in log T)."""
    return minimize_in_log_space(
        lambda t: negative_log_likelihood(logits, targets, t), low, high, tolerance
    )


def _top_label_ece(
    logits: npt.NDArray[np.float64], targets: npt.NDArray[np.int64], temperature: float
) -> float:
    probs = np.exp(_log_softmax(logits / temperature))
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == targets)


@dataclass(frozen=True)
class HeadFit:
    """A fitted head plus what model selection and calibration measured on the way."""

    head: LinearHead
    cv_accuracy_by_c: dict[float, float]
    chosen_c: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


def fit_linear_head(
    vectors: Matrix,
    labels: Sequence[str],
    classes: Sequence[str],
    embedding_model: str,
    c_grid: Sequence[float] = C_GRID,
    folds: int = CV_FOLDS,
    progress: Progress | None = None,
) -> HeadFit:
    """Multinomial logistic regression with C chosen by k-fold CV, then temperature scaling.

    The head's rows follow ``classes``; calibration numbers are measured on the chosen C's
    out-of-fold logits. Those come from models that never saw the row they score, so the
    temperature fitted on them corrects how the final model is miscalibrated on new text
    (for an L2-regularized head that is usually under-confidence: T < 1 sharpens).
    Class weights are "balanced" so a category is not favoured for having a few more
    training lines than another.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(labels)
    unknown = set(y.tolist()) - set(classes)
    if unknown:
        raise ValueError(f"labels not among the classes: {sorted(unknown)}")
    missing = set(classes) - set(y.tolist())
    if missing:
        raise ValueError(f"no training examples for: {sorted(missing)}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)

    def make(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, class_weight="balanced", max_iter=5000, tol=1e-5)

    accuracy: dict[float, float] = {}
    oof: dict[float, npt.NDArray[np.float64]] = {}
    sk_classes = np.array(sorted(set(y.tolist())))  # scikit-learn orders classes this way
    targets = np.searchsorted(sk_classes, y).astype(np.int64)
    for c in c_grid:
        logits = cross_val_predict(
            make(c), vectors, y, cv=splitter, method="decision_function"
        ).astype(np.float64)
        oof[c] = logits
        accuracy[c] = float((logits.argmax(axis=1) == targets).mean())
        if progress:
            progress(f"C={c:g}: {folds}-fold accuracy {accuracy[c]:.4f}")
    # Highest accuracy wins; on a tie the smaller C (the simpler model) does.
    chosen = max(c_grid, key=lambda c: (accuracy[c], -c))
    temperature = fit_temperature(oof[chosen], targets)

    final = make(chosen).fit(vectors, y)
    fitted = [str(c) for c in final.classes_]
    rows = [fitted.index(c) for c in classes]
    head = LinearHead(
        classes=tuple(classes),
        coef=np.asarray(final.coef_, dtype=np.float32)[rows],
        intercept=np.asarray(final.intercept_, dtype=np.float32)[rows],
        temperature=temperature,
        embedding_model=embedding_model,
    )
    return HeadFit(
        head=head,
        cv_accuracy_by_c=accuracy,
        chosen_c=chosen,
        nll_before=negative_log_likelihood(oof[chosen], targets),
        nll_after=negative_log_likelihood(oof[chosen], targets, temperature),
        ece_before=_top_label_ece(oof[chosen], targets, 1.0),
        ece_after=_top_label_ece(oof[chosen], targets, temperature),
    )


def train_domain_head(
    model: EmbeddingModel,
    data_dir: Path,
    *,
    per_class_limit: int | None = None,
    c_grid: Sequence[float] = C_GRID,
    folds: int = CV_FOLDS,
    progress: Progress | None = None,
) -> tuple[LinearHead, TrainingReport]:
    """Embed the train split, drop near-duplicates, fit and calibrate the domain head.

    ``per_class_limit`` takes the first N lines of each category (quick runs and tests).
    The held-out split is not read.
    """
    started = time.perf_counter()
    examples = load_domain_split(data_dir, "train", per_class_limit)
    texts = [text for text, _ in examples]
    labels = [category for _, category in examples]
    if progress:
        progress(f"embedding {len(texts)} train examples")
    vectors = embed_texts(model, texts)
    keep = dedupe(texts, vectors)
    pairs = _duplicate_pairs(texts, vectors, keep, limit=5)
    kept_labels = [label for label, k in zip(labels, keep, strict=True) if k]
    if progress:
        progress(f"dropped {int((~keep).sum())} near-duplicates; fitting")
    fit = fit_linear_head(
        vectors[keep],
        kept_labels,
        DOMAIN_CATEGORIES,
        model.spec.name,
        c_grid=c_grid,
        folds=folds,
        progress=progress,
    )
    counts = Counter(labels)
    report = TrainingReport(
        embedding_model=model.spec.name,
        counts={c: counts[c] for c in DOMAIN_CATEGORIES},
        duplicates_dropped=int((~keep).sum()),
        duplicate_examples=pairs,
        c_grid=tuple(c_grid),
        cv_accuracy_by_c=fit.cv_accuracy_by_c,
        chosen_c=fit.chosen_c,
        cv_accuracy=fit.cv_accuracy_by_c[fit.chosen_c],
        folds=folds,
        temperature=fit.head.temperature,
        nll_before=fit.nll_before,
        nll_after=fit.nll_after,
        ece_before=fit.ece_before,
        ece_after=fit.ece_after,
        seconds=time.perf_counter() - started,
    )
    return fit.head, report


def _duplicate_pairs(
    texts: Sequence[str], vectors: Matrix, keep: npt.NDArray[np.bool_], limit: int
) -> list[tuple[str, str]]:
    """(dropped, kept look-alike) text pairs, so a reader can judge the threshold."""
    kept_index = np.flatnonzero(keep)
    pairs = []
    for i in np.flatnonzero(~keep)[:limit]:
        sims = vectors[kept_index] @ vectors[i]
        pairs.append((texts[i], texts[int(kept_index[int(sims.argmax())])]))
    return pairs
