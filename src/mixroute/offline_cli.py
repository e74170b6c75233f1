"""Offline commands of ``mixroute``: ``train``, ``eval`` and ``classify``.

``add_commands`` is the contract with the main CLI: it adds the subcommands and sets
``handler`` on each, which returns the exit status. Evaluation is organised by task
(``--task``): a task is one factory in ``TASKS`` that returns an ``EvalTask``, so adding
the PII, jailbreak or cache evaluation does not touch the loop, the metrics or the report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TextIO

import numpy as np
import numpy.typing as npt

from mixroute.evaluation.classification import compute_metrics, format_report, render_confusion_png
from mixroute.semantic.embedding import EmbeddingModel, builtin_minilm
from mixroute.semantic.heads import LinearHead, builtin_head_path
from mixroute.semantic.training import (
    default_domain_data_dir,
    embed_texts,
    heldout_leaks,
    load_domain_split,
    train_domain_head,
)

Example = tuple[str, str]  # (text, true label)


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    top: tuple[tuple[str, float], ...]  # best first


@dataclass(frozen=True)
class EvalTask:
    """What ``mixroute eval`` needs to know about one classifier.

    ``classify`` is exactly the per-request work the gateway does (so its wall time is the
    latency reported); ``builtin_heldout`` and ``leaks`` are optional because not every
    task ships an evaluation split or a training set to compare against.
    """

    name: str
    labels: tuple[str, ...]
    label_key: str  # the JSONL field holding the true label
    classify: Callable[[str], Prediction]
    builtin_heldout: Callable[[], list[Example]] | None = None
    leaks: Callable[[list[str]], list[int]] | None = None  # indices too close to train data


def domain_task(head_path: Path | None = None) -> EvalTask:
    """The domain classifier: built-in embedding model + domain head."""
    model = EmbeddingModel(builtin_minilm(), threads=1)
    head = LinearHead.load(head_path or builtin_head_path("domain"), model.spec.name)
    data_dir = default_domain_data_dir()

    def classify(text: str) -> Prediction:
        return _top_prediction(head, head.probabilities(model.embed([text])[0]))

    def leaks(texts: list[str]) -> list[int]:
        train = [text for text, _ in load_domain_split(data_dir, "train")]
        found = heldout_leaks(embed_texts(model, train), embed_texts(model, texts))
        return [leak.heldout_index for leak in found]

    return EvalTask(
        name="domain",
        labels=head.classes,
        label_key="category",
        classify=classify,
        builtin_heldout=lambda: load_domain_split(data_dir, "heldout"),
        leaks=leaks,
    )


TASKS: Mapping[str, Callable[[Path | None], EvalTask]] = MappingProxyType({"domain": domain_task})


def _top_prediction(head: LinearHead, probs: npt.NDArray[np.float32], k: int = 3) -> Prediction:
    order = np.argsort(-probs)[:k]
    top = tuple((head.classes[int(i)], float(probs[int(i)])) for i in order)
    return Prediction(label=top[0][0], confidence=top[0][1], top=top)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train``, ``eval`` and ``classify`` to the main CLI's subcommands."""
    train = subparsers.add_parser("train", help="train the domain classification head")
    train.add_argument(
        "--data",
        type=Path,
        default=None,
        help="directory with train/<category>.txt files (default: the package data)",
    )
    train.add_argument(
        "--out", type=Path, default=None, help="head file to write (default: the built-in head)"
    )
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser("eval", help="evaluate a classifier on labelled JSONL")
    evaluate.add_argument(
        "file", type=Path, nargs="?", help='JSONL of {"text": ..., "category": ...} lines'
    )
    evaluate.add_argument(
        "--builtin-heldout",
        action="store_true",
        help="evaluate on the package's held-out split instead of FILE",
    )
    evaluate.add_argument("--task", choices=sorted([*TASKS, *REPORT_TASKS]), default="domain")
    evaluate.add_argument(
        "--split",
        choices=("dev", "test", "all"),
        default="test",
        help="cache task: which split of data/cache to use (tune on dev, report test)",
    )
    evaluate.add_argument(
        "--head", type=Path, default=None, help="head file (default: the task's built-in head)"
    )
    evaluate.add_argument(
        "--png",
        type=Path,
        default=None,
        help="confusion matrix image (default: confusion.png next to FILE, or here)",
    )
    evaluate.add_argument("--report", type=Path, default=None, help="also write the text report")
    evaluate.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="evaluate N examples spread evenly over the input (every class keeps a share)",
    )
    evaluate.add_argument(
        "--leak-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exclude examples near-duplicating the training data "
        "(default: on for --builtin-heldout, off for FILE)",
    )
    evaluate.set_defaults(handler=run_eval)

    classify = subparsers.add_parser("classify", help="classify one text with the domain head")
    classify.add_argument("text")
    classify.add_argument("--json", action="store_true", help="print one JSON object")
    classify.set_defaults(handler=run_classify)


