"""Detect: every text of a `Document` in, `Finding`s out.

The parse stage's flags (hidden content, redaction failures, unreadable
parts) are findings already; the identifier, marking and keyword detectors
are registered as they are built. The types are the contract the decide
stage is written against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smtpguard.detect.base import Confidence, Detector, Hit
from smtpguard.detect.engine import flag_findings, group, scan_texts, texts_of
from smtpguard.parse import Document

__all__ = ["Confidence", "Detector", "Finding", "Hit", "detect_findings"]


@dataclass(frozen=True)
class Finding:
    detector: str  # "nhs_number", "case_reference", "uninspectable", ...
    location: str  # "body", "subject", "attachment:report.pdf"
    confidence: Confidence
    count: int  # distinct values
    excerpt: str  # redacted: never the full value


def detect_findings(document: Document, detectors: Sequence[Detector] = ()) -> tuple[Finding, ...]:
    """Findings of `detectors` over every text, plus what the parse flags say."""
    grouped = group(scan_texts(texts_of(document), detectors)) + flag_findings(document.parts)
    return tuple(Finding(g.detector, g.location, g.confidence, g.count, g.excerpt) for g in grouped)
