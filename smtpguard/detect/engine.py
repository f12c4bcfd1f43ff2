"""Every detector over every text of a Document, and parse flags, as Findings.

Findings are grouped per detector and location: "nhs_number in
attachment:report.pdf, 3 distinct values, high". Counts are of distinct
values. Excerpts are the detector's own redaction of one value; the values
themselves stay inside this function.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from smtpguard.detect.base import Confidence, Detector, Hit
from smtpguard.detect.prefilter import scan_detectors
from smtpguard.parse.model import Document, Flag, Part

# Parse flags that become findings, and under which detector name.
_HIDDEN_FLAGS = {
    Flag.HIDDEN_SHEET: "hidden sheet",
    Flag.VERY_HIDDEN_SHEET: "very hidden sheet",
    Flag.HIDDEN_ROWS: "hidden rows",
    Flag.HIDDEN_COLUMNS: "hidden columns",
    Flag.HIDDEN_TEXT: "hidden text",
    Flag.COMMENTS: "comments",
    Flag.TRACKED_CHANGES: "tracked changes",
}
_REDACTION_FLAGS = {
    Flag.TEXT_UNDER_REDACTION: "text under a redaction box",
    Flag.UNAPPLIED_REDACTION: "redaction marked but not applied",
}


@dataclass(frozen=True)
class Text:
    """One text to scan and where it came from."""

    location: str  # "subject", "body", "attachment:report.pdf"
    text: str


@dataclass(frozen=True)
class Located:
    detector: Detector
    location: str
    hit: Hit


def texts_of(document: Document) -> Iterable[Text]:
    if document.subject:
        yield Text("subject", document.subject)
    for part in document.parts:
        if part.text:
            yield Text(part.path, part.text)


# A proximity-only keyword ("refuge", "allegation") counts within this many
# characters of an identifier in the same text.
KEYWORD_REACH = 300


def scan_texts(
    texts: Iterable[Text],
    detectors: Sequence[Detector],
    *,
    subject_only: frozenset[str] = frozenset(),
    identifiers: frozenset[str] = frozenset(),
) -> list[Located]:
    located = []
    for item in texts:
        readers = [
            detector
            for detector in detectors
            if item.location == "subject" or detector.name not in subject_only
        ]
        found = [
            Located(detector, item.location, hit)
            for detector, hit in scan_detectors(item.text, readers)
        ]
        located += _near_identifiers(found, identifiers)
    return located


def _near_identifiers(found: list[Located], identifiers: frozenset[str]) -> list[Located]:
    """Drop LOW keyword hits that have no identifier near them; keep everything else."""
    anchors = sorted(item.hit.start for item in found if item.detector.name in identifiers)
    kept = []
    for item in found:
        if item.detector.name == "keywords" and item.hit.confidence is Confidence.LOW:
            # The first identifier at or after reach before the keyword: is it within reach after?
            index = bisect.bisect_left(anchors, item.hit.start - KEYWORD_REACH)
            if index == len(anchors) or anchors[index] > item.hit.start + KEYWORD_REACH:
                continue
            item = Located(item.detector, item.location, _raised(item.hit))
        kept.append(item)
    return kept


def _raised(hit: Hit) -> Hit:
    return Hit(hit.value, hit.start, hit.end, Confidence.MEDIUM)


@dataclass(frozen=True)
class Grouped:
    detector: str
    location: str
    confidence: Confidence
    count: int
    excerpt: str
    theme: str | None = None


def group(located: Iterable[Located]) -> list[Grouped]:
    """Per (detector, location, theme): distinct values, the highest confidence, one excerpt.

    A detector with themes (keywords) gives one finding per theme, so a rule can
    ask for health terms without being met by child-protection ones.
    """
    values: dict[tuple[str, str, str | None], dict[str, Confidence]] = defaultdict(dict)
    detectors: dict[str, Detector] = {}
    for item in located:
        theme_of = getattr(item.detector, "theme_of", None)
        theme = theme_of(item.hit.value) if theme_of is not None else None
        key = (item.detector.name, item.location, theme)
        detectors[item.detector.name] = item.detector
        seen = values[key].get(item.hit.value)
        if seen is None or item.hit.confidence > seen:
            values[key][item.hit.value] = item.hit.confidence
    grouped = []
    for (name, location, theme), by_value in values.items():
        strongest = max(by_value, key=lambda v: by_value[v])
        grouped.append(
            Grouped(
                name,
                location,
                by_value[strongest],
                len(by_value),
                detectors[name].redact(strongest),
                theme,
            )
        )
    return grouped


def bulk_finding(
    located: Iterable[Located],
    strong: Mapping[str, str],
    weak: Mapping[str, str],
    min_distinct: int,
) -> Grouped | None:
    """Many distinct identifiers in one message: a caseload, not a letter about one family.

    `strong` and `weak` map detector names to the plural a reviewer reads.
    HIGH when the strong kinds alone reach `min_distinct`, MEDIUM when they
    make at least half of it, LOW when phone numbers, postcodes and email
    addresses make up the rest.
    """
    values: dict[str, set[str]] = defaultdict(set)
    locations: set[str] = set()
    for item in located:
        name = item.detector.name
        if name in weak or (name in strong and item.hit.confidence >= Confidence.MEDIUM):
            values[name].add(item.hit.value)
            locations.add(item.location)
    strong_count = sum(len(v) for name, v in values.items() if name in strong)
    total = sum(len(v) for v in values.values())
    if total < min_distinct:
        return None
    if strong_count >= min_distinct:
        confidence = Confidence.HIGH
    elif strong_count * 2 >= min_distinct:
        confidence = Confidence.MEDIUM
    else:
        confidence = Confidence.LOW
    words = {**strong, **weak}
    rank = list(words)
    kinds = sorted(values, key=lambda name: (-len(values[name]), rank.index(name)))
    excerpt = f"{total} distinct identifiers: " + ", ".join(
        f"{len(values[name])} {words[name]}" for name in kinds
    )
    location = locations.pop() if len(locations) == 1 else "message"
    return Grouped("bulk_identifiers", location, confidence, total, excerpt)


def flag_findings(parts: Iterable[Part]) -> list[Grouped]:
    """Hidden content, redaction failures and unreadable parts, as findings policy can use."""
    found = []
    for part in parts:
        if part.kind == "uninspectable":
            found.append(Grouped("uninspectable", part.path, Confidence.HIGH, 1, part.reason))
        hidden = sorted(_HIDDEN_FLAGS[f] for f in part.flags if f in _HIDDEN_FLAGS)
        if hidden:
            found.append(
                Grouped(
                    "hidden_content", part.path, Confidence.HIGH, len(hidden), ", ".join(hidden)
                )
            )
        redaction = sorted(_REDACTION_FLAGS[f] for f in part.flags if f in _REDACTION_FLAGS)
        if redaction:
            found.append(
                Grouped(
                    "redaction_failure",
                    part.path,
                    Confidence.HIGH,
                    len(redaction),
                    ", ".join(redaction),
                )
            )
    return found
