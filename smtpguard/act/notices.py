"""Notices about held mail: to the sender at once, and to the reviewers.

A sender who is not told sees the message in Sent and believes it went; a
reviewer who is not told finds the hold when it has nearly expired. Neither
notice carries anything of the message beyond its ids: not the subject, not
a line of the body, not a matched value. The reason is the policy's own
plain words (rule descriptions), which name kinds of data, never data.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid


@dataclass(frozen=True)
class HeldCopy:
    address: str
    action: str  # "quarantine" or "delay"
    reason: str  # the policy's words
    approvals: int = 0
    release_at: float | None = None  # for a delay: when it goes


def _header_value(text: str) -> str:
    """One line, no control characters: a reason is config text, but a header must stay one."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def _message(
    *,
    sender: str,
    recipient: str,
    subject: str,
    reporting_mta: str,
    body: list[str],
    refers_to: str | None,
) -> bytes:
    headers = [
        f"From: smtpguard <{sender}>",
        f"To: <{recipient}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(datetime.now(UTC))}",
        f"Message-ID: {make_msgid(idstring=secrets.token_hex(4), domain=reporting_mta)}",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    if refers_to:
        headers += [f"In-Reply-To: {refers_to}", f"References: {refers_to}"]
    text = "\r\n".join(headers) + "\r\n\r\n" + "\r\n".join(body) + "\r\n"
    return text.encode("utf-8")


def _what_happens(copy: HeldCopy) -> str:
    if copy.action == "delay":
        when = time.strftime("%H:%M on %d %b %Y", time.localtime(copy.release_at or time.time()))
        return f"it will be delivered at {when} unless it is recalled first"
    reviewers = "two different reviewers" if copy.approvals >= 2 else "a reviewer"
    return f"{reviewers} must release it before it is delivered; otherwise it is refused"


def build_sender_notice(
    *,
    reporting_mta: str,
    postmaster: str,
    original_sender: str,
    queue_id: str,
    message_id: str | None,
    held: Sequence[HeldCopy],
    reviewers: str | None = None,
) -> bytes:
    """The notice to the sender that some copies of their message were held or delayed."""
    delayed_only = all(copy.action == "delay" for copy in held)
    subject = "Your message is delayed" if delayed_only else "Your message is held for review"
    body = [
        f"This is smtpguard at {reporting_mta}, which checks the council's outgoing mail.",
        "",
        "Your message was NOT delivered yet to the recipients below.",
        f"Queue ID: {queue_id}",
        *([f"Message-ID: {message_id}"] if message_id else []),
        "",
    ]
    for copy in held:
        body += [
            f"<{copy.address}>: {'delayed' if copy.action == 'delay' else 'held for review'}",
            f"  Why: {_header_value(copy.reason) or 'the council policy'}",
            f"  Next: {_what_happens(copy)}.",
            "",
        ]
    if reviewers and any(copy.action != "delay" for copy in held):
        body += [f"Reviewed by: the council's information governance reviewers <{reviewers}>", ""]
    body += [
        "Any other recipients have been sent the message as usual.",
        "You will be told again when a held message is released or refused.",
        "If the message should not go at all, ask the reviewers to refuse it, quoting the "
        "Queue ID.",
        "",
        "This notice does not include your message.",
    ]
    return _message(
        sender=postmaster,
        recipient=original_sender,
        subject=subject,
        reporting_mta=reporting_mta,
        body=body,
        refers_to=message_id,
    )


def build_reviewer_notice(
    *,
    reporting_mta: str,
    postmaster: str,
    reviewers: str,
    queue_id: str,
    original_sender: str,
    held: Sequence[HeldCopy],
    rules: Sequence[str],
) -> bytes:
    """The notice to the reviewers' address: a hold is waiting for them."""
    body = [
        f"A message is waiting for review on {reporting_mta}.",
        "",
        f"Queue ID: {queue_id}",
        f"Sender: {original_sender or '<>'}",
        f"Rules: {', '.join(rules) or '-'}",
        "",
        *(
            f"<{copy.address}>: {copy.action}, {copy.approvals or 1} approval(s) needed"
            for copy in held
        ),
        "",
        f"Review it on the relay server: smtpguard quarantine show {queue_id}",
        "",
        "This notice does not include the message.",
    ]
    return _message(
        sender=postmaster,
        recipient=reviewers,
        subject=f"Held for review: {queue_id}",
        reporting_mta=reporting_mta,
        body=body,
        refers_to=None,
    )


# What the sender is told when a review ends: (subject, first line, what it means).
_OUTCOMES = {
    "released": (
        "Your held message was released",
        "was released by the reviewers and has gone on to delivery to",
        "You do not need to do anything.",
    ),
    "rejected": (
        "Your held message was refused",
        "was refused by the reviewers and will NOT be delivered to",
        "If it still needs to go, send it again to the right recipients, or ask the "
        "reviewers, quoting the Queue ID.",
    ),
    "recalled": (
        "Your delayed message was recalled",
        "was recalled before its delivery time and will NOT be delivered to",
        "If it still needs to go, send it again to the right recipients.",
    ),
    "expired": (
        "Your held message expired unreviewed",
        "was not reviewed in time and will NOT be delivered to",
        "If it still needs to go, send it again, or ask the reviewers first, quoting the Queue ID.",
    ),
}


def build_outcome_notice(
    *,
    reporting_mta: str,
    postmaster: str,
    original_sender: str,
    queue_id: str,
    message_id: str | None,
    outcome: str,
    recipients: Sequence[str],
    reason: str = "",
) -> bytes:
    """The notice to the sender that a review ended: released, rejected, recalled or expired."""
    subject, happened, next_step = _OUTCOMES[outcome]
    body = [
        f"This is smtpguard at {reporting_mta}, which checks the council's outgoing mail.",
        "",
        f"Your message {happened}:",
        *(f"  <{address}>" for address in recipients),
        "",
        f"Queue ID: {queue_id}",
        *([f"Message-ID: {message_id}"] if message_id else []),
        *([f"Reviewer's note: {_header_value(reason)}"] if reason else []),
        "",
        next_step,
        "",
        "This notice does not include your message.",
    ]
    return _message(
        sender=postmaster,
        recipient=original_sender,
        subject=subject,
        reporting_mta=reporting_mta,
        body=body,
        refers_to=message_id,
    )


@dataclass(frozen=True)
class WaitingHold:
    """One hold in a reviewers' digest or reminder."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    rules: tuple[str, ...]
    review_until: float | None


def build_reviewer_digest(
    *,
    reporting_mta: str,
    postmaster: str,
    reviewers: str,
    holds: Sequence[WaitingHold],
    reminder: bool,
) -> bytes:
    """Several holds in one notice: a digest of new holds, or a reminder of expiring ones."""
    if reminder:
        subject = f"Reminder: {len(holds)} held message(s) expire soon"
        opening = "These held messages expire soon; unreviewed, they are refused:"
    else:
        subject = f"Held for review: {len(holds)} new message(s)"
        opening = "These messages were held for review since the last digest:"
    body = [f"{opening}", ""]
    for hold in holds:
        until = (
            time.strftime("%H:%M on %d %b %Y", time.localtime(hold.review_until))
            if hold.review_until
            else "-"
        )
        body += [
            f"Queue ID: {hold.queue_id}",
            f"  Sender: {hold.sender or '<>'}",
            f"  Held copies: {', '.join(hold.recipients)}",
            f"  Rules: {', '.join(hold.rules) or '-'}",
            f"  Expires: {until}",
            "",
        ]
    body += [
        f"Review them on {reporting_mta}: smtpguard quarantine list",
        "",
        "This notice does not include the messages.",
    ]
    return _message(
        sender=postmaster,
        recipient=reviewers,
        subject=subject,
        reporting_mta=reporting_mta,
        body=body,
        refers_to=None,
    )
