"""Detect: every text of a `Document` in, `Finding`s out.

The parse stage's flags (hidden content, redaction failures, unreadable
parts) are findings already; the identifier, marking and keyword detectors
are registered as they are built. The types are the contract the decide
stage is written against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smtpguard.config.model import DetectConfig
from smtpguard.detect.base import Confidence, Detector, Hit
from smtpguard.detect.detectors import protective_marking
from smtpguard.detect.detectors.protective_marking import ProtectiveMarkingDetector
from smtpguard.detect.edm.match import PersonDetector
from smtpguard.detect.engine import (
    Located,
    Text,
    bulk_finding,
    flag_findings,
    group,
    scan_texts,
    texts_of,
)
from smtpguard.detect.registry import (
    BULK_STRONG,
    BULK_WEAK,
    DEFAULT_BULK_MIN_DISTINCT,
    IDENTIFIERS,
    SUBJECT_ONLY,
    configured_detectors,
    default_detectors,
)
from smtpguard.parse import Document

__all__ = [
    "Confidence",
    "Detection",
    "Detector",
    "Finding",
    "Hit",
    "detect_findings",
    "detect_message",
    "detect_with",
    "findings_with",
]


@dataclass(frozen=True)
class Finding:
    detector: str  # "nhs_number", "case_reference", "uninspectable", ...
    location: str  # "body", "subject", "attachment:report.pdf"
    confidence: Confidence
    count: int  # distinct values
    excerpt: str  # redacted: never the full value
    theme: str | None = None  # keywords: the dictionary's theme ("health")


@dataclass(frozen=True)
class Detection:
    """What the detect stage hands to decide."""

    findings: tuple[Finding, ...]
    # Case references the message refers to: by reference, or by a case subject's name.
    # In clear: a reference names a case, not a person, and the verdict lists them.
    cases: tuple[str, ...] = ()


def detect_message(
    document: Document,
    detectors: Sequence[Detector] | None = None,
    *,
    bulk_min_distinct: int | None = DEFAULT_BULK_MIN_DISTINCT,
) -> Detection:
    """Findings over every text (the default detectors unless given), plus the parse flags.

    `bulk_min_distinct=None` turns the bulk count off.
    """
    if detectors is None:
        detectors = default_detectors()
    texts = list(texts_of(document))
    located = scan_texts(texts, detectors, subject_only=SUBJECT_ONLY, identifiers=IDENTIFIERS)
    located = _record_matches_across_parts(located, texts)
    located += _label_markings(document, detectors)
    grouped = group(located) + flag_findings(document.parts)
    if bulk_min_distinct is not None:
        bulk = bulk_finding(located, BULK_STRONG, BULK_WEAK, bulk_min_distinct)
        if bulk is not None:
            grouped.append(bulk)
    findings = tuple(
        Finding(g.detector, g.location, g.confidence, g.count, g.excerpt, g.theme) for g in grouped
    )
    return Detection(findings, _cases(located))


def detect_findings(
    document: Document,
    detectors: Sequence[Detector] | None = None,
    *,
    bulk_min_distinct: int | None = DEFAULT_BULK_MIN_DISTINCT,
) -> tuple[Finding, ...]:
    return detect_message(document, detectors, bulk_min_distinct=bulk_min_distinct).findings


def detect_with(document: Document, settings: DetectConfig) -> Detection:
    """Detection with the detectors a config asks for."""
    configured = configured_detectors(settings)
    return detect_message(
        document, configured.detectors, bulk_min_distinct=configured.bulk_min_distinct
    )


def findings_with(document: Document, settings: DetectConfig) -> tuple[Finding, ...]:
    return detect_with(document, settings).findings


def _cases(located: Sequence[Located]) -> tuple[str, ...]:
    """Case references, and the cases of case subjects named (a party's name alone, such
    as a solicitor's who acts in several cases, does not say which case)."""
    cases = set()
    for item in located:
        if item.detector.name == "case_reference":
            cases.add(item.hit.value)
        elif isinstance(item.detector, PersonDetector) and item.hit.confidence >= Confidence.MEDIUM:
            case = item.detector.case_of(item.hit.value)
            if case is not None and ":subject:" in item.hit.value:
                cases.add(case)
    return tuple(sorted(cases))


def _record_matches_across_parts(located: list[Located], texts: list[Text]) -> list[Located]:
    """A child's name in the body and their date of birth in the attached referral is
    still a name with its date of birth in one message: read such names again with
    every date the message holds."""
    people = [
        (item.detector, item.location)
        for item in located
        if isinstance(item.detector, PersonDetector) and not item.hit.value.endswith(":dob")
    ]
    if not people or len(texts) < 2:
        return located
    person = people[0][0]
    dates = set().union(*(person.dates_in(item.text) for item in texts))
    locations = {location for _, location in people}
    kept = [
        item
        for item in located
        if not (isinstance(item.detector, PersonDetector) and item.location in locations)
    ]
    for item in texts:
        if item.location in locations:
            kept += [Located(person, item.location, hit) for hit in person.scan(item.text, dates)]
    return kept


def _label_markings(document: Document, detectors: Sequence[Detector]) -> list[Located]:
    """Microsoft 365 sensitivity labels in the msip_labels header are markings too."""
    marking = next((d for d in detectors if d.name == protective_marking.DETECTOR.name), None)
    if not isinstance(marking, ProtectiveMarkingDetector):
        return []
    return [
        Located(marking, f"header:{name}", hit)
        for name, value in document.headers
        if name.lower() == "msip_labels"
        for hit in marking.label_markings(value)
    ]
