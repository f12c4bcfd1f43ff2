"""Notices about held mail say what happened and what comes next, and nothing of the message."""

from __future__ import annotations

from smtpguard.act.notices import HeldCopy, build_reviewer_notice, build_sender_notice


def test_a_delay_notice_says_when_the_copy_goes() -> None:
    notice = build_sender_notice(
        reporting_mta="smtpguard.northshire.gov.uk",
        postmaster="postmaster@northshire.gov.uk",
        original_sender="j.okafor@northshire.gov.uk",
        queue_id="ABC123",
        message_id=None,
        held=[HeldCopy("a@example.org", "delay", "first mail to this address", 0, 1e9)],
    ).decode()
    assert "Subject: Your message is delayed\r\n" in notice
    assert "<a@example.org>: delayed" in notice
    assert "it will be delivered at" in notice and "unless it is recalled" in notice
    assert "In-Reply-To" not in notice
    assert "Auto-Submitted: auto-generated\r\n" in notice


def test_a_reason_cannot_break_out_of_its_line() -> None:
    notice = build_sender_notice(
        reporting_mta="relay",
        postmaster="postmaster@x.example",
        original_sender="s@x.example",
        queue_id="Q",
        message_id="<m@x>",
        held=[HeldCopy("a@b.example", "quarantine", "bad\r\nBcc: evil@x.example", 1)],
    ).decode()
    assert "Why: bad Bcc: evil@x.example" in notice
    assert "\r\nBcc:" not in notice
    assert "a reviewer must release it" in notice


def test_a_reviewer_notice_names_rules_and_approvals() -> None:
    notice = build_reviewer_notice(
        reporting_mta="relay",
        postmaster="postmaster@x.example",
        reviewers="ig@x.example",
        queue_id="Q1",
        original_sender="",
        held=[HeldCopy("a@b.example", "quarantine", "r", 2)],
        rules=["case-material-to-restricted-party"],
    ).decode()
    assert "Subject: Held for review: Q1\r\n" in notice
    assert "Sender: <>" in notice
    assert "<a@b.example>: quarantine, 2 approval(s) needed" in notice
    assert "Rules: case-material-to-restricted-party" in notice
