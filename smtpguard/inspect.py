"""One message through parse -> detect -> decide: the whole scan, no side effects."""

from __future__ import annotations

from smtpguard.decide import Verdict, decide_verdict
from smtpguard.detect import detect_findings
from smtpguard.envelope import Envelope
from smtpguard.parse import Document, Limits, parse_message


def inspect_document(document: Document, envelope: Envelope) -> Verdict:
    """Detect and decide on a message already parsed (by the worker pool, in the relay)."""
    return decide_verdict(envelope, detect_findings(document))


def inspect_message(raw: bytes, envelope: Envelope, limits: Limits | None = None) -> Verdict:
    """Parse in this process too: for `smtpguard scan` and tests."""
    return inspect_document(parse_message(raw, limits), envelope)
