"""Detect: every text of a `Document` in, `Finding`s out.

No detectors are registered yet; they arrive with the detection work. The
types are the contract the decide stage is written against.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from smtpguard.parse import Document


class Confidence(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class Finding:
    detector: str  # "nhs_number", "case_reference", "uninspectable", ...
    location: str  # "body", "subject", "attachment:report.pdf"
    confidence: Confidence
    count: int  # distinct values
    excerpt: str  # redacted: never the full value


def detect_findings(document: Document) -> tuple[Finding, ...]:
    return ()
