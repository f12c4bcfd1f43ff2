"""smtpguard behind a real Postfix, configured with the snippets in deploy/postfix/.

Every test starts its own Postfix instance (tests/postfix.py: own config
folder, queue and log in a temporary folder, loopback ports picked at run
time) and a real smtpguard relay in-process with the example council's policy:

    client -> Postfix submission -> smtpguard -> Postfix reinjection -> capture sink
              (after-queue: content_filter; before-queue: smtpd_proxy_filter)

Postfix's relayhost is the capture sink, so what arrives there is what would
have gone to the internet. The reviewers of the B3 test run `smtpguard
quarantine release` as real OS users, as in tests/test_review.py.
"""

from __future__ import annotations

import asyncio
import email
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from smtpguard.spool import RecipientState
from tests.conftest import RelayRunner
from tests.postfix import Ports, PostfixInstance, unavailable
from tests.scenarios.builders import message
from tests.sink import Captured, CaptureSink
from tests.test_review import (
    APPROVER,
    FATHER,
    REVIEWER,
    SENDER,
    Desk,
    council_changes,
    os_users,  # noqa: F401  (the fixture: the reviewers as real OS users)
    restricted_party_message,
)

UNAVAILABLE = unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

CONTRACTOR = "roadworks@kier-highways.co.uk"  # external, nothing sensitive: passes
OBSOLETE = "j.smith@northshire.gsi.gov.uk"  # a retired secure domain: rejected

SNIPPETS = {
    "after-queue": (["main.cf.after-queue"], ["master.cf.after-queue"]),
    "before-queue": ([], ["master.cf.before-queue"]),
}


def clean_message(subject: str = "Mill Lane resurfacing", to: str = CONTRACTOR) -> bytes:
    return message(
        SENDER,
        subject,
        "The resurfacing of Mill Lane starts on Monday; please put the signs up by Friday.\n",
        to=[to],
    )


def queued_as(reply: str) -> str:
    found = re.search(r"queued as (\w+)", reply)
    assert found is not None, reply
    return found.group(1)


def received_headers(content: bytes) -> list[str]:
    """The Received: headers, top (newest) first, unfolded."""
    parsed = email.message_from_bytes(content)
    return [re.sub(r"\s+", " ", str(value)) for value in parsed.get_all("Received", [])]


class Stack:
    """One test's Postfix, smtpguard and capture sink; everything stopped at teardown."""

    def __init__(self, tmp_path: Path, sink: CaptureSink) -> None:
        self.tmp_path = tmp_path
        self.sink = sink
        self.ports = Ports.pick(sink.port)
        self.runner = RelayRunner(tmp_path, sink)
        self.postfix: PostfixInstance | None = None

    async def start_postfix(
        self, mode: str, settings: Mapping[str, str] | None = None
    ) -> PostfixInstance:
        main, master = SNIPPETS[mode]
        self.postfix = PostfixInstance(
            self.ports, main_snippets=main, master_snippets=master, settings=settings
        )
        await self.postfix.start()
        await self.postfix.wait_listening(self.ports.reinjection)
        return self.postfix

    async def start_smtpguard(self, mode: str, uids: dict[str, int] | None = None) -> Desk:
        """smtpguard on the port Postfix's config names, relaying to Postfix's reinjection
        (the example policy's secure routes too: everything leaves through Postfix)."""
        changes: dict[str, Any] = council_changes(self.tmp_path, self.ports.reinjection)
        changes["server"] = {"listen": f"127.0.0.1:{self.ports.smtpguard}", "mode": mode}
        service = await self.runner.start(changes, upstream_port=self.ports.reinjection)
        return Desk(service, self.sink, self.tmp_path / "smtpguard.yaml", uids or {})

    async def close(self) -> None:
        try:
            await self.runner.stop_all()
        finally:
            if self.postfix is not None:
                await self.postfix.stop()

    async def arrivals(
        self, recipient: str, count: int = 1, timeout: float = 15.0
    ) -> list[Captured]:
        """Messages (not smtpguard's notices) that reached the sink for `recipient`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                c
                for c in self.sink.handler.messages
                if recipient in c.recipients and c.sender not in ("", "<>")
            ]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                log = self.postfix.log() if self.postfix is not None else ""
                raise AssertionError(f"{len(found)} of {count} message(s) to {recipient}:\n{log}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    sink = CaptureSink()
    await sink.start()
    opened = Stack(tmp_path, sink)
    try:
        yield opened
    finally:
        try:
            await opened.close()
        finally:
            await sink.stop()


async def handed_to_smtpguard(stack: Stack, postfix_id: str, recipient: str) -> str:
    """Wait for Postfix to log its hand-off to smtpguard; smtpguard's queue id from its 250."""
    assert stack.postfix is not None
    sent = await stack.postfix.wait_for_log(
        rf"{postfix_id}: to=<{re.escape(recipient)}>, "
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{stack.ports.smtpguard}, .*"
        r"status=sent \(250 2\.0\.0 Ok: queued as (\w+)\)"
    )
    return sent.group(1)


