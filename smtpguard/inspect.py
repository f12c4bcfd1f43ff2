"""One message through parse -> detect -> decide: the whole scan, no side effects.

The relay runs `read_message` (parse and detect) in its worker processes and
decides in its own process; `inspect_message` does all three here, for
`smtpguard scan` and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpguard.config.model import DetectConfig
from smtpguard.decide import Verdict, decide_verdict
from smtpguard.detect import Finding, detect_findings, findings_with
from smtpguard.envelope import Envelope
from smtpguard.parse import Document, Limits, parse_message
from smtpguard.parse.pool import unreadable_message


@dataclass(frozen=True)
class Reading:
    """What a worker hands back: the message's Document and the Findings in it."""

    document: Document
    findings: tuple[Finding, ...]


def read_message(raw: bytes, limits: Limits, settings: DetectConfig | None = None) -> Reading:
    """Parse and detect; with `settings`, the detectors that config asks for."""
    document = parse_message(raw, limits)
    return Reading(document, _findings(document, settings))


def _findings(document: Document, settings: DetectConfig | None) -> tuple[Finding, ...]:
    return detect_findings(document) if settings is None else findings_with(document, settings)


def unreadable_reading(reason: str, size: int) -> Reading:
    """A message no worker could read: one uninspectable part, and its finding."""
    document = unreadable_message(reason, size)
    return Reading(document, detect_findings(document, ()))


def inspect_document(
    document: Document, envelope: Envelope, settings: DetectConfig | None = None
) -> Verdict:
    return decide_verdict(envelope, _findings(document, settings))


def inspect_message(
    raw: bytes,
    envelope: Envelope,
    limits: Limits | None = None,
    settings: DetectConfig | None = None,
) -> Verdict:
    return inspect_document(parse_message(raw, limits), envelope, settings)
