"""Precision and recall of the default detectors over the labelled corpus.

Importable by the tests (`test_corpus.py`) and the bench script
(`bench/detect_accuracy.py`); it has no test functions of its own.

Each corpus item is one text labelled with the normalised values every
detector should report (`expect`); a detector not listed should report
nothing. Scoring is by distinct value per item, the way findings count:
a value reported and expected is a true positive, reported but not expected
a false alarm, expected but not reported a miss.

The text goes through `scan_texts` with the registry's SUBJECT_ONLY and
IDENTIFIERS, the call `detect_findings` makes in production, so keyword
proximity applies: a proximity-only keyword with no identifier near it is
not reported, and the corpus expects it only where an identifier is near.

`tolerate` lists values a detector may report at LOW confidence without it
being a false alarm: the design keeps LOW identifier hits (an NHS-valid
number labelled "Invoice", a CHI-shaped number with no "CHI" near) for bulk
counts only, so they decide nothing. Reported at MEDIUM or above, or not
listed, they are false alarms; not reported, they cost nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smtpguard.detect.base import Confidence, Detector
from smtpguard.detect.engine import Text, scan_texts
from smtpguard.detect.registry import IDENTIFIERS, SUBJECT_ONLY, default_detectors

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"

_ITEM_KEYS = frozenset(
    {"id", "text", "expect", "tolerate", "location", "attachment", "negative_for", "note"}
)
_LOCATIONS = frozenset({"body", "subject"})
_ATTACHMENTS = frozenset({"docx", "xlsx", "pdf"})


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    expect: Mapping[str, frozenset[str]]
    tolerate: Mapping[str, frozenset[str]] = field(default_factory=dict)
    location: str = "body"  # "subject" runs the subject-only detectors too
    attachment: str | None = None  # also built into this kind of file by test_corpus
    negative_for: frozenset[str] = frozenset()  # detectors this item is a hard negative for
    source: str = ""


@dataclass(frozen=True)
class Outcome:
    """One miss or false alarm: fictional data, so the value may be shown."""

    item: str
    detector: str
    value: str
    confidence: Confidence | None = None  # None for a miss

    def __str__(self) -> str:
        level = f" ({self.confidence.label})" if self.confidence is not None else ""
        return f"{self.item}: {self.detector} {self.value!r}{level}"


@dataclass
class Score:
    detector: str
    positive_items: int = 0
    negative_items: int = 0  # items labelled as hard negatives for this detector
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float | None:
        reported = self.tp + self.fp
        return self.tp / reported if reported else None

    @property
    def recall(self) -> float | None:
        expected = self.tp + self.fn
        return self.tp / expected if expected else None


@dataclass
class Report:
    items: int
    scores: dict[str, Score]
    misses: list[Outcome]
    false_alarms: list[Outcome]

    def outcomes_for(self, detector: str) -> list[Outcome]:
        return [o for o in self.misses + self.false_alarms if o.detector == detector]


def detector_names(detectors: Sequence[Detector] | None = None) -> list[str]:
    return [d.name for d in (default_detectors() if detectors is None else detectors)]


def _values(where: str, raw: Any, known: set[str]) -> dict[str, frozenset[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of detector name to values")
    out: dict[str, frozenset[str]] = {}
    for name, values in raw.items():
        if name not in known:
            raise ValueError(f"{where}: unknown detector {name!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"{where}: {name} must be a list of non-empty strings")
        if len(set(values)) != len(values):
            raise ValueError(f"{where}: {name} lists a value twice")
        out[name] = frozenset(values)
    return out


def load_corpus(directory: Path = CORPUS_DIR) -> list[Item]:
    """Every item of every YAML file, validated: a labelling slip is an error, not a score."""
    known = set(detector_names())
    items: list[Item] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path.name}: expected a list of items")
        for index, raw in enumerate(data):
            where = f"{path.name} item #{index + 1}"
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
                raise ValueError(f"{where}: expected a mapping with an 'id'")
            where = f"{path.name} {raw['id']}"
            unknown = set(raw) - _ITEM_KEYS
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
            if raw["id"] in seen:
                raise ValueError(f"{where}: id already used in {seen[raw['id']]}")
            seen[raw["id"]] = path.name
            text = raw.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: empty or missing 'text'")
            location = raw.get("location", "body")
            if location not in _LOCATIONS:
                raise ValueError(f"{where}: location must be one of {sorted(_LOCATIONS)}")
            attachment = raw.get("attachment")
            if attachment is not None and attachment not in _ATTACHMENTS:
                raise ValueError(f"{where}: attachment must be one of {sorted(_ATTACHMENTS)}")
            expect = _values(f"{where} expect", raw.get("expect"), known)
            tolerate = _values(f"{where} tolerate", raw.get("tolerate"), known)
            negative_for = raw.get("negative_for", [])
            if not isinstance(negative_for, list) or not set(negative_for) <= known:
                raise ValueError(f"{where}: negative_for must list detector names")
            clash = [name for name in negative_for if expect.get(name)]
            if clash:
                raise ValueError(f"{where}: negative_for {clash} but expects values from it")
            items.append(
                Item(
                    id=raw["id"],
                    text=text,
                    expect=expect,
                    tolerate=tolerate,
                    location=location,
                    attachment=attachment,
                    negative_for=frozenset(negative_for),
                    source=path.name,
                )
            )
    return items


def found(
    texts: Iterable[Text], detectors: Sequence[Detector] | None = None
) -> dict[str, dict[str, Confidence]]:
    """Per detector, each distinct value reported and its highest confidence."""
    detectors = default_detectors() if detectors is None else detectors
    located = scan_texts(texts, detectors, subject_only=SUBJECT_ONLY, identifiers=IDENTIFIERS)
    out: dict[str, dict[str, Confidence]] = defaultdict(dict)
    for item in located:
        by_value = out[item.detector.name]
        seen = by_value.get(item.hit.value)
        if seen is None or item.hit.confidence > seen:
            by_value[item.hit.value] = item.hit.confidence
    return dict(out)


def judge(
    item: Item, reported: Mapping[str, Mapping[str, Confidence]]
) -> tuple[dict[str, tuple[int, int, int]], list[Outcome], list[Outcome]]:
    """Per detector (tp, fp, fn) for one item's reported values, and the outcomes behind them."""
    counts: dict[str, tuple[int, int, int]] = {}
    misses: list[Outcome] = []
    alarms: list[Outcome] = []
    for name in set(item.expect) | set(reported):
        expected = item.expect.get(name, frozenset())
        tolerated = item.tolerate.get(name, frozenset())
        got = reported.get(name, {})
        tp = fp = 0
        for value, confidence in sorted(got.items()):
            if value in expected:
                tp += 1
            elif value in tolerated and confidence is Confidence.LOW:
                continue
            else:
                fp += 1
                alarms.append(Outcome(item.id, name, value, confidence))
        missed = sorted(expected - set(got))
        misses += [Outcome(item.id, name, value) for value in missed]
        counts[name] = (tp, fp, len(missed))
    return counts, misses, alarms