# ---- after-queue: content_filter ------------------------------------------------------


async def test_after_queue_clean_mail_goes_through_smtpguard_and_back_through_postfix(
    stack: Stack,
) -> None:
    postfix = await stack.start_postfix("after-queue")
    desk = await stack.start_smtpguard("after-queue")
    content = clean_message()

    postfix_id = queued_as(await postfix.submit(SENDER, [CONTRACTOR], content))
    guard_id = await handed_to_smtpguard(stack, postfix_id, CONTRACTOR)

    [arrived] = await stack.arrivals(CONTRACTOR)
    assert (arrived.sender, arrived.recipients) == (SENDER, [CONTRACTOR])
    # Newest first: Postfix's reinjection smtpd, smtpguard, Postfix's submission smtpd.
    reinjection, guard, submission = received_headers(arrived.content)
    assert f"by relay.test (smtpguard) with ESMTP id {guard_id};" in guard
    assert f"(Postfix) with ESMTP id {postfix_id}" in submission
    reinjected_id = re.search(r"\(Postfix\) with E?SMTP id (\w+)", reinjection)
    assert reinjected_id is not None and reinjected_id.group(1) != postfix_id, reinjection
    assert arrived.content.endswith(content.split(b"\r\n\r\n", 1)[1])
    assert await desk.settle(guard_id) == {CONTRACTOR: RecipientState.DELIVERED}
    await postfix.wait_for_queue(lambda entries: entries == [], "emptied")


async def test_after_queue_b3_is_held_in_smtpguard_until_two_reviewers_release_it(
    stack: Stack,
    os_users: dict[str, int],  # noqa: F811
) -> None:
    postfix = await stack.start_postfix("after-queue")
    desk = await stack.start_smtpguard("after-queue", os_users)

    postfix_id = queued_as(await postfix.submit(SENDER, [FATHER], restricted_party_message(FATHER)))
    guard_id = await handed_to_smtpguard(stack, postfix_id, FATHER)
    assert await desk.settle(guard_id) == {FATHER: RecipientState.HELD}
    # The sender is told, through Postfix; the message itself stays in smtpguard.
    notice = await desk.notices_to(SENDER, "Your message is held for review")
    assert guard_id.encode() in notice
    await postfix.wait_for_queue(lambda entries: entries == [], "emptied")
    assert desk.delivered_to(FATHER) == []

    code, out, err = await desk.run(
        APPROVER, "quarantine", "release", guard_id, "--reason", "agreed with the team manager"
    )
    assert code == 0, err
    assert "still held: needs 1 more approval" in out
    assert desk.delivered_to(FATHER) == []
    code, out, err = await desk.run(
        REVIEWER, "quarantine", "release", guard_id, "--reason", "the father's solicitor asked"
    )
    assert code == 0, err
    # "released" only once the upstream, Postfix's reinjection smtpd, has queued it.
    released = re.search(
        rf"released: {re.escape(FATHER)}: delivered \(250 2\.0\.0 Ok: queued as (\w+)\)", out
    )
    assert released is not None, out
    reinjected_id = released.group(1)

    [arrived] = await stack.arrivals(FATHER)
    await postfix.wait_for_log(
        rf"{reinjected_id}: to=<{re.escape(FATHER)}>, "
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{stack.ports.sink}, .*status=sent"
    )
    reinjection, guard, _ = received_headers(arrived.content)
    assert f"with ESMTP id {reinjected_id}" in reinjection
    assert f"(smtpguard) with ESMTP id {guard_id};" in guard
    assert b"The child protection conference for CS-204817" in arrived.content