def run_train(args: argparse.Namespace) -> int:
    data_dir: Path = args.data or default_domain_data_dir()
    out: Path = args.out or builtin_head_path("domain")
    model = EmbeddingModel(builtin_minilm(), threads=1)
    head, report = train_domain_head(model, data_dir, progress=_log)
    print(report.format())
    head.save(out)
    print(f"saved {out}")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    task = domain_task()
    started = time.perf_counter()
    prediction = task.classify(args.text)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if args.json:
        payload = {
            "task": task.name,
            "category": prediction.label,
            "confidence": round(prediction.confidence, 4),
            "top": [{"category": c, "probability": round(p, 4)} for c, p in prediction.top],
            "time_ms": round(elapsed_ms, 2),
        }
        print(json.dumps(payload))
        return 0
    print(f"category:   {prediction.label}")
    print(f"confidence: {prediction.confidence:.3f}")
    print("top 3:      " + ", ".join(f"{c} {p:.3f}" for c, p in prediction.top))
    print(f"time:       {elapsed_ms:.1f} ms (embedding + head)")
    return 0


def cache_report(args: argparse.Namespace) -> str:
    """The semantic cache's hit and false-hit rates on data/cache (docs/cache.md)."""
    from mixroute.evaluation.cache import evaluate_cache, format_cache_report

    model = EmbeddingModel(builtin_minilm(), threads=1)
    results, check_us = evaluate_cache(model, args.split, args.file.parent if args.file else None)
    return format_cache_report(results, check_us, args.split)


def pii_report(args: argparse.Namespace) -> str:
    """PII precision/recall per type, false positives on PII-free prompts, latency."""
    from mixroute.evaluation.pii import evaluate_pii
    from mixroute.guards.pii import PRIORITY, PIIDetector

    default = Path(str(resources.files("mixroute") / "data/guards/pii/heldout.jsonl"))
    return evaluate_pii(PIIDetector(PRIORITY), args.file or default).format() + "\n"


def jailbreak_report(args: argparse.Namespace) -> str:
    """Jailbreak recall, false positives on benign and hard-benign prompts, ROC AUC."""
    from mixroute.evaluation.jailbreak import evaluate_jailbreak
    from mixroute.guards.jailbreak import JailbreakDetector
    from mixroute.guards.jailbreak_training import load_project_split

    model = EmbeddingModel(builtin_minilm(), threads=1)
    detector = JailbreakDetector.load(
        args.head or builtin_head_path("jailbreak"), embedding_model=model.spec.name
    )
    if args.file is not None:
        rows = [json.loads(line) for line in args.file.read_text().splitlines() if line.strip()]
        texts = [r["text"] for r in rows]
        labels = [int(r["label"]) for r in rows]
        kinds = [str(r.get("kind", "attack" if r["label"] else "benign")) for r in rows]
    else:
        heldout = load_project_split("heldout")
        texts, labels, kinds = (
            [e.text for e in heldout],
            [e.label for e in heldout],
            [e.kind for e in heldout],
        )
    evaluation, _ = evaluate_jailbreak(
        detector, model, texts, labels, kinds, title="jailbreak guard"
    )
    return evaluation.format() + "\n"


def tools_report(args: argparse.Namespace) -> str:
    """How often the right tool survives tool selection, and the prompt tokens saved."""
    import asyncio

    from mixroute.evaluation.tools import evaluate_tools, format_tools_report

    model = EmbeddingModel(builtin_minilm(), threads=1)
    return format_tools_report(asyncio.run(evaluate_tools(model, args.file)))


