"""Identifiers found in a message never reach a log, the console or a finding's excerpt.

Two paths, each with structlog's events, stdlib log records at DEBUG and
the process's output all captured:

(a) `inspect_message` in this process: parse, detect and decide, the code the
    relay's workers run (`read_message` is parse + detect);
(b) a real relay on loopback, fed with smtplib, delivering to a capture sink.

Every identifier is searched for as written in the message, normalised, and
as bare digits (with digit boundaries, so a timestamp cannot match by
chance). The relay's own lines for each message must be there, or the test
would pass by capturing nothing. The parse workers of (b) are separate
processes and log nothing of their own; what they run is covered by (a).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import smtplib
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import docx
import pytest
import structlog
from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped,unused-ignore]
from reportlab.pdfgen.canvas import Canvas  # type: ignore[import-untyped,unused-ignore]

from smtpguard.detect import Finding
from smtpguard.detect.registry import default_detectors
from smtpguard.envelope import Envelope
from smtpguard.inspect import inspect_message
from tests.conftest import RelayRunner
from tests.sink import CaptureSink

SENDER = "j.okafor@northshire.gov.uk"
RECIPIENT = "l.evans@northshire.gov.uk"

# Normalised value per detector -> the forms it must never appear in.
# Fictional Northshire data: test-range NHS numbers, issuers' test cards.
IDENTIFIERS: dict[str, dict[str, tuple[str, ...]]] = {
    "nhs_number": {
        "9997877896": ("999 787 7896", "999-787-7896"),
        "9991742182": ("999 174 2182",),
        "9999081002": ("999 908 1002",),
        "9993390755": ("999 339 0755",),
    },
    "ni_number": {"JT482917B": ("JT 48 29 17 B", "482917")},
    "payment_card": {"4242424242424242": ("4242 4242 4242 4242",)},
    "bank_account": {"204577:41882109": ("20-45-77", "204577", "41882109")},
    "date_of_birth": {
        "2015-03-14": ("14/03/2015", "14032015"),
        "2012-07-21": ("21/07/2012", "21072012"),
    },
    "case_reference": {"CS-204817": ("CS-204817", "204817"), "CS-311092": ("311092",)},
    "email_addresses": {
        "karen.hart84@hotmail.co.uk": ("karen.hart84",),
        "dan.hart77@gmail.com": ("dan.hart77",),
        "p.ash@brightwaterlaw.co.uk": ("p.ash@",),
    },
    "postcode": {"NS4 7QJ": ("NS47QJ",), "NS12 8TD": ("NS128TD",)},
}


def _forms() -> list[re.Pattern[str]]:
    """Every form of every identifier; digit runs only as whole numbers."""
    patterns = []
    for values in IDENTIFIERS.values():
        for value, written in values.items():
            for form in {value, *written, *value.split(":")}:
                escaped = re.escape(form)
                if form[0].isdigit():
                    escaped = r"(?<!\d)" + escaped
                if form[-1].isdigit():
                    escaped += r"(?!\d)"
                patterns.append(re.compile(escaped, re.IGNORECASE))
    return patterns


FORMS = _forms()


def _leaks(text: str) -> list[str]:
    return [pattern.pattern for pattern in FORMS if pattern.search(text)]


def _docx(lines: Iterable[str]) -> bytes:
    document = docx.Document()
    for line in lines:
        document.add_paragraph(line)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _pdf(lines: Iterable[str]) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4)
    y = 800.0
    for line in lines:
        canvas.drawString(50, y, line)
        y -= 16
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def _zip(members: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _message(subject: str, body: str, *attachments: tuple[str, bytes, str]) -> bytes:
    message = EmailMessage()
    message["From"] = f"Joy Okafor <{SENDER}>"
    message["To"] = f"Lowri Evans <{RECIPIENT}>"
    message["Subject"] = subject
    message.set_content(body)
    for filename, data, content_type in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes(policy=SMTP)


# name -> (raw message, the (detector, location) findings it must produce)
MESSAGES: dict[str, tuple[bytes, set[tuple[str, str]]]] = {
    "body": (
        _message(
            "Notes from today",
            "Amelia Hart, NHS number 999 787 7896, DOB 14/03/2015, lives at NS4 7QJ.\n"
            "Karen's NI number JT 48 29 17 B. Case CS-204817.\n"
            "Refund to card 4242 4242 4242 4242; sort code 20-45-77 account 41882109.\n"
            "Copy to karen.hart84@hotmail.co.uk, dan.hart77@gmail.com,\n"
            "p.ash@brightwaterlaw.co.uk\n",
        ),
        {
            ("nhs_number", "body"),
            ("date_of_birth", "body"),
            ("postcode", "body"),
            ("ni_number", "body"),
            ("case_reference", "body"),
            ("payment_card", "body"),
            ("bank_account", "body"),
            ("email_addresses", "body"),
        },
    ),
    "subject": (
        _message("Noah Hart CS-204817 NHS 999 174 2182", "See subject."),
        {("case_reference", "subject"), ("nhs_number", "subject")},
    ),
    "docx": (
        _message(
            "Assessment",
            "Attached.",
            (
                "assessment.docx",
                _docx(["Leo Brennan, born 21/07/2012", "NHS number 999 908 1002", "CS-311092"]),
                DOCX,
            ),
        ),
        {
            ("date_of_birth", "attachment:assessment.docx"),
            ("nhs_number", "attachment:assessment.docx"),
            ("case_reference", "attachment:assessment.docx"),
        },
    ),
    "pdf": (
        _message(
            "Payment details",
            "Attached.",
            (
                "payment.pdf",
                _pdf(["Debit card 4242 4242 4242 4242", "Sort code 20-45-77 account 41882109"]),
                "application/pdf",
            ),
        ),
        {("payment_card", "attachment:payment.pdf"), ("bank_account", "attachment:payment.pdf")},
    ),
    "zip": (
        _message(
            "Bundle",
            "Attached.",
            (
                "bundle.zip",
                _zip({"annex.docx": _docx(["Mr Pike, NHS 999 339 0755", "Mill Row NS12 8TD"])}),
                "application/zip",
            ),
        ),
        {
            ("nhs_number", "attachment:bundle.zip/annex.docx"),
            ("postcode", "attachment:bundle.zip/annex.docx"),
        },
    ),
}


def _envelope() -> Envelope:
    return Envelope(SENDER, (RECIPIENT,), "127.0.0.1", "client.test", time.time())


def _record_texts(records: Iterable[logging.LogRecord]) -> list[str]:
    return [f"{r.getMessage()} {r.__dict__!r}" for r in records]


def _assert_excerpts_redacted(findings: tuple[Finding, ...]) -> None:
    """Each identifier finding's excerpt is its detector's redaction of one of our values."""
    detectors = {d.name: d for d in default_detectors()}
    for finding in findings:
        leaked = _leaks(repr(finding)) + _leaks(str(finding.excerpt))
        assert not leaked, f"{finding.detector} at {finding.location}: {leaked}"
        values = IDENTIFIERS.get(finding.detector)
        if values is not None:
            redactions = {detectors[finding.detector].redact(v) for v in values}
            assert finding.excerpt in redactions, finding


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_inspect_message_findings_and_output_carry_no_identifier(
    name: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, expected = MESSAGES[name]
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as events:
        verdict = inspect_message(raw, _envelope())

    found = {(f.detector, f.location) for f in verdict.findings}
    assert expected <= found, f"the message must be found sensitive: {expected - found}"
    _assert_excerpts_redacted(verdict.findings)
    output = capsys.readouterr()
    for text in (
        [repr(e) for e in events] + _record_texts(caplog.records) + [output.out, output.err]
    ):
        assert not _leaks(text), text


def _send(port: int, raw: bytes) -> str:
    """One message over smtplib; the relay's queue id from the DATA reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        code, _ = client.mail(SENDER)
        assert code == 250
        code, _ = client.rcpt(RECIPIENT)
        assert code == 250
        code, reply = client.data(raw)
        assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def _events_for(events: list[dict[str, Any]], event: str) -> set[str]:
    return {str(e.get("id")) for e in events if e.get("event") == event}


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    """The relay points structlog at this test's captured output, closed after it: undo that."""
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])
    yield
    structlog.configure(**saved)


