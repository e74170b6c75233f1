"""The shipped domain head: provenance, held-out accuracy, leakage, calibration; training
and the offline ``train`` / ``eval`` / ``classify`` commands.

The embedding model is loaded once per module; the train and held-out splits are embedded
once (in length-sorted batches) and shared by the accuracy, leakage and calibration tests.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from mixroute.evaluation.classification import (
    compute_metrics,
    expected_calibration_error,
    format_report,
    render_confusion_png,
)
from mixroute.offline_cli import ProgressBar, add_commands, read_jsonl
from mixroute.semantic.embedding import EmbeddingModel, builtin_minilm
from mixroute.semantic.heads import DOMAIN_CATEGORIES, HeadError, LinearHead, builtin_head_path
from mixroute.semantic.training import (
    category_slug,
    dedupe,
    default_domain_data_dir,
    embed_texts,
    fit_temperature,
    heldout_leaks,
    load_domain_split,
    negative_log_likelihood,
    train_domain_head,
)

# Setting up the split embeddings takes tens of seconds on two busy cores; the tests that
# use them get room beyond the suite's default timeout (which includes fixture setup).
SPLIT_TIMEOUT = 300


@dataclass(frozen=True)
class Heldout:
    texts: list[str]
    labels: list[str]
    vectors: npt.NDArray[np.float32]
    excluded: set[int]  # near-duplicates of a train line, left out of scoring

    def kept(self) -> npt.NDArray[np.bool_]:
        return np.array([i not in self.excluded for i in range(len(self.texts))])


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return EmbeddingModel(builtin_minilm(), threads=1)


@pytest.fixture(scope="module")
def head(model: EmbeddingModel) -> LinearHead:
    return LinearHead.load(builtin_head_path("domain"), embedding_model=model.spec.name)


@pytest.fixture(scope="module")
def heldout(model: EmbeddingModel) -> Heldout:
    data = default_domain_data_dir()
    train = load_domain_split(data, "train")
    held = load_domain_split(data, "heldout")
    train_vectors = embed_texts(model, [text for text, _ in train])
    held_vectors = embed_texts(model, [text for text, _ in held])
    leaks = heldout_leaks(train_vectors, held_vectors)
    return Heldout(
        texts=[text for text, _ in held],
        labels=[label for _, label in held],
        vectors=held_vectors,
        excluded={leak.heldout_index for leak in leaks},
    )


def _ece(head: LinearHead, vectors: npt.NDArray[np.float32], labels: Sequence[str]) -> float:
    probs = head.probabilities(vectors)
    predicted = [head.classes[i] for i in probs.argmax(axis=1)]
    correct = [p == t for p, t in zip(predicted, labels, strict=True)]
    return expected_calibration_error(probs.max(axis=1), correct)


# --- the shipped head ------------------------------------------------------------------


def test_shipped_head_is_tied_to_the_builtin_model(model: EmbeddingModel, head: LinearHead) -> None:
    assert head.classes == DOMAIN_CATEGORIES
    assert len(head.classes) == 14
    assert head.coef.shape == (14, model.dimension)
    assert head.intercept.shape == (14,)
    assert head.embedding_model == model.spec.name == "all-MiniLM-L6-v2-int8"
    assert 0.05 < head.temperature < 20
    with pytest.raises(HeadError, match="retrain"):
        LinearHead.load(builtin_head_path("domain"), embedding_model="another-model")


@pytest.mark.timeout(SPLIT_TIMEOUT)
def test_heldout_accuracy(head: LinearHead, heldout: Heldout) -> None:
    kept = heldout.kept()
    probs = head.probabilities(heldout.vectors[kept])
    predicted = [head.classes[i] for i in probs.argmax(axis=1)]
    labels = [label for label, k in zip(heldout.labels, kept, strict=True) if k]
    metrics = compute_metrics(labels, predicted, probs.max(axis=1).tolist(), labels=head.classes)
    print(format_report(metrics, title="held-out split"))
    # Measured when the head was trained: 0.860 accuracy, 0.859 macro-F1 (1041 examples).
    assert metrics.count >= 14 * 70
    assert metrics.accuracy >= 0.80
    assert metrics.macro_f1 >= 0.80
    # No category may collapse: the weakest (physics vs engineering) sits around 0.73.
    assert min(s.recall for s in metrics.per_class) >= 0.60


@pytest.mark.timeout(SPLIT_TIMEOUT)
def test_heldout_barely_overlaps_train(heldout: Heldout) -> None:
    # Near-duplicates of train lines (cosine >= 0.92) are excluded from scoring above;
    # there must be few of them for the held-out number to mean generalization.
    share = len(heldout.excluded) / len(heldout.texts)
    print(f"excluded {len(heldout.excluded)} of {len(heldout.texts)} held-out lines")
    assert share < 0.02


@pytest.mark.timeout(SPLIT_TIMEOUT)
def test_heldout_calibration(head: LinearHead, heldout: Heldout) -> None:
    kept = heldout.kept()
    labels = [label for label, k in zip(heldout.labels, kept, strict=True) if k]
    after = _ece(head, heldout.vectors[kept], labels)
    before = _ece(replace(head, temperature=1.0), heldout.vectors[kept], labels)
    print(f"held-out ECE: {before:.4f} at T=1, {after:.4f} at T={head.temperature:.3f}")
    assert after < 0.08
    assert after <= before


# --- training --------------------------------------------------------------------------


def test_train_on_a_small_subset(model: EmbeddingModel, tmp_path: Path) -> None:
    source = default_domain_data_dir() / "train"
    (tmp_path / "train").mkdir()
    for category in DOMAIN_CATEGORIES:
        name = f"{category_slug(category)}.txt"
        lines = (source / name).read_text(encoding="utf-8").splitlines()[:60]
        (tmp_path / "train" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    trained, report = train_domain_head(
        model, tmp_path, per_class_limit=40, c_grid=(0.5, 2.0), folds=3
    )
    assert trained.classes == DOMAIN_CATEGORIES
    assert trained.coef.shape == (14, model.dimension)
    assert trained.embedding_model == model.spec.name
    assert report.counts == dict.fromkeys(DOMAIN_CATEGORIES, 40)
    assert report.chosen_c in (0.5, 2.0)
    assert 0.3 < report.cv_accuracy <= 1.0
    assert report.nll_after <= report.nll_before + 1e-9
    assert "chosen C" in report.format()
    trained.save(tmp_path / "head.npz")
    again = LinearHead.load(tmp_path / "head.npz", embedding_model=model.spec.name)
    assert again.classes == DOMAIN_CATEGORIES
    assert again.temperature == pytest.approx(trained.temperature)


def test_load_split_requires_every_category(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "biology.txt").write_text("What is a cell?\n\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="business"):
        load_domain_split(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_domain_split(tmp_path, "test")


def test_dedupe_keeps_the_first_of_near_duplicates() -> None:
    vectors = np.array(
        [[1, 0, 0], [0.99, 0.141, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = ["a", "a'", "b", "c", "c again"]
    assert dedupe(texts, vectors, 0.95).tolist() == [True, False, True, True, False]
    # Exact text repeats go even when their vectors differ (whitespace and case only).
    assert dedupe(["Hi  there", "hi there"], np.eye(2, dtype=np.float32)).tolist() == [True, False]


def test_heldout_leaks_lists_items_close_to_train() -> None:
    train = np.eye(3, dtype=np.float32)
    held = np.array([[0.6, 0.8, 0], [0.96, 0.28, 0], [0, 0, 1]], dtype=np.float32)
    leaks = heldout_leaks(train, held, threshold=0.92)
    assert [(leak.heldout_index, leak.train_index) for leak in leaks] == [(1, 0), (2, 2)]


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 3
    scaled = logits / 2.5  # the true distribution is softmax(logits / 2.5)
    probs = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(5, p=p) for p in probs], dtype=np.int64)
    temperature = fit_temperature(logits, targets)
    assert temperature == pytest.approx(2.5, rel=0.1)
    assert negative_log_likelihood(logits, targets, temperature) < negative_log_likelihood(
        logits, targets
    )


# --- metrics ---------------------------------------------------------------------------


def test_metrics_and_report() -> None:
    true = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    metrics = compute_metrics(true, pred, [0.9, 0.6, 0.8, 0.7, 0.5], [1, 2, 3, 4, 100])
    assert metrics.labels == ("a", "b", "c")
    assert metrics.accuracy == pytest.approx(0.6)
    assert metrics.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    a, b, c = metrics.per_class
    assert (a.precision, a.recall) == (0.5, 0.5)
    assert (b.precision, b.recall) == (pytest.approx(2 / 3), 1.0)
    assert (c.f1, c.predicted, math.isnan(c.mean_confidence)) == (0.0, 0, True)
    assert metrics.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics.latency_p50_ms == 3
    text = format_report(metrics, title="toy")
    assert "macro-F1" in text and "p99" in text


def test_expected_calibration_error() -> None:
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.9] * 10, [True] * 9 + [False]) == pytest.approx(0.0)
    assert expected_calibration_error([0.9] * 10, [False] * 10) == pytest.approx(0.9)


def test_confusion_png_is_readable_at_14_classes(tmp_path: Path) -> None:
    matrix = np.diag(np.full(14, 70)) + 1
    path = render_confusion_png(matrix, DOMAIN_CATEGORIES, tmp_path / "c.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 14 * 40 and image.height >= 14 * 40


def test_progress_bar_into_a_pipe_writes_a_few_lines() -> None:
    stream = io.StringIO()
    bar = ProgressBar(100, label="x", stream=stream)
    for done in range(1, 101):
        bar.update(done)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert 5 <= len(lines) <= 11
    assert lines[-1].startswith("x [") and "100/100" in lines[-1]


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "category": "math"}\n\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        read_jsonl(path, "category")


# --- commands --------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mixroute")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


def test_eval_command_writes_png_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"text": "Solve for x: 3x + 7 = 22.", "category": "math"},
        {"text": "What is the derivative of sin(x) * x^2?", "category": "math"},
        {"text": "Explain how mitochondria produce ATP.", "category": "biology"},
        {"text": "What were the main causes of World War I?", "category": "history"},
        {"text": "Write a haiku about autumn leaves.", "category": "other"},
    ]
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert _run(["eval", str(data)]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "accuracy" in out and "p50" in out
    with Image.open(tmp_path / "confusion.png") as image:
        assert image.format == "PNG"

    png = tmp_path / "out" / "m.png"
    assert _run(["eval", str(data), "--png", str(png), "--limit", "2"]) == 0
    assert png.is_file()
    assert "examples       2" in capsys.readouterr().out
    assert _run(["eval"]) == 2  # neither FILE nor --builtin-heldout


def test_classify_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["classify", "What is the integral of 1/x dx?"]) == 0
    out = capsys.readouterr().out
    assert "category:   math" in out and "top 3:" in out
    assert _run(["classify", "--json", "Which enzyme unwinds DNA during replication?"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["category"] == "biology"
    assert len(payload["top"]) == 3
    assert payload["top"][0]["category"] == payload["category"]
    assert 0 < payload["confidence"] <= 1 and payload["time_ms"] > 0
