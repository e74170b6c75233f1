"""Metrics for a single-label classifier, from four parallel lists.

Every classifier in the router (domain today; PII, jailbreak and cache heads later) is
judged the same way: true label, predicted label, the confidence the router would
threshold on, and the time one request took. Keeping the inputs that plain lets any task
reuse the report, the calibration number and the confusion-matrix image unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

IntMatrix = npt.NDArray[np.int64]

ECE_BINS = 10


@dataclass(frozen=True)
class ClassStats:
    """One row of the per-class table.

    ``mean_confidence`` is the average confidence of the predictions *of* this class; set
    next to ``precision`` it shows whether a threshold means the same thing for every
    category (a calibrated head has the two close for each class, not just on average).
    """

    label: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    mean_confidence: float


@dataclass(frozen=True)
class ClassificationMetrics:
    labels: tuple[str, ...]
    count: int
    accuracy: float
    macro_f1: float
    per_class: tuple[ClassStats, ...]
    confusion: IntMatrix  # rows: true label, columns: predicted label, in ``labels`` order
    ece: float
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    latency_mean_ms: float | None


def expected_calibration_error(
    confidence: Sequence[float] | npt.NDArray[np.floating],
    correct: Sequence[bool] | npt.NDArray[np.bool_],
    bins: int = ECE_BINS,
) -> float:
    """Top-label ECE: the bin-size-weighted gap between confidence and accuracy.

    Bins are equal-width on [0, 1], right-closed, so a confidence of exactly 1.0 lands in
    the last bin and 0.1 in the first.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hits = np.asarray(correct, dtype=np.float64)
    if conf.shape != hits.shape:
        raise ValueError("confidence and correct must have the same length")
    if conf.size == 0:
        return 0.0
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        if n:
            total += n * abs(float(hits[members].mean()) - float(conf[members].mean()))
    return total / conf.size


def compute_metrics(
    true: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    latency_ms: Sequence[float] = (),
    labels: Sequence[str] | None = None,
) -> ClassificationMetrics:
    """All metrics at once; ``labels`` fixes the row/column order (else sorted).

    A predicted label outside ``labels`` is appended rather than dropped, so a head that
    emits an unexpected class shows up in the confusion matrix instead of vanishing.
    ``latency_ms`` may be empty when the caller did not time requests.
    """
    n = len(true)
    if len(predicted) != n or len(confidence) != n:
        raise ValueError("true, predicted and confidence must have the same length")
    if latency_ms and len(latency_ms) != n:
        raise ValueError("latency_ms must be empty or as long as the other lists")
    order = list(labels) if labels is not None else sorted(set(true) | set(predicted))
    for label in [*true, *predicted]:
        if label not in order:
            order.append(label)
    position = {label: i for i, label in enumerate(order)}
    k = len(order)
    confusion = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        confusion[position[t], position[p]] += 1

    conf = np.asarray(confidence, dtype=np.float64)
    pred_index = np.array([position[p] for p in predicted], dtype=np.int64)
    stats = []
    for i, label in enumerate(order):
        tp = int(confusion[i, i])
        support = int(confusion[i, :].sum())
        n_pred = int(confusion[:, i].sum())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        mine = conf[pred_index == i]
        stats.append(
            ClassStats(
                label=label,
                precision=precision,
                recall=recall,
                f1=f1,
                support=support,
                predicted=n_pred,
                mean_confidence=float(mine.mean()) if mine.size else math.nan,
            )
        )
    # Macro-F1 over classes that occur in the truth: a class absent from the evaluation
    # set would otherwise add a meaningless zero.
    present = [s.f1 for s in stats if s.support]
    correct = [t == p for t, p in zip(true, predicted, strict=True)]
    p50, p90, p99, mean = _latency(latency_ms)
    return ClassificationMetrics(
        labels=tuple(order),
        count=n,
        accuracy=sum(correct) / n if n else 0.0,
        macro_f1=float(np.mean(present)) if present else 0.0,
        per_class=tuple(stats),
        confusion=confusion,
        ece=expected_calibration_error(conf, correct),
        latency_p50_ms=p50,
        latency_p90_ms=p90,
        latency_p99_ms=p99,
        latency_mean_ms=mean,
    )


def _latency(
    latency_ms: Sequence[float],
) -> tuple[float | None, float | None, float | None, float | None]:
    if not latency_ms:
        return None, None, None, None
    values = np.asarray(latency_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(values, [50, 90, 99]))
    return p50, p90, p99, float(values.mean())


def _abbreviations(labels: Sequence[str], width: int) -> list[str]:
    """Column heads for the text matrix: label prefixes, or indexes if prefixes collide."""
    short = [label[:width] for label in labels]
    if len(set(short)) == len(short):
        return short
    return [str(i) for i in range(len(labels))]


