"""One message through parse -> detect -> decide: the whole scan, no side effects.

The relay runs `read_message` (parse and detect) in its worker processes and
decides in its own process; `inspect_message` does all three here, for
`smtpguard scan` and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpguard.config.model import DetectConfig
from smtpguard.decide import Verdict, decide_verdict
from smtpguard.decide.facts import Attachment
from smtpguard.detect import Detection, Finding, detect_message, detect_with
from smtpguard.envelope import Envelope
from smtpguard.parse import Document, Limits, parse_message
from smtpguard.parse.pool import unreadable_message


@dataclass(frozen=True)
class Reading:
    """What a worker hands back: what decide needs of the message, not its text.

    The extracted text stays in the worker: it can be megabytes, and the relay
    process should hold no more of a message's content than it must.
    """

    subject: str
    headers: tuple[tuple[str, str], ...]
    attachments: tuple[Attachment, ...]
    findings: tuple[Finding, ...]
    cases: tuple[str, ...] = ()


def read_message(raw: bytes, limits: Limits, settings: DetectConfig | None = None) -> Reading:
    """Parse and detect; with `settings`, the detectors that config asks for."""
    document = parse_message(raw, limits)
    return _reading(document, _detection(document, settings))


def _detection(document: Document, settings: DetectConfig | None) -> Detection:
    return detect_message(document) if settings is None else detect_with(document, settings)


def _reading(document: Document, detection: Detection) -> Reading:
    return Reading(
        document.subject,
        document.headers,
        attachments_of(document),
        detection.findings,
        detection.cases,
    )


def attachments_of(document: Document) -> tuple[Attachment, ...]:
    """Every part but the body and its alternatives, as policy sees attachments."""
    return tuple(
        Attachment(part.path, part.kind, part.size, frozenset(part.flags))
        for part in document.parts
        if part.path.startswith("attachment:") or part.kind == "uninspectable"
    )


def unreadable_reading(reason: str, size: int) -> Reading:
    """A message no worker could read: one uninspectable part, and its finding."""
    document = unreadable_message(reason, size)
    return _reading(document, detect_message(document, ()))


def _findings(document: Document, settings: DetectConfig | None) -> tuple[Finding, ...]:
    return _detection(document, settings).findings


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