# ---- before-queue: smtpd_proxy_filter ---------------------------------------------------


async def test_before_queue_policy_refusal_is_a_550_to_the_submitting_client(
    stack: Stack,
) -> None:
    postfix = await stack.start_postfix("before-queue")
    desk = await stack.start_smtpguard("before-queue")

    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await postfix.submit(SENDER, [OBSOLETE], clean_message(to=OBSOLETE))
    assert refused.value.code == 550, refused.value
    assert refused.value.message.startswith("5.7.1 Message refused by policy"), refused.value
    assert "retired government secure-mail domain" in refused.value.message

    # A clean message goes through; the client's 250 is smtpguard's, with its id.
    content = clean_message()
    guard_id = queued_as(await postfix.submit(SENDER, [CONTRACTOR], content))
    [arrived] = await stack.arrivals(CONTRACTOR)
    reinjection, guard, _ = received_headers(arrived.content)
    assert "(Postfix) with ESMTP id" in reinjection
    assert f"(smtpguard) with ESMTP id {guard_id};" in guard
    assert await desk.settle(guard_id) == {CONTRACTOR: RecipientState.DELIVERED}

    # The refused message was stored nowhere and went nowhere.
    await postfix.wait_for_queue(lambda entries: entries == [], "emptied")
    assert [c.recipients for c in stack.sink.handler.messages] == [[CONTRACTOR]]
    spool = desk.service.config.store.data_dir / "spool"
    assert sorted(spool.glob("*.eml")) == []


async def test_before_queue_with_smtpguard_down_the_client_is_told_to_try_again(
    stack: Stack,
) -> None:
    postfix = await stack.start_postfix("before-queue")
    with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
        await postfix.submit(SENDER, [CONTRACTOR], clean_message())
    # A temporary refusal: the submitting client keeps the message and tries again.
    assert deferred.value.code == 451 and deferred.value.message.startswith("4.3.0")
    await postfix.wait_for_log(
        rf"warning: connect to proxy filter 127\.0\.0\.1:{stack.ports.smtpguard}: "
        "Connection refused"
    )
    # Postfix queued nothing of it; it told its postmaster.
    await postfix.wait_for_queue(lambda entries: entries == [], "emptied")
    assert [c.recipients for c in stack.sink.handler.messages] == [["postmaster@postfix.test"]]


# ---- smtpguard down: Postfix keeps the mail --------------------------------------------


async def test_after_queue_while_smtpguard_is_down_postfix_keeps_the_mail_until_it_is_back(
    stack: Stack,
) -> None:
    # Retries far apart: only the flush after smtpguard is back can deliver in time.
    postfix = await stack.start_postfix(
        "after-queue",
        settings={
            "queue_run_delay": "300s",
            "minimal_backoff_time": "300s",
            "maximal_backoff_time": "600s",
        },
    )
    subjects = [f"Mill Lane resurfacing, part {n}" for n in (1, 2, 3)]
    ids = set()
    for subject in subjects:
        ids.add(queued_as(await postfix.submit(SENDER, [CONTRACTOR], clean_message(subject))))

    refused = f"connect to 127.0.0.1[127.0.0.1]:{stack.ports.smtpguard}: Connection refused"

    def all_deferred(entries: list[dict[str, Any]]) -> bool:
        return {e["queue_id"] for e in entries} == ids and all(
            e["queue_name"] == "deferred"
            and all(refused in r.get("delay_reason", "") for r in e["recipients"])
            for e in entries
        )

    await postfix.wait_for_queue(all_deferred, f"held {len(ids)} deferred messages")
    await asyncio.sleep(1.0)
    assert stack.sink.handler.messages == []
    assert all_deferred(await postfix.queue())

    await stack.start_smtpguard("after-queue")
    started = time.monotonic()
    await postfix.flush()
    arrived = await stack.arrivals(CONTRACTOR, count=len(subjects), timeout=10.0)
    assert time.monotonic() - started < 10.0
    assert sorted(email.message_from_bytes(c.content)["Subject"] for c in arrived) == subjects
    await postfix.wait_for_queue(lambda entries: entries == [], "emptied")
