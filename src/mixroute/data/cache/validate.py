"""Validate the semantic-cache evaluation set in this directory.

Run: python src/mixroute/data/cache/validate.py   (exit code 0 = valid)

Checks: every line is a JSON object with the expected fields and types; ids are
unique and sequential; paraphrase groups hold 3 to 5 texts that share the same
numbers; minimum counts (250 groups, 400 pairs, 50 pairs per kind); no text
appears twice anywhere (case, surrounding whitespace and trailing ?.! ignored),
within a file or across the two files; a != b in every pair; the split is
exactly the first 20% of lines (rounded) as "dev" and the rest as "test", and
every near-miss kind and every paraphrase topic has items in both splits.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = (
    "number",
    "entity",
    "negation",
    "unit",
    "code_language",
    "comparison_direction",
    "date_time",
    "other_attribute",
)
MIN_GROUPS = 250
MIN_PAIRS = 400
MIN_PER_KIND = 50
DEV_FRACTION = 0.2
NUM_RE = re.compile(r"\d+(?:[.,]\d+)*")


def norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip("?.! ")


def load(path: Path, errors: list[str]) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            errors.append(f"{path.name}:{lineno}: blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{path.name}:{lineno}: invalid JSON ({exc})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{path.name}:{lineno}: not a JSON object")
            continue
        obj["_line"] = lineno
        rows.append(obj)
    return rows


def check_split(name: str, rows: list[dict], errors: list[str]) -> None:
    n_dev = round(DEV_FRACTION * len(rows))
    for i, row in enumerate(rows):
        want = "dev" if i < n_dev else "test"
        if row.get("split") != want:
            errors.append(
                f"{name}:{row['_line']}: split is {row.get('split')!r}, expected {want!r}"
            )


def check_ids(name: str, rows: list[dict], prefix: str, errors: list[str]) -> None:
    for i, row in enumerate(rows):
        want = f"{prefix}{i + 1:03d}"
        if row.get("id") != want:
            errors.append(f"{name}:{row['_line']}: id is {row.get('id')!r}, expected {want!r}")


def text_ok(value: object) -> bool:
    return isinstance(value, str) and value.strip() == value and bool(value)


def main() -> int:
    errors: list[str] = []
    seen: dict[str, str] = {}  # normalized text -> where it was first seen

    def claim(text: str, where: str) -> None:
        key = norm(text)
        if key in seen:
            errors.append(f"{where}: duplicate text {text!r} (also at {seen[key]})")
        else:
            seen[key] = where

    # paraphrases
    para = load(HERE / "paraphrases.jsonl", errors)
    check_ids("paraphrases.jsonl", para, "p", errors)
    check_split("paraphrases.jsonl", para, errors)
    topic_splits: dict[str, Counter] = {}
    for row in para:
        where = f"paraphrases.jsonl:{row['_line']}"
        extra = set(row) - {"id", "topic", "texts", "split", "_line"}
        if extra:
            errors.append(f"{where}: unexpected fields {sorted(extra)}")
        if not text_ok(row.get("topic")):
            errors.append(f"{where}: missing or bad topic")
        texts = row.get("texts")
        if not isinstance(texts, list) or not 3 <= len(texts) <= 5:
            errors.append(f"{where}: texts must be a list of 3 to 5 strings")
            continue
        if not all(text_ok(t) for t in texts):
            errors.append(
                f"{where}: every text must be a non-empty string without outer whitespace"
            )
            continue
        numbers = {tuple(sorted(NUM_RE.findall(t))) for t in texts}
        if len(numbers) > 1:
            errors.append(f"{where}: texts disagree on numbers {sorted(numbers)}")
        for t in texts:
            claim(t, where)
        topic_splits.setdefault(row.get("topic"), Counter())[row.get("split")] += 1

    # near misses
    pairs = load(HERE / "near_misses.jsonl", errors)
    check_ids("near_misses.jsonl", pairs, "n", errors)
    check_split("near_misses.jsonl", pairs, errors)
    kind_splits: dict[str, Counter] = {k: Counter() for k in KINDS}
    for row in pairs:
        where = f"near_misses.jsonl:{row['_line']}"
        extra = set(row) - {"id", "kind", "a", "b", "split", "_line"}
        if extra:
            errors.append(f"{where}: unexpected fields {sorted(extra)}")
        kind = row.get("kind")
        if kind not in KINDS:
            errors.append(f"{where}: unknown kind {kind!r}")
            continue
        a, b = row.get("a"), row.get("b")
        if not (text_ok(a) and text_ok(b)):
            errors.append(f"{where}: a and b must be non-empty strings without outer whitespace")
            continue
        if norm(a) == norm(b):
            errors.append(f"{where}: a and b are the same text")
        if kind == "number" and sorted(NUM_RE.findall(a)) == sorted(NUM_RE.findall(b)):
            errors.append(f"{where}: kind 'number' but a and b contain the same numbers")
        claim(a, where + " (a)")
        claim(b, where + " (b)")
        kind_splits[kind][row.get("split")] += 1

    # counts and split coverage
    if len(para) < MIN_GROUPS:
        errors.append(f"paraphrases.jsonl: {len(para)} groups, need at least {MIN_GROUPS}")
    if len(pairs) < MIN_PAIRS:
        errors.append(f"near_misses.jsonl: {len(pairs)} pairs, need at least {MIN_PAIRS}")
    for kind, c in kind_splits.items():
        if sum(c.values()) < MIN_PER_KIND:
            errors.append(
                f"near_misses.jsonl: kind {kind!r} has {sum(c.values())} pairs, need {MIN_PER_KIND}"
            )
        if not (c["dev"] and c["test"]):
            errors.append(f"near_misses.jsonl: kind {kind!r} missing from a split: {dict(c)}")
    for topic, c in topic_splits.items():
        if not (c["dev"] and c["test"]):
            errors.append(f"paraphrases.jsonl: topic {topic!r} missing from a split: {dict(c)}")

    # report
    n_texts = sum(len(r.get("texts", [])) for r in para)
    print(f"paraphrases.jsonl: {len(para)} groups, {n_texts} texts")
    for topic, c in topic_splits.items():
        print(f"  {topic:22s} {sum(c.values()):4d}  (dev {c['dev']}, test {c['test']})")
    print(f"near_misses.jsonl: {len(pairs)} pairs")
    for kind, c in kind_splits.items():
        print(f"  {kind:22s} {sum(c.values()):4d}  (dev {c['dev']}, test {c['test']})")
    if errors:
        print(f"\n{len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
