"""One message through parse -> detect -> decide: the whole scan, no side effects."""

from __future__ import annotations

from smtpguard.decide import Verdict, decide_verdict
from smtpguard.detect import detect_findings
from smtpguard.envelope import Envelope
from smtpguard.parse import parse_message


def inspect_message(raw: bytes, envelope: Envelope) -> Verdict:
    document = parse_message(raw)
    findings = detect_findings(document)
    return decide_verdict(envelope, findings)