def format_report(metrics: ClassificationMetrics, title: str = "") -> str:
    """A plain-text report: headline numbers, per-class table, confusion matrix, latency."""
    lines = [title] if title else []
    lines += [
        f"examples       {metrics.count}",
        f"accuracy       {metrics.accuracy:.4f}",
        f"macro-F1       {metrics.macro_f1:.4f}",
        f"ECE ({ECE_BINS} bins)  {metrics.ece:.4f}",
        "",
    ]
    name_width = max(len("class"), *(len(s.label) for s in metrics.per_class))
    lines.append(
        f"{'class':<{name_width}}  precision  recall      F1  support  predicted  mean conf"
    )
    for s in metrics.per_class:
        mean_conf = "      -" if math.isnan(s.mean_confidence) else f"{s.mean_confidence:9.3f}"
        lines.append(
            f"{s.label:<{name_width}}  {s.precision:9.3f}  {s.recall:6.3f}  {s.f1:6.3f}"
            f"  {s.support:7d}  {s.predicted:9d}  {mean_conf}"
        )
    present = [s for s in metrics.per_class if s.support]
    if present:
        lines.append(
            f"{'macro avg':<{name_width}}  {np.mean([s.precision for s in present]):9.3f}"
            f"  {np.mean([s.recall for s in present]):6.3f}  {metrics.macro_f1:6.3f}"
            f"  {metrics.count:7d}"
        )
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
    cell = max(5, len(str(int(metrics.confusion.max(initial=0)))) + 1)
    heads = _abbreviations(metrics.labels, cell)
    lines.append(" " * name_width + " " + "".join(f"{h:>{cell + 1}}" for h in heads))
    for label, row in zip(metrics.labels, metrics.confusion, strict=True):
        lines.append(f"{label:<{name_width}} " + "".join(f"{int(v):>{cell + 1}}" for v in row))
    if metrics.latency_p50_ms is not None:
        lines += [
            "",
            "latency per request (ms): "
            f"p50 {metrics.latency_p50_ms:.2f}  p90 {metrics.latency_p90_ms:.2f}  "
            f"p99 {metrics.latency_p99_ms:.2f}  mean {metrics.latency_mean_ms:.2f}",
        ]
    return "\n".join(lines) + "\n"


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

_WHITE = (255, 255, 255)
_INK = (33, 33, 33)
_LOW = np.array([247, 251, 255], dtype=np.float64)  # "Blues" colour map end points
_HIGH = np.array([8, 48, 107], dtype=np.float64)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _text_at(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    font: Font,
    fill: tuple[int, int, int],
) -> None:
    """Draw so the ink's top-left corner is at ``xy``.

    Offsetting by the measured bounding box, rather than passing an ``anchor``, also works
    with the bitmap font Pillow falls back to when it is built without FreeType.
    """
    left, top, _, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - left, xy[1] - top), text, font=font, fill=fill)


def _vertical_label(text: str, font: Font, colour: tuple[int, int, int]) -> Image.Image:
    """The text rotated 90 degrees, as an RGBA tile (column labels would overlap if flat)."""
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    tile = Image.new("RGBA", (int(right - left) + 2, int(bottom - top) + 2), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((1 - left, 1 - top), text, font=font, fill=(*colour, 255))
    return tile.rotate(90, expand=True)


def render_confusion_png(
    matrix: IntMatrix | Sequence[Sequence[int]],
    labels: Sequence[str],
    path: Path,
    title: str = "Confusion matrix",
) -> Path:
    """Draw a labelled heat map with the count in every cell and save it as a PNG.

    Colour is the share of the true class's row (that is, recall), so a small class's
    mistakes are as visible as a large one's; the printed number is the raw count.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"matrix is {counts.shape}, expected ({k}, {k}) for {k} labels")
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((_text_size(probe, label, font)[0] for label in labels), default=0)
    cell = max(40, _text_size(probe, str(int(counts.max(initial=0))), font)[0] + 14)
    pad = 16
    axis = 22  # room for the "true" / "predicted" axis titles
    title_h = 30
    left = pad + axis + label_w + 8
    top = title_h + axis + label_w + 8
    width = left + k * cell + pad
    height = top + k * cell + pad
    image = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(image)

    _text_at(draw, (pad, 8), title, font, _INK)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    for i in range(k):
        for j in range(k):
            x0, y0 = left + j * cell, top + i * cell
            colour = tuple(int(c) for c in _LOW + (_HIGH - _LOW) * share[i, j])
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=colour)
            text = str(int(counts[i, j]))
            tw, th = _text_size(draw, text, font)
            ink = _WHITE if share[i, j] > 0.5 else _INK
            _text_at(draw, (x0 + (cell - tw) / 2, y0 + (cell - th) / 2), text, font, ink)
    # Grid lines, and a frame around the diagonal cells (the correct answers).
    for n in range(k + 1):
        draw.line((left, top + n * cell, left + k * cell, top + n * cell), fill=(200, 200, 200))
        draw.line((left + n * cell, top, left + n * cell, top + k * cell), fill=(200, 200, 200))
    for i in range(k):
        x0, y0 = left + i * cell, top + i * cell
        draw.rectangle((x0, y0, x0 + cell, y0 + cell), outline=(230, 120, 20), width=2)

    for i, label in enumerate(labels):
        tw, th = _text_size(draw, label, font)
        y = top + i * cell + (cell - th) / 2
        _text_at(draw, (left - 8 - tw, y), label, font, _INK)
        tile = _vertical_label(label, font, _INK)
        x = left + i * cell + (cell - tile.width) // 2
        image.paste(tile, (x, top - 8 - tile.height), tile)

    true_tile = _vertical_label("true class", small, _INK)
    image.paste(true_tile, (pad, top + (k * cell - true_tile.height) // 2), true_tile)
    pw, _ = _text_size(draw, "predicted class", small)
    _text_at(draw, (left + (k * cell - pw) / 2, title_h), "predicted class", small, _INK)

    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