# Tasks whose evaluation is not a single-label classification: each returns a text report.
# Without FILE they run on the package's own held-out data.
REPORT_TASKS: Mapping[str, Callable[[argparse.Namespace], str]] = MappingProxyType(
    {"cache": cache_report, "pii": pii_report, "jailbreak": jailbreak_report, "tools": tools_report}
)


def run_eval(args: argparse.Namespace) -> int:
    if args.task in REPORT_TASKS:
        report = REPORT_TASKS[args.task](args)
        print(report, end="")
        if args.report is not None:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(report, encoding="utf-8")
        return 0
    if (args.file is None) == (not args.builtin_heldout):
        print("eval: give either FILE or --builtin-heldout", file=sys.stderr)
        return 2
    task = TASKS[args.task](args.head)
    if args.builtin_heldout:
        if task.builtin_heldout is None:
            print(f"eval: task {task.name!r} has no built-in held-out split", file=sys.stderr)
            return 2
        examples = task.builtin_heldout()
        source = "the built-in held-out split"
        png = args.png or Path("confusion.png")
    else:
        try:
            examples = read_jsonl(args.file, task.label_key)
        except (OSError, ValueError) as exc:
            print(f"eval: {exc}", file=sys.stderr)
            return 2
        source = str(args.file)
        png = args.png or args.file.parent / "confusion.png"
    if args.limit is not None and 0 < args.limit < len(examples):
        picks = np.linspace(0, len(examples) - 1, args.limit).round().astype(int)
        examples = [examples[int(i)] for i in picks]
    if not examples:
        print("eval: no examples", file=sys.stderr)
        return 2

    excluded: list[int] = []
    check = args.builtin_heldout if args.leak_check is None else args.leak_check
    if check and task.leaks is not None:
        _log(f"checking {len(examples)} examples against the training data")
        excluded = task.leaks([text for text, _ in examples])
        for i in excluded:
            _log(f"excluded (near-duplicate of a training line): {examples[i][0]!r}")
        dropped = set(excluded)
        examples = [e for i, e in enumerate(examples) if i not in dropped]

    true, predicted, confidence, latency = [], [], [], []
    bar = ProgressBar(len(examples), label=f"{task.name} eval")
    for done, (text, label) in enumerate(examples, start=1):
        started = time.perf_counter()
        prediction = task.classify(text)
        latency.append((time.perf_counter() - started) * 1000)
        true.append(label)
        predicted.append(prediction.label)
        confidence.append(prediction.confidence)
        bar.update(done)
    bar.close()

    metrics = compute_metrics(true, predicted, confidence, latency, labels=task.labels)
    title = f"{task.name} classification on {source}: {metrics.count} examples"
    if check and task.leaks is not None:
        title += f" ({len(excluded)} excluded as near-duplicates of training lines)"
    report = format_report(metrics, title=title)
    print(report, end="")
    render_confusion_png(
        metrics.confusion,
        metrics.labels,
        png,
        title=f"{task.name}: accuracy {metrics.accuracy:.3f}, macro-F1 {metrics.macro_f1:.3f}",
    )
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report, encoding="utf-8")
    print(f"confusion matrix image: {png}")
    return 0


def read_jsonl(path: Path, label_key: str) -> list[Example]:
    """(text, label) pairs from a JSONL file; blank lines are skipped, others must parse."""
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text, label = record["text"], record[label_key]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f'{path}:{number}: expected {{"text": ..., "{label_key}": ...}} ({exc})'
                ) from exc
            if not isinstance(text, str) or not isinstance(label, str):
                raise ValueError(f"{path}:{number}: text and {label_key} must be strings")
            examples.append((text, label))
    return examples


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ProgressBar:
    """A one-line progress bar on stderr (no tqdm dependency).

    On a terminal it redraws in place at most ten times a second; into a file or pipe it
    writes a line every 10% so CI logs stay short.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty()
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = -1

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if self.interactive:
            if now - self._last_draw >= 0.1 or done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(done, now))
                self.stream.flush()
        else:
            decile = done * 10 // self.total
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line(done, now) + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def _line(self, done: int, now: float) -> str:
        width = 30
        filled = width * done // self.total
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        return (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done}/{self.total} {rate:.0f}/s {elapsed:.0f}s"
        )
