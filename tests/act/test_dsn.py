"""Delivery status notifications (RFC 3464): what they say, and what they never carry."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import default as default_policy

import pytest

from smtpguard.act.dsn import build_dsn, failed_recipient

ORIGINAL = (
    b"From: Joy Okafor <j.okafor@northshire.gov.uk>\r\n"
    b"To: Sarah Mills <s.mills@millsandco-solicitors.co.uk>\r\n"
    b"Cc: l.evans@northshire.gov.uk\r\n"
    b"Subject: Amelia Hart DOB 14/03/2015 - section 47 enquiry\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <case-note-7@northshire.gov.uk>\r\n"
    b"\r\n"
    b"NHS number 943 476 5919\r\n"
)


def _dsn(
    original: bytes = ORIGINAL, *, expired: bool = False, sender: str = "j.okafor@northshire.gov.uk"
) -> bytes:
    failures = [
        failed_recipient(
            "gone@example.org",
            "550 5.1.1 <gone@example.org> no such user",
            "mx.example.org",
            expired=expired,
        ),
        failed_recipient("late@example.net", "451 4.3.0 try later", None, expired=expired),
    ]
    return build_dsn(
        reporting_mta="relay.northshire.gov.uk",
        postmaster="postmaster@northshire.gov.uk",
        original_sender=sender,
        queue_id="6614A4057B250D8C8227C",
        arrival=1_795_000_000.0,
        failures=failures,
        original=original,
        expired=expired,
    )


def test_dsn_is_a_delivery_status_report_to_the_sender_from_the_null_path_postmaster() -> None:
    report = BytesParser(policy=default_policy).parsebytes(_dsn())
    assert report["To"] == "j.okafor@northshire.gov.uk"
    assert "postmaster@northshire.gov.uk" in report["From"]
    assert report["Auto-Submitted"] == "auto-replied"
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_dsn_gives_each_recipient_its_status_and_the_upstream_diagnostic() -> None:
    text = _dsn().decode()
    assert "Reporting-MTA: dns; relay.northshire.gov.uk" in text
    assert "Final-Recipient: rfc822; gone@example.org\r\nAction: failed\r\nStatus: 5.1.1" in text
    assert "Remote-MTA: dns; mx.example.org" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.org> no such user" in text
    assert "Final-Recipient: rfc822; late@example.net\r\nAction: failed\r\nStatus: 4.3.0" in text


def test_when_given_up_then_status_4_4_7_and_subject_says_expired() -> None:
    text = _dsn(expired=True).decode()
    assert "Subject: Undelivered Mail Returned to Sender (expired)" in text
    assert text.count("Status: 4.4.7") == 2


def test_dsn_identifies_the_message_but_never_carries_its_subject_or_body() -> None:
    dsn = _dsn()
    assert b"Message-ID: <case-note-7@northshire.gov.uk>" in dsn
    assert b"Date: Fri, 27 Nov 2026 10:00:00 +0000" in dsn
    for secret in (b"Amelia", b"14/03/2015", b"section 47", b"943 476 5919"):
        assert secret not in dsn


def test_dsn_lines_all_end_in_crlf() -> None:
    dsn = _dsn()
    assert b"\n" not in dsn.replace(b"\r\n", b"")
    assert max(len(line) for line in dsn.split(b"\r\n")) <= 998


@pytest.mark.parametrize(
    "original",
    [
        b"",
        b"not a message at all",
        b"\xff\xfe\x00garbage\r\n\r\n",
        b"Subject: =?bogus?Q?x?=\r\n\r\n",
    ],
    ids=["empty", "no-headers", "binary", "bad-encoded-word"],
)
def test_when_original_is_broken_then_dsn_still_built(original: bytes) -> None:
    report = BytesParser(policy=default_policy).parsebytes(_dsn(original))
    assert report.get_content_type() == "multipart/report"


def test_when_sender_has_non_ascii_address_then_dsn_is_utf8() -> None:
    dsn = _dsn(sender="zoë@northshire.gov.uk")
    assert "To: <zoë@northshire.gov.uk>".encode() in dsn
