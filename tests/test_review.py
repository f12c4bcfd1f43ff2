"""The review loop over real SMTP: send → held → reviewed → delivered or refused.

The relay runs in-process with the example council's policy and registers; the
reviewers run `smtpguard quarantine ...` as separate processes against the same
store while it runs, as real operating-system users: the tests create them
(root can `useradd`) and pass them the way sudo does (SUDO_USER and SUDO_UID).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from smtpguard.config.staff import load_staff
from smtpguard.relay import RelayService
from smtpguard.review.reviewers import ReviewRefused, invoking_login, reviewer_for
from smtpguard.spool import MessageState, RecipientState
from tests.conftest import RelayRunner
from tests.scenarios.builders import message
from tests.sink import CaptureHandler, CaptureSink

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example"

SENDER = "m.patel@northshire.gov.uk"
FATHER = "dan.hart77@gmail.com"  # restricted party of CS-204817
MOTHERS_PARTNER = "shane.doyle@yahoo.co.uk"  # restricted party of CS-204817 too
MOTHER = "karen.hart84@hotmail.co.uk"  # allowed, on webmail: delayed the first time
REVIEWERS = "ig-reviewers@northshire.gov.uk"

# Test logins (created as real users), and who they are in the staff register.
APPROVER = "sgt-approver"
REVIEWER = "sgt-reviewer"
REVIEWER_2 = "sgt-reviewer2"
SENDING_REVIEWER = "sgt-sender"  # the sender, who also has a review role
STRANGER = "sgt-stranger"  # a user of the server, not in the staff register
LOGINS = (APPROVER, REVIEWER, REVIEWER_2, SENDING_REVIEWER, STRANGER)

STAFF_ROWS = [
    (SENDER, "Meera Patel", "children", "reviewer", SENDING_REVIEWER),
    ("r.hughes@northshire.gov.uk", "Rachel Hughes", "information-governance", "approver", APPROVER),
    ("d.clarke@northshire.gov.uk", "David Clarke", "children", "reviewer", REVIEWER),
    ("s.begum@northshire.gov.uk", "Sadia Begum", "adults", "reviewer", REVIEWER_2),
]


@pytest.fixture(scope="module")
def os_users() -> dict[str, int]:
    """The reviewers as real users of this machine: login -> uid."""
    as_root: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None or subprocess.run([sudo, "-n", "true"], check=False).returncode:
            pytest.skip("creating the reviewers' OS users needs root (or sudo without a password)")
        as_root = [sudo, "-n"]
    uids = {}
    for login in LOGINS:
        try:
            uids[login] = pwd.getpwnam(login).pw_uid
        except KeyError:
            subprocess.run(
                [*as_root, "useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", login],
                check=True,
            )
            uids[login] = pwd.getpwnam(login).pw_uid
    return uids


@dataclass
class Desk:
    """The relay with the example council, its sink, and reviewers at the command line."""

    service: RelayService
    sink: CaptureSink
    config: Path
    uids: dict[str, int]

    @property
    def port(self) -> int:
        assert self.service.address is not None
        return self.service.address[1]

    async def send(self, raw: bytes, recipients: Sequence[str], sender: str = SENDER) -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=10)
        await client.connect()
        try:
            errors, reply = await client.sendmail(sender, list(recipients), raw)
        finally:
            await client.quit()
        assert not errors, errors
        return reply.rsplit(" ", 1)[1]

    async def states(self, message_id: str) -> dict[str, RecipientState]:
        record = await self.service.store.load(message_id)
        assert record is not None
        return {r.address: r.state for r in record.recipients}

    async def settle(self, message_id: str, timeout: float = 20.0) -> dict[str, RecipientState]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = await self.service.store.load(message_id)
            if record is not None and record.state not in (
                MessageState.RECEIVED,
                MessageState.QUEUED,
                MessageState.DELIVERING,
                MessageState.RELEASED,
            ):
                return {r.address: r.state for r in record.recipients}
            await asyncio.sleep(0.05)
        raise AssertionError(f"{message_id} did not settle")

    async def run(self, login: str, *args: str) -> tuple[int, str, str]:
        """`smtpguard ARGS` as this reviewer would run it through sudo."""
        env = {
            **os.environ,
            "SUDO_USER": login,
            "SUDO_UID": str(self.uids[login]),
            "SUDO_GID": str(self.uids[login]),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "smtpguard.cli",
            *args,
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    def delivered_to(self, address: str) -> list[bytes]:
        return [
            c.content
            for c in self.sink.handler.messages
            if address in c.recipients and c.sender not in ("", "<>")
        ]

    async def notices_to(self, address: str, subject: str, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in self.sink.handler.messages:
                notice = c.sender in ("", "<>") and address in c.recipients
                if notice and f"Subject: {subject}".encode() in c.content:
                    return c.content
            await asyncio.sleep(0.05)
        raise AssertionError(f"no notice {subject!r} to {address}")


def council_changes(
    tmp_path: Path, hop_port: int, review: dict[str, Any] | None = None
) -> dict[str, Any]:
    staff = tmp_path / "staff.csv"
    with staff.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "team", "review_role", "login"])
        writer.writerows(STAFF_ROWS)
    hop = {"host": "127.0.0.1", "port": hop_port, "secure": True}
    exports = {
        kind: str(EXAMPLE / f"{kind}.csv")
        for kind in ("cases", "case_parties", "protected_addresses")
    }
    return {
        "detect": {"edm": {"exports": exports}},
        "council": {"domains": str(EXAMPLE / "domains.csv"), "staff": str(staff)},
        "policy": {
            "file": str(ROOT / "config" / "policy.yaml"),
            "reviewers": REVIEWERS,
            # The example's secure routes, both to the capture sink here.
            "routes": {name: hop for name in ("secure-gateway", "verified-tls")},
            "tls_route": "verified-tls",
        },
        "review": {"release_wait": "15s", "check_interval": "200ms", **(review or {})},
    }


async def open_desk(
    tmp_path: Path, uids: dict[str, int], sink: CaptureSink, review: dict[str, Any] | None = None
) -> tuple[RelayRunner, Desk]:
    runner = RelayRunner(tmp_path, sink)
    service = await runner.start(council_changes(tmp_path, sink.port, review))
    return runner, Desk(service, sink, tmp_path / "smtpguard.yaml", uids)


@pytest.fixture
async def desk(tmp_path: Path, os_users: dict[str, int]) -> AsyncIterator[Desk]:
    sink = CaptureSink()
    await sink.start()
    runner, opened = await open_desk(tmp_path, os_users, sink)
    try:
        yield opened
    finally:
        await runner.stop_all()
        await sink.stop()


def restricted_party_message(*to: str) -> bytes:
    return message(
        SENDER,
        "CS-204817 child protection conference",
        "The child protection conference for CS-204817 is on Monday at 10am.\n",
        to=list(to),
    )


# ---- the whole loop --------------------------------------------------------------


async def test_b3_held_then_approver_then_sender_refused_then_reviewer_delivers(
    desk: Desk,
) -> None:
    message_id = await desk.send(restricted_party_message(FATHER), [FATHER])
    assert await desk.settle(message_id) == {FATHER: RecipientState.HELD}
    notice = await desk.notices_to(SENDER, "Your message is held for review")
    assert message_id.encode() in notice and REVIEWERS.encode() in notice

    code, out, err = await desk.run(REVIEWER, "quarantine", "list", "--json")
    assert code == 0, err
    [listed] = [m for m in json.loads(out) if m["id"] == message_id]
    [copy] = listed["recipients"]
    assert (copy["state"], copy["approvals_needed"], copy["approver_needed"]) == (
        "held",
        2,
        True,
    )
    assert "case-material-to-restricted-party" in listed["rules"]

    code, out, err = await desk.run(
        APPROVER, "quarantine", "release", message_id, "--reason", "agreed with the team manager"
    )
    assert code == 0, err
    assert "still held: needs 1 more approval" in out
    assert await desk.states(message_id) == {FATHER: RecipientState.HELD}

    # The sender has a review role, and still cannot approve their own message.
    code, out, err = await desk.run(
        SENDING_REVIEWER, "quarantine", "release", message_id, "--reason", "it is fine"
    )
    assert code == 1
    assert f"{SENDING_REVIEWER} sent this message and cannot approve it" in err
    # Nor can the same reviewer approve twice.
    code, _, err = await desk.run(APPROVER, "quarantine", "release", message_id, "--reason", "x")
    assert code == 1 and "has already approved" in err
    assert await desk.states(message_id) == {FATHER: RecipientState.HELD}
    assert desk.delivered_to(FATHER) == []

    code, out, err = await desk.run(
        REVIEWER,
        "quarantine",
        "release",
        message_id,
        "--reason",
        "checked: the father's solicitor asked",
    )
    assert code == 0, err
    assert f"released: {FATHER}: delivered (250 2.0.0 captured)" in out
    assert len(desk.delivered_to(FATHER)) == 1
    released = await desk.notices_to(SENDER, "Your held message was released")
    assert message_id.encode() in released and b"conference" not in released

    code, out, err = await desk.run(APPROVER, "quarantine", "show", message_id, "--json")
    assert code == 0, err
    shown = json.loads(out)
    actions = [(e["actor"], e["action"]) for e in shown["history"]]
    assert actions == [
        ("smtpguard", "verdict"),
        (APPROVER, "approve"),
        (REVIEWER, "approve"),
    ]
    assert shown["recipients"][0]["state"] == "delivered"
    code, out, _ = await desk.run(APPROVER, "audit", "verify")
    assert code == 0 and "audit log intact" in out


async def test_two_plain_reviewers_are_not_enough_where_the_rule_wants_an_approver(
    desk: Desk,
) -> None:
    message_id = await desk.send(restricted_party_message(FATHER), [FATHER])
    await desk.settle(message_id)
    code, out, err = await desk.run(REVIEWER, "quarantine", "release", message_id, "--reason", "ok")
    assert code == 0, err
    assert "still held: needs 1 more approval and an approver" in out
    code, _, err = await desk.run(REVIEWER_2, "quarantine", "release", message_id, "--reason", "ok")
    assert code == 1 and "needs an approver" in err
    assert await desk.states(message_id) == {FATHER: RecipientState.HELD}
    code, out, err = await desk.run(APPROVER, "quarantine", "release", message_id, "--reason", "ok")
    assert code == 0 and "released:" in out, err


async def test_a_held_message_is_encrypted_at_rest_and_still_reviewable(
    tmp_path: Path, os_users: dict[str, int]
) -> None:
    key = tmp_path / "spool.key"
    assert (
        subprocess.run(
            [sys.executable, "-m", "smtpguard.cli", "spool", "keygen", str(key)], check=False
        ).returncode
        == 0
    )
    sink = CaptureSink()
    await sink.start()
    runner = RelayRunner(tmp_path, sink)
    changes = council_changes(tmp_path, sink.port)
    changes["store"] = {
        "data_dir": "data",
        "min_free_disk": "1MB",
        "encryption": {"key_file": str(key)},
    }
    service = await runner.start(changes)
    desk = Desk(service, sink, tmp_path / "smtpguard.yaml", os_users)
    try:
        message_id = await desk.send(restricted_party_message(FATHER), [FATHER])
        assert await desk.settle(message_id) == {FATHER: RecipientState.HELD}
        held_file = service.config.store.data_dir / "spool" / f"{message_id}.eml"
        on_disk = held_file.read_bytes()
        for clear in (
            b"child protection conference",
            b"CS-204817",
            FATHER.encode(),
            SENDER.encode(),
        ):
            assert clear not in on_disk
        code, out, _ = await desk.run(REVIEWER, "quarantine", "export", message_id)
        assert code == 0 and "child protection conference" in out
        for login in (APPROVER, REVIEWER):
            code, out, err = await desk.run(
                login, "quarantine", "release", message_id, "--reason", "ok"
            )
            assert code == 0, err
        assert f"released: {FATHER}: delivered" in out
        assert b"child protection conference" in desk.delivered_to(FATHER)[0]
    finally:
        await runner.stop_all()
        await sink.stop()


async def test_release_of_one_recipient_leaves_the_other_held(desk: Desk) -> None:
    message_id = await desk.send(
        restricted_party_message(FATHER, MOTHERS_PARTNER), [FATHER, MOTHERS_PARTNER]
    )
    assert set((await desk.settle(message_id)).values()) == {RecipientState.HELD}
    for login in (REVIEWER, APPROVER):
        code, _, err = await desk.run(
            login, "quarantine", "release", message_id, "--recipient", FATHER, "--reason", "ok"
        )
        assert code == 0, err
    assert await desk.states(message_id) == {
        FATHER: RecipientState.DELIVERED,
        MOTHERS_PARTNER: RecipientState.HELD,
    }
    assert len(desk.delivered_to(FATHER)) == 1 and desk.delivered_to(MOTHERS_PARTNER) == []

    code, _, err = await desk.run(
        REVIEWER_2, "quarantine", "reject", message_id, "--reason", "wrong recipient"
    )
    assert code == 0, err
    assert await desk.states(message_id) == {
        FATHER: RecipientState.DELIVERED,
        MOTHERS_PARTNER: RecipientState.REJECTED,
    }
    refused = await desk.notices_to(SENDER, "Your held message was refused")
    assert MOTHERS_PARTNER.encode() in refused and b"wrong recipient" in refused
    record = await desk.service.store.load(message_id)
    assert record is not None and record.state.finished


async def test_a_delayed_message_can_be_recalled_before_its_time(desk: Desk) -> None:
    raw = message(
        SENDER,
        "CS-204817 contact",
        "Contact for CS-204817 is confirmed for Saturday.\n",
        to=[MOTHER],
    )
    message_id = await desk.send(raw, [MOTHER])
    assert await desk.settle(message_id) == {MOTHER: RecipientState.DELAYED}
    code, out, err = await desk.run(REVIEWER, "quarantine", "list", "--state", "delayed", "--json")
    assert code == 0, err
    assert [m["id"] for m in json.loads(out)] == [message_id]

    code, out, err = await desk.run(
        SENDING_REVIEWER, "quarantine", "recall", message_id, "--reason", "sent too early"
    )
    assert code == 0, err
    assert await desk.states(message_id) == {MOTHER: RecipientState.REJECTED}
    notice = await desk.notices_to(SENDER, "Your delayed message was recalled")
    assert b"sent too early" in notice
    assert desk.delivered_to(MOTHER) == []


async def test_a_release_the_upstream_refuses_shows_as_failed(
    tmp_path: Path, os_users: dict[str, int]
) -> None:
    refusing = CaptureHandler(
        rcpt_reply=lambda address: "550 5.1.1 no such user" if address == FATHER else None
    )
    sink = CaptureSink(refusing)
    await sink.start()
    runner, desk = await open_desk(tmp_path, os_users, sink)
    try:
        message_id = await desk.send(restricted_party_message(FATHER), [FATHER])
        assert await desk.settle(message_id) == {FATHER: RecipientState.HELD}
        await desk.run(REVIEWER, "quarantine", "release", message_id, "--reason", "ok")
        code, out, _ = await desk.run(
            APPROVER, "quarantine", "release", message_id, "--reason", "ok"
        )
        assert code == 1
        assert f"failed: {FATHER}: not delivered: 550 5.1.1 no such user" in out
        assert "released:" not in out
        assert await desk.states(message_id) == {FATHER: RecipientState.BOUNCED}
        # Never shown as done: list and show say the release failed, and why.
        code, out, _ = await desk.run(APPROVER, "quarantine", "list", "--state", "failed", "--json")
        [listed] = json.loads(out)
        assert listed["id"] == message_id
        assert listed["recipients"][0]["state"] == "release failed"
        assert "550 5.1.1" in listed["recipients"][0]["last_reply"]
        code, out, _ = await desk.run(APPROVER, "quarantine", "show", message_id)
        assert code == 0 and f"{FATHER}: release failed" in out
    finally:
        await runner.stop_all()
        await sink.stop()


async def test_an_unreviewed_hold_expires_into_rejected_and_the_sender_is_told(
    tmp_path: Path, os_users: dict[str, int]
) -> None:
    sink = CaptureSink()
    await sink.start()
    runner, desk = await open_desk(
        tmp_path, os_users, sink, review={"retention": "3s", "remind_before": "2s"}
    )
    try:
        message_id = await desk.send(restricted_party_message(FATHER), [FATHER])
        assert await desk.settle(message_id) == {FATHER: RecipientState.HELD}
        reminder = await desk.notices_to(REVIEWERS, "Reminder: 1 held message(s) expire soon")
        assert message_id.encode() in reminder
        notice = await desk.notices_to(SENDER, "Your held message expired unreviewed")
        assert message_id.encode() in notice
        assert await desk.states(message_id) == {FATHER: RecipientState.REJECTED}
        record = await desk.service.store.load(message_id)
        assert record is not None and record.state is MessageState.REJECTED
        assert record.recipients[0].last_reply.startswith("expired: not reviewed")
        entries = await desk.service.store.audit_entries(message_id)
        assert [e.action for e in entries] == ["verdict", "expire"]
        assert desk.delivered_to(FATHER) == []
    finally:
        await runner.stop_all()
        await sink.stop()


# ---- who may do what ---------------------------------------------------------------


async def test_a_user_not_in_the_staff_register_is_refused(desk: Desk) -> None:
    message_id = await desk.send(restricted_party_message(FATHER), [FATHER])
    await desk.settle(message_id)
    for args in (
        ("quarantine", "list"),
        ("quarantine", "release", message_id, "--reason", "x"),
        ("audit", "verify"),
    ):
        code, _, err = await desk.run(STRANGER, *args)
        assert code == 1
        assert f"refused: {STRANGER} is not in the staff register" in err
    assert await desk.states(message_id) == {FATHER: RecipientState.HELD}


def test_sudo_identity_must_match_a_real_user(os_users: dict[str, int]) -> None:
    uid = os_users[REVIEWER]
    assert invoking_login({"SUDO_USER": REVIEWER, "SUDO_UID": str(uid)}) == REVIEWER
    with pytest.raises(ReviewRefused, match="does not match"):
        invoking_login({"SUDO_USER": REVIEWER, "SUDO_UID": str(uid + 1)})
    with pytest.raises(ReviewRefused, match="not a user of this server"):
        invoking_login({"SUDO_USER": "sgt-nobody-here", "SUDO_UID": "4242"})
    # Without sudo, the real user running the command.
    assert invoking_login({}) == pwd.getpwuid(os.getuid()).pw_name


def test_a_staff_member_without_a_review_role_is_refused(tmp_path: Path) -> None:
    staff = tmp_path / "staff.csv"
    staff.write_text(
        "email,name,team,review_role,login\n"
        "j.okafor@northshire.gov.uk,Joy Okafor,children,,jokafor\n",
        encoding="utf-8",
    )
    with pytest.raises(ReviewRefused, match="has no review role"):
        reviewer_for("jokafor", load_staff(staff))


# ---- the audit log -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (
            "UPDATE audit SET detail = replace(detail, 'quarantine', 'pass') WHERE seq = 1",
            "BROKEN at entry 1: its content was changed",
        ),
        ("DELETE FROM audit WHERE seq = 2", "BROKEN at entry 3: expected entry 2"),
        (
            "UPDATE audit SET actor = 'someone-else' WHERE seq = 2",
            "BROKEN at entry 2: its content was changed",
        ),
    ],
)
async def test_tampering_with_the_audit_log_is_found(desk: Desk, tamper: str, problem: str) -> None:
    message_id = await desk.send(restricted_party_message(FATHER), [FATHER])
    await desk.settle(message_id)
    await desk.run(REVIEWER, "quarantine", "release", message_id, "--reason", "ok")
    code, out, _ = await desk.run(REVIEWER_2, "quarantine", "reject", message_id, "--reason", "no")
    assert code == 0
    code, out, _ = await desk.run(APPROVER, "audit", "verify")
    assert code == 0 and "3 entries" in out
    data_dir = desk.service.config.store.data_dir
    with sqlite3.connect(data_dir / "smtpguard.db") as db:
        db.execute(tamper)
    code, out, _ = await desk.run(APPROVER, "audit", "verify")
    assert code == 1
    assert problem in out


async def test_reading_a_held_message_is_itself_audited_and_logs_hold_no_content(
    desk: Desk, capfd: pytest.CaptureFixture[str]
) -> None:
    message_id = await desk.send(restricted_party_message(FATHER), [FATHER])
    await desk.settle(message_id)
    code, out, _ = await desk.run(REVIEWER, "quarantine", "export", message_id)
    assert code == 0 and "child protection conference" in out
    code, out, _ = await desk.run(REVIEWER, "quarantine", "show", message_id, "--content")
    assert code == 0 and "child protection conference" in out
    entries = await desk.service.store.audit_entries(message_id)
    assert [(e.actor, e.action) for e in entries][1:] == [
        (REVIEWER, "export"),
        (REVIEWER, "show-content"),
    ]
    assert not any("conference" in json.dumps(e.detail) for e in entries)
    logged = capfd.readouterr()
    assert "child protection conference" not in logged.out + logged.err


async def test_in_digest_mode_reviewers_get_one_notice_listing_the_new_holds(
    tmp_path: Path, os_users: dict[str, int]
) -> None:
    sink = CaptureSink()
    await sink.start()
    runner, desk = await open_desk(
        tmp_path, os_users, sink, review={"reviewer_notices": "digest", "digest_interval": "3s"}
    )
    try:
        first = await desk.send(restricted_party_message(FATHER), [FATHER])
        second = await desk.send(restricted_party_message(MOTHERS_PARTNER), [MOTHERS_PARTNER])
        await desk.settle(first)
        await desk.settle(second)
        digest = await desk.notices_to(REVIEWERS, "Held for review: 2 new message(s)")
        assert first.encode() in digest and second.encode() in digest
        assert b"conference" not in digest and b"CS-204817" not in digest
        per_hold = [
            c
            for c in sink.handler.messages
            if REVIEWERS in c.recipients
            and b"Subject: Held for review: " + first.encode() in c.content
        ]
        assert per_hold == []
    finally:
        await runner.stop_all()
        await sink.stop()