async def test_relay_round_trip_logs_carry_no_identifier(
    structlog_restored: None,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    relays: RelayRunner,
    sink: CaptureSink,
) -> None:
    """capfd rather than capsys: it also sees what is written to the file descriptors."""
    service = await relays.start({"logging": {"level": "debug", "format": "json"}})
    assert service.address is not None
    port = service.address[1]
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as events:
        ids = [await asyncio.to_thread(_send, port, raw) for raw, _ in MESSAGES.values()]
        delivered = await sink.handler.wait_for(len(ids))
        async with asyncio.timeout(15):
            while not set(ids) <= _events_for(events, "message.delivered"):
                await asyncio.sleep(0.05)
        # Stopped here, while the output is still captured: its last lines are checked too.
        await relays.stop_all()
        captured = list(events)

    assert len(delivered) == len(ids)
    # Not vacuous: the relay logged each message's arrival and delivery.
    assert set(ids) <= _events_for(captured, "message.received")
    assert set(ids) <= _events_for(captured, "message.delivered")
    output = capfd.readouterr()
    texts = [repr(e) for e in captured] + _record_texts(caplog.records)
    for text in [*texts, output.out, output.err]:
        assert not _leaks(text), text
    # The identifiers did pass through: the sink has them, so the search can find them.
    assert _leaks(b"".join(m.content for m in delivered).decode("utf-8", "replace"))