def score(items: Sequence[Item], detectors: Sequence[Detector] | None = None) -> Report:
    """Scan every item as production does and count by distinct value per item."""
    scores = {name: Score(name) for name in detector_names(detectors)}
    misses: list[Outcome] = []
    alarms: list[Outcome] = []
    for item in items:
        reported = found([Text(item.location, item.text)], detectors)
        counts, item_misses, item_alarms = judge(item, reported)
        misses += item_misses
        alarms += item_alarms
        for name, (tp, fp, fn) in counts.items():
            entry = scores.setdefault(name, Score(name))
            entry.tp += tp
            entry.fp += fp
            entry.fn += fn
        for name, entry in scores.items():
            if item.expect.get(name):
                entry.positive_items += 1
            if name in item.negative_for:
                entry.negative_items += 1
    return Report(len(items), scores, misses, alarms)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(report: Report) -> str:
    """detector | items | TP | FP | FN | precision | recall, one row per detector."""
    lines = [
        "| detector | items (positive / hard negative) | TP | FP | FN | precision | recall |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    total = Score("all")
    for entry in report.scores.values():
        lines.append(
            f"| {entry.detector} | {entry.positive_items} / {entry.negative_items} "
            f"| {entry.tp} | {entry.fp} | {entry.fn} "
            f"| {_ratio(entry.precision)} | {_ratio(entry.recall)} |"
        )
        total.tp += entry.tp
        total.fp += entry.fp
        total.fn += entry.fn
    lines.append(
        f"| **all** | {report.items} items | {total.tp} | {total.fp} | {total.fn} "
        f"| {_ratio(total.precision)} | {_ratio(total.recall)} |"
    )
    return "\n".join(lines)
