"""Delivery status notifications (RFC 3464) for mail that could not be delivered.

A DSN tells the sender which recipients failed and why, and identifies the
message by its Message-ID, date and recipients. It carries none of the
message's own content, not even the subject: smtpguard exists because that
content may be sensitive, and a bounce must not become another copy of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from email.utils import format_datetime, formatdate, make_msgid

# Headers of the original that identify it without revealing what it says.
_IDENTIFYING_HEADERS = ("Message-ID", "Date", "From", "To", "Cc")


@dataclass(frozen=True)
class FailedRecipient:
    address: str
    status: str  # enhanced status code, e.g. "5.1.1" or "4.4.7"
    diagnostic: str  # the upstream's reply, or why smtpguard gave up
    remote_mta: str | None = None


def _status_from_reply(reply: str, fallback: str) -> str:
    parts = reply.split()
    if len(parts) > 1 and parts[1].count(".") == 2 and parts[1][0] in "245":
        return parts[1]
    return fallback


def failed_recipient(
    address: str, reply: str, remote_mta: str | None, *, expired: bool
) -> FailedRecipient:
    """Describe one recipient's failure from the last reply the upstream gave."""
    status = "4.4.7" if expired else _status_from_reply(reply, "5.0.0")
    return FailedRecipient(address, status, reply or "no reply", remote_mta)


def _identifying_headers(original: bytes) -> list[str]:
    try:
        headers = BytesHeaderParser(policy=SMTPUTF8).parsebytes(original)
        values = [(name, headers.get(name)) for name in _IDENTIFYING_HEADERS]
    except Exception:  # a broken original must not stop the bounce
        return []
    return [f"{name}: {_one_line(str(value))}" for name, value in values if value is not None]


def build_dsn(
    *,
    reporting_mta: str,
    postmaster: str,
    original_sender: str,
    queue_id: str,
    arrival: float,
    failures: Sequence[FailedRecipient],
    original: bytes,
    expired: bool = False,
) -> bytes:
    """The complete DSN message, CRLF line endings, ready to queue to `original_sender`."""
    boundary = f"=_smtpguard_{secrets.token_hex(12)}"
    arrived = format_datetime(datetime.fromtimestamp(arrival, UTC))
    explanation = [
        f"This is the mail system at {reporting_mta}.",
        "",
        "Your message could not be delivered within the time allowed and has"
        " been given up for the recipients below."
        if expired
        else "Your message could not be delivered to the recipients below.",
        "",
        f"Queue ID: {queue_id}",
        f"Received: {arrived}",
        "",
        *(f"<{f.address}>: {_one_line(f.diagnostic)}" for f in failures),
        "",
        "The message itself is not included in this notice.",
    ]
    status_fields = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Arrival-Date: {arrived}",
    ]
    for failure in failures:
        status_fields += [
            "",
            f"Final-Recipient: rfc822; {failure.address}",
            "Action: failed",
            f"Status: {failure.status}",
        ]
        if failure.remote_mta:
            status_fields.append(f"Remote-MTA: dns; {failure.remote_mta}")
        diagnostic = _one_line(failure.diagnostic)
        if diagnostic[:3].isdigit():
            status_fields.append(f"Diagnostic-Code: smtp; {diagnostic}")
    subject = "Undelivered Mail Returned to Sender" + (" (expired)" if expired else "")
    lines = [
        f"From: Mail Delivery System <{postmaster}>",
        f"To: <{original_sender}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: {make_msgid(domain=reporting_mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-formatted delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *explanation,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *status_fields,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
        *_identifying_headers(original),
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


def _one_line(text: str) -> str:
    return " ".join(text.split())
