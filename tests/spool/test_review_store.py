"""The store's review operations: approvals, refusals and the audit chain, under concurrency.

Two store objects on one data folder stand for the relay and a reviewer's
command (or two reviewers' commands): separate connections, real SQLite
locking, as two processes would have. On PostgreSQL (tests/spool/conftest.py)
they are two connection pools on one database, as two relay instances are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from smtpguard.review.audit import verify_chain
from smtpguard.spool import (
    Approval,
    MessageState,
    RecipientOutcome,
    RecipientState,
    ReviewConflict,
    Store,
)
from tests.spool.conftest import StoreFactory
from tests.spool.test_sqlite_store import accept, data_dir, has_content, make_envelope, on_sqlite

HELD = RecipientState.HELD
TWO = ("one@partner.example", "two@nhs.net")


def two_distinct(recipient: str, so_far: Sequence[Approval]) -> bool:
    return len({a.reviewer for a in so_far}) >= 2


@pytest.fixture
async def stores(new_store: StoreFactory) -> AsyncIterator[tuple[Store, Store]]:
    first = new_store()
    second = new_store()
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def held_message(
    store: Store,
    states: list[RecipientState] | None = None,
    state: MessageState = MessageState.HELD,
) -> str:
    message_id = await accept(
        store,
        envelope=make_envelope(TWO),
        state=state,
        recipient_states=states or [HELD, HELD],
    )
    await store.load(message_id)  # indexed now, visible to the other store
    return message_id


async def test_two_reviewers_approving_at_once_release_the_copy_exactly_once(
    stores: tuple[Store, Store],
) -> None:
    relay, other = stores
    for _ in range(20):
        message_id = await held_message(relay)
        results = await asyncio.gather(
            relay.approve(
                message_id, [Approval(TWO[0], "alice", "reviewer", "ok")], two_distinct, 60
            ),
            other.approve(
                message_id, [Approval(TWO[0], "bob", "approver", "ok")], two_distinct, 60
            ),
        )
        assert sorted(results) == [(), (TWO[0],)]
        record = await relay.load(message_id)
        assert record is not None
        assert record.state is MessageState.RELEASED
        states = {r.address: r.state for r in record.recipients}
        assert states == {TWO[0]: RecipientState.PENDING, TWO[1]: HELD}
        assert len(await other.approvals(message_id)) == 2


async def test_an_approval_of_a_copy_no_longer_held_is_refused_and_not_recorded(
    stores: tuple[Store, Store],
) -> None:
    relay, reviewer = stores
    message_id = await held_message(relay)
    await relay.finish_held(message_id, [TWO[0]], RecipientState.REJECTED, "rejected by x")
    with pytest.raises(ReviewConflict, match="is not held"):
        await reviewer.approve(
            message_id, [Approval(TWO[0], "bob", "approver", "ok")], two_distinct, 60
        )
    assert await reviewer.approvals(message_id) == []
    with pytest.raises(ReviewConflict, match="no such message"):
        await reviewer.approve(
            "nope", [Approval(TWO[0], "bob", "approver", "ok")], two_distinct, 60
        )


async def test_refusing_the_last_held_copy_finishes_the_message_and_removes_its_file(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    relay, reviewer = stores
    message_id = await held_message(relay)
    spool = data_dir(tmp_path) / "spool" / f"{message_id}.eml"
    after = await reviewer.finish_held(message_id, [TWO[0]], RecipientState.REJECTED, "no")
    assert after.state is MessageState.HELD and await has_content(relay, message_id)
    assert spool.exists() or not on_sqlite(relay)
    after = await reviewer.finish_held(message_id, [TWO[1]], RecipientState.REJECTED, "no")
    assert after.state is MessageState.REJECTED and not await has_content(relay, message_id)
    assert not spool.exists()
    assert [r.last_reply for r in after.recipients] == ["no", "no"]


async def test_a_copy_released_while_the_relay_delivers_the_others_is_not_stranded(
    stores: tuple[Store, Store],
) -> None:
    relay, reviewer = stores
    message_id = await held_message(relay, [RecipientState.PENDING, HELD], MessageState.QUEUED)
    assert await relay.claim(message_id, "relay", 60)
    # The reviewer releases the held copy while the relay's attempt is in flight...
    one = [Approval(TWO[1], "alice", "approver", "ok")]
    released = await reviewer.approve(message_id, one, lambda r, a: True, 60)
    assert released == (TWO[1],)
    # ...and the attempt, which saw that copy held, records its outcome.
    delivered = [RecipientOutcome(TWO[0], RecipientState.DELIVERED, "250 ok")]
    await relay.record_attempt(message_id, delivered, MessageState.HELD, None)
    record = await relay.load(message_id)
    assert record is not None
    assert record.state is MessageState.QUEUED  # goes on to deliver the released copy
    assert record.pending_recipients() == (TWO[1],)


async def test_audit_entries_from_two_processes_form_one_unbroken_chain(
    stores: tuple[Store, Store],
) -> None:
    relay, reviewer = stores
    await asyncio.gather(
        *(
            store.append_audit(actor, "verdict", f"m{n}", {"n": n, "rules": ["r"]})
            for n in range(40)
            for store, actor in ((relay, "smtpguard"), (reviewer, "alice"))
        )
    )
    entries = await relay.audit_entries()
    assert [e.seq for e in entries] == list(range(1, 81))
    report = verify_chain(entries)
    assert report.intact and report.entries == 80 and report.head == entries[-1].hash
    assert await reviewer.audit_head() == (80, entries[-1].hash)
    assert [e.message_id for e in await reviewer.audit_entries("m7")] == ["m7", "m7"]


async def test_each_digest_window_is_taken_once_and_survives_a_restart(
    stores: tuple[Store, Store], new_store: StoreFactory
) -> None:
    """Two relay instances on one database (or a relay restarted): one digest per window,
    and the window goes on from where the last digest ended."""
    first, second = stores
    assert await first.claim_digest(1000.0, 60.0) is None  # opens the first window
    assert await second.claim_digest(1030.0, 60.0) is None  # not due yet
    taken = await asyncio.gather(
        *(store.claim_digest(1061.0, 60.0) for store in (first, second, first, second))
    )
    assert sorted(taken, key=lambda t: t is None) == [1000.0, None, None, None]
    restarted = new_store()  # a relay started afresh reads where the window stands
    await restarted.open()
    try:
        assert await restarted.claim_digest(1100.0, 60.0) is None
        assert await restarted.claim_digest(1125.0, 60.0) == 1061.0
    finally:
        await restarted.close()


def test_verify_finds_an_edited_a_removed_and_an_inserted_entry() -> None:
    from smtpguard.spool import GENESIS, AuditEntry, audit_hash

    chain = []
    prev = GENESIS
    for seq in range(1, 5):
        digest = audit_hash(prev, seq, float(seq), "a", "verdict", "m", {"seq": seq})
        chain.append(AuditEntry(seq, float(seq), "a", "verdict", "m", {"seq": seq}, prev, digest))
        prev = digest
    assert verify_chain(chain).intact

    edited = list(chain)
    edited[1] = AuditEntry(2, 2.0, "a", "release", "m", {"seq": 2}, chain[0].hash, chain[1].hash)
    assert (verify_chain(edited).broken_at, verify_chain(edited).entries) == (2, 1)

    removed = chain[:1] + chain[2:]
    assert verify_chain(removed).broken_at == 3

    forged = audit_hash(chain[1].hash, 3, 2.5, "x", "approve", "m", {})
    renumbered = [
        *chain[:2],
        AuditEntry(3, 2.5, "x", "approve", "m", {}, chain[1].hash, forged),
        *(
            AuditEntry(e.seq + 1, e.at, e.actor, e.action, e.message_id, e.detail, e.prev, e.hash)
            for e in chain[2:]
        ),
    ]
    report = verify_chain(renumbered)
    assert report.broken_at == 4 and "does not follow" in report.problem
