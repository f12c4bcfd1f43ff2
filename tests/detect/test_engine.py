"""The detect engine: hits grouped into findings, parse flags as findings, no values leaked."""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpguard.detect import Confidence, Finding, Hit, detect_findings
from smtpguard.detect.base import keep_last
from smtpguard.parse import Document, Flag, Part


@dataclass(frozen=True)
class CaseNumbers:
    """A small detector of our own: six-digit case numbers, HIGH after "case"."""

    name: str = "case_number"

    def scan(self, text: str) -> list[Hit]:
        return [
            Hit(
                m.group(1),
                m.start(1),
                m.end(1),
                Confidence.HIGH
                if "case" in text[max(m.start() - 10, 0) : m.start()]
                else Confidence.LOW,
            )
            for m in re.finditer(r"\b(\d{6})\b", text)
        ]

    def redact(self, value: str) -> str:
        return f"case {keep_last(value, 2)}"


def _document(*parts: Part, subject: str = "") -> Document:
    return Document(subject=subject, headers=(), parts=parts)


def test_when_same_value_repeated_then_counted_once_with_highest_confidence() -> None:
    document = _document(Part("body", "text", "ref 204817, again 204817, case 204817 and 311092"))
    [finding] = detect_findings(document, [CaseNumbers()])
    assert finding == Finding("case_number", "body", Confidence.HIGH, 2, finding.excerpt)
    assert finding.count == 2


def test_findings_are_per_location_and_include_the_subject() -> None:
    document = _document(
        Part("body", "text", "case 204817"),
        Part("attachment:a.pdf", "pdf", "case 311092"),
        subject="about 275530",
    )
    locations = {f.location for f in detect_findings(document, [CaseNumbers()])}
    assert locations == {"subject", "body", "attachment:a.pdf"}


def test_excerpts_never_carry_the_value() -> None:
    document = _document(Part("body", "text", "case 204817"))
    [finding] = detect_findings(document, [CaseNumbers()])
    assert "204817" not in finding.excerpt
    assert finding.excerpt == "case ****17"


def test_parse_flags_become_findings() -> None:
    document = _document(
        Part(
            "attachment:list.xlsx", "xlsx", "x", frozenset({Flag.VERY_HIDDEN_SHEET, Flag.COMMENTS})
        ),
        Part("attachment:order.pdf", "pdf", "y", frozenset({Flag.TEXT_UNDER_REDACTION})),
        Part(
            "attachment:evidence.zip",
            "uninspectable",
            "",
            frozenset({Flag.ENCRYPTED}),
            10,
            "",
            "password-protected ZIP archive",
        ),
    )
    found = {(f.detector, f.location): f for f in detect_findings(document)}
    hidden = found[("hidden_content", "attachment:list.xlsx")]
    assert hidden.excerpt == "comments, very hidden sheet"
    assert hidden.count == 2
    assert (
        found[("redaction_failure", "attachment:order.pdf")].excerpt == "text under a redaction box"
    )
    unreadable = found[("uninspectable", "attachment:evidence.zip")]
    assert unreadable.excerpt == "password-protected ZIP archive"
    assert unreadable.confidence is Confidence.HIGH


def test_when_nothing_found_then_no_findings() -> None:
    assert detect_findings(_document(Part("body", "text", "lunch at one")), [CaseNumbers()]) == ()
