"""The SQLite store and its spool folder, through the public `Store` interface.

Everything runs against real files in tmp_path: a real SQLite database in WAL
mode and a real spool folder. A second, plain `sqlite3` connection is used
only to look at (or lock) the database the way another process would.

Tests on the `store` fixture run on PostgreSQL too (tests/spool/conftest.py):
the interface means the same on both; `sqlite_only` tests are about SQLite's
own files and schema.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from smtpguard.envelope import Envelope
from smtpguard.spool import (
    MessageState,
    Origin,
    QueueCounts,
    RecipientOutcome,
    RecipientRecord,
    RecipientState,
    Store,
    new_message_id,
    open_store,
)
from smtpguard.spool import sqlite as sqlite_backend
from smtpguard.spool.sqlite import MIGRATIONS, SQLiteStore
from tests.spool.conftest import StoreFactory

DB_NAME = "smtpguard.db"
EXPIRES = 2_000_000_000.0


def make_envelope(
    recipients: tuple[str, ...] = ("one@partner.example", "two@nhs.net"), **changes: object
) -> Envelope:
    fields: dict[str, object] = {
        "sender": "worker@council.example",
        "recipients": recipients,
        "client_address": "127.0.0.1",
        "client_name": "mail.council.example",
        "received_at": 1_700_000_000.25,
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[Store]:
    opened = new_store()
    await opened.open()
    yield opened
    await opened.close()


def on_sqlite(store: Store) -> bool:
    """Whether there is a spool folder and a SQLite file to look at, besides the interface."""
    return isinstance(store, SQLiteStore)


async def has_content(store: Store, message_id: str) -> bool:
    try:
        await store.content(message_id)
    except FileNotFoundError:
        return False
    return True


async def accept(
    store: Store,
    content: bytes = b"Subject: x\r\n\r\nbody\r\n",
    *,
    envelope: Envelope | None = None,
    state: MessageState = MessageState.QUEUED,
    origin: Origin = Origin.RELAY,
    recipient_states: list[RecipientState] | None = None,
) -> str:
    message_id = new_message_id()
    await store.accept(
        message_id,
        envelope or make_envelope(),
        content,
        state=state,
        origin=origin,
        expires_at=EXPIRES,
        recipient_states=recipient_states,
    )
    return message_id


def spool_file(tmp_path: Path, message_id: str) -> Path:
    return data_dir(tmp_path) / "spool" / f"{message_id}.eml"


@contextmanager
def inspect_db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection, as another process (the CLI, say) would open it."""
    db = sqlite3.connect(data_dir(tmp_path) / DB_NAME, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- accept, load, content ---------------------------------------------------------


@pytest.mark.parametrize(
    "envelope, state, origin",
    [
        pytest.param(make_envelope(), MessageState.QUEUED, Origin.RELAY, id="plain"),
        pytest.param(make_envelope(sender=""), MessageState.RECEIVED, Origin.NOTICE, id="null"),
        pytest.param(make_envelope(("solo@x.example",)), MessageState.HELD, Origin.RELAY, id="1"),
        pytest.param(
            make_envelope(
                ("j\u00f6rg@b\u00fccher.example", "\u7528\u6237@\u4f8b\u5b50.example"),
                sender="s\u00e9n@council.example",
                client_address="::1",
                client_name="[IPv6:::1]",
                smtputf8=True,
                body_8bit=True,
                tls=True,
                mail_options=("SIZE=100", "BODY=8BITMIME", "SMTPUTF8"),
            ),
            MessageState.QUEUED,
            Origin.RELAY,
            id="utf8-and-options",
        ),
        pytest.param(
            make_envelope(("same@x.example", "same@x.example", "other@y.example")),
            MessageState.QUEUED,
            Origin.RELAY,
            id="repeated-recipient",
        ),
        pytest.param(
            make_envelope(tuple(f"r{i}@x.example" for i in range(100))),
            MessageState.QUEUED,
            Origin.RELAY,
            id="100-recipients",
        ),
    ],
)
async def test_when_accepted_then_load_round_trips_envelope_and_recipients(
    store: Store, envelope: Envelope, state: MessageState, origin: Origin
) -> None:
    before = time.time()
    message_id = await accept(store, b"abc", envelope=envelope, state=state, origin=origin)
    record = await store.load(message_id)
    assert record is not None
    assert record.id == message_id
    assert record.envelope == envelope
    assert record.state is state
    assert record.origin is origin
    assert record.size == 3
    assert record.attempts == 0
    assert record.expires_at == EXPIRES
    assert before <= record.updated_at <= time.time()
    assert record.recipients == tuple(
        RecipientRecord(address, RecipientState.PENDING) for address in envelope.recipients
    )
    assert record.pending_recipients() == envelope.recipients


async def test_when_accepted_with_recipient_states_then_each_recipient_keeps_its_own(
    store: Store,
) -> None:
    envelope = make_envelope(("a@x.example", "b@y.example", "c@z.example"))
    states = [RecipientState.PENDING, RecipientState.HELD, RecipientState.REJECTED]
    message_id = await accept(store, envelope=envelope, recipient_states=states)
    record = await store.load(message_id)
    assert record is not None
    assert [r.state for r in record.recipients] == states
    assert record.pending_recipients() == ("a@x.example",)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"Subject: hi\r\n\r\nbody\r\n", id="crlf-text"),
        pytest.param(bytes(range(256)) * 4, id="every-byte-value"),
        pytest.param(b"no final newline", id="no-final-newline"),
        pytest.param(b"line\r\n" * 1_000_000, id="6-mb"),
    ],
)
async def test_when_accepted_then_content_returns_exact_bytes(
    store: Store, tmp_path: Path, content: bytes
) -> None:
    message_id = await accept(store, content)
    assert await store.content(message_id) == content
    if on_sqlite(store):
        header, _, body = spool_file(tmp_path, message_id).read_bytes().partition(b"\n")
        assert body == content
        assert json.loads(header)["recipients"] == list(make_envelope().recipients)
    record = await store.load(message_id)
    assert record is not None and record.size == len(content)


async def test_when_unknown_id_then_load_is_none_and_content_raises(store: Store) -> None:
    assert await store.load("NO-SUCH-MESSAGE") is None
    with pytest.raises(FileNotFoundError):
        await store.content("NO-SUCH-MESSAGE")


@pytest.mark.sqlite_only
async def test_when_accepted_then_no_temporary_file_is_left(store: Store, tmp_path: Path) -> None:
    message_id = await accept(store)
    names = sorted(p.name for p in (data_dir(tmp_path) / "spool").iterdir())
    assert names == [f"{message_id}.eml"]


async def test_when_200_accepted_concurrently_then_all_land(store: Store, tmp_path: Path) -> None:
    ids = [new_message_id() for _ in range(200)]
    envelopes = [make_envelope((f"r{i}@x.example", f"s{i}@y.example")) for i in range(200)]
    await asyncio.gather(
        *(
            store.accept(
                message_id,
                envelope,
                b"message %d\r\n" % i,
                state=MessageState.QUEUED,
                origin=Origin.RELAY,
                expires_at=EXPIRES,
            )
            for i, (message_id, envelope) in enumerate(zip(ids, envelopes, strict=True))
        )
    )
    for i, (message_id, envelope) in enumerate(zip(ids, envelopes, strict=True)):
        record = await store.load(message_id)
        assert record is not None and record.envelope == envelope
        assert await store.content(message_id) == b"message %d\r\n" % i
    assert (await store.counts()).by_state == {MessageState.QUEUED: 200}
    if not on_sqlite(store):
        return
    # the rows are in the database file itself, not only in this connection's view
    with inspect_db(tmp_path) as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 200
        assert db.execute("SELECT count(*) FROM recipients").fetchone()[0] == 400


# -- permissions -------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o002, 0o000], ids=lambda m: f"umask-{m:03o}")
def permissive_umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


async def test_when_permissive_umask_then_data_dir_spool_and_db_are_private(
    tmp_path: Path, permissive_umask: int
) -> None:
    opened = open_store("sqlite", data_dir(tmp_path))
    await opened.open()
    try:
        message_id = await accept(opened)
        root = data_dir(tmp_path)
        assert mode(root) == 0o700
        assert mode(root / "spool") == 0o700
        assert mode(spool_file(tmp_path, message_id)) == 0o600
        assert mode(root / DB_NAME) == 0o600
        for suffix in ("-wal", "-shm"):
            sidecar = root / f"{DB_NAME}{suffix}"
            if sidecar.exists():
                assert mode(sidecar) == 0o600, sidecar.name
    finally:
        await opened.close()


async def test_when_existing_data_dir_is_open_then_tightened_on_open(tmp_path: Path) -> None:
    root = data_dir(tmp_path)
    (root / "spool").mkdir(parents=True)
    root.chmod(0o755)
    (root / "spool").chmod(0o777)
    sqlite3.connect(root / DB_NAME).close()
    (root / DB_NAME).chmod(0o644)
    opened = open_store("sqlite", root)
    await opened.open()
    try:
        assert mode(root) == 0o700
        assert mode(root / "spool") == 0o700
        assert mode(root / DB_NAME) == 0o600
    finally:
        await opened.close()


# -- claiming --------------------------------------------------------------------------


async def test_when_claimed_then_second_claim_fails(store: Store) -> None:
    message_id = await accept(store)
    assert await store.claim(message_id, "worker-1", 60) is True
    assert await store.claim(message_id, "worker-1", 60) is False
    assert await store.claim(message_id, "worker-2", 60) is False
    record = await store.load(message_id)
    assert record is not None and record.state is MessageState.DELIVERING


@pytest.mark.parametrize(
    "state, expected",
    [
        (MessageState.QUEUED, True),
        (MessageState.DEFERRED, True),
        (MessageState.RELEASED, True),
        (MessageState.RECEIVED, False),
        (MessageState.HELD, False),
        (MessageState.DELIVERED, False),
        (MessageState.BOUNCED, False),
        (MessageState.REJECTED, False),
        (MessageState.EXPIRED, False),
    ],
)
async def test_when_claim_then_only_deliverable_states_are_taken(
    store: Store, state: MessageState, expected: bool
) -> None:
    message_id = await accept(store, state=state)
    assert await store.claim(message_id, "worker", 60) is expected
    record = await store.load(message_id)
    assert record is not None
    assert record.state is (MessageState.DELIVERING if expected else state)


async def test_when_claim_unknown_id_then_false(store: Store) -> None:
    assert await store.claim("NO-SUCH-MESSAGE", "worker", 60) is False


async def test_when_many_tasks_claim_one_message_then_exactly_one_wins(store: Store) -> None:
    message_id = await accept(store)
    results = await asyncio.gather(*(store.claim(message_id, f"w{i}", 60) for i in range(20)))
    assert results.count(True) == 1


async def _at(store: Store, state: MessageState, next_attempt_at: float | None) -> str:
    message_id = await accept(store)
    await store.set_state(message_id, state, next_attempt_at=next_attempt_at)
    return message_id


async def test_when_claim_due_then_only_due_deliverable_messages(store: Store) -> None:
    due = {
        await _at(store, MessageState.QUEUED, 100.0),
        await _at(store, MessageState.DEFERRED, 120.0),
        await _at(store, MessageState.RELEASED, 150.0),
    }
    await _at(store, MessageState.QUEUED, 151.0)  # not yet
    await _at(store, MessageState.DEFERRED, 300.0)  # not yet
    for state in (
        MessageState.RECEIVED,
        MessageState.HELD,
        MessageState.DELIVERED,
        MessageState.BOUNCED,
        MessageState.REJECTED,
        MessageState.EXPIRED,
    ):
        await _at(store, state, 50.0)  # due, but not deliverable
    taken = await _at(store, MessageState.QUEUED, 50.0)
    assert await store.claim(taken, "other", 60)  # already being delivered

    claimed = await store.claim_due(150.0, "worker", 60, limit=100)
    assert len(claimed) == len(set(claimed))
    assert set(claimed) == due
    for message_id in claimed:
        record = await store.load(message_id)
        assert record is not None and record.state is MessageState.DELIVERING
    assert await store.claim_due(150.0, "worker", 60, limit=100) == []


@pytest.mark.parametrize(
    "limit, expected",
    [(1, [0]), (2, [0, 1]), (4, [0, 1, 2, 3]), (10, [0, 1, 2, 3])],
)
async def test_when_claim_due_with_limit_then_at_most_limit_and_earliest_first(
    store: Store, limit: int, expected: list[int]
) -> None:
    # created out of order so that insertion order and due order differ
    ids = {t: await _at(store, MessageState.QUEUED, 100.0 + t) for t in (3, 1, 0, 2)}
    claimed = await store.claim_due(1000.0, "worker", 60, limit=limit)
    assert sorted(claimed) == sorted(ids[t] for t in expected)
    rest = await store.claim_due(1000.0, "worker", 60, limit=100)
    assert set(rest) == set(ids.values()) - set(claimed)


async def test_when_claim_due_concurrently_then_no_message_is_claimed_twice(
    store: Store,
) -> None:
    ids = {await _at(store, MessageState.QUEUED, 1.0) for _ in range(30)}
    batches = await asyncio.gather(
        *(store.claim_due(10.0, f"w{i}", 60, limit=4) for i in range(10))
    )
    claimed = [message_id for batch in batches for message_id in batch]
    assert len(claimed) == len(set(claimed)) == 30
    assert set(claimed) == ids


# -- attempts and state changes ------------------------------------------------------


async def test_when_record_attempt_then_per_recipient_states_replies_and_attempts(
    store: Store,
) -> None:
    envelope = make_envelope(("ok@a.example", "later@b.example", "gone@c.example"))
    message_id = await accept(store, envelope=envelope)
    assert await store.claim(message_id, "worker", 60)
    await store.record_attempt(
        message_id,
        [
            RecipientOutcome("ok@a.example", RecipientState.DELIVERED, "250 2.0.0 ok"),
            RecipientOutcome("later@b.example", RecipientState.DEFERRED, "451 4.3.0 busy"),
            RecipientOutcome("gone@c.example", RecipientState.BOUNCED, "550 5.1.1 no user"),
        ],
        MessageState.DEFERRED,
        500.0,
    )
    record = await store.load(message_id)
    assert record is not None
    assert record.state is MessageState.DEFERRED
    assert record.attempts == 1
    assert record.next_attempt_at == 500.0
    assert record.recipients == (
        RecipientRecord("ok@a.example", RecipientState.DELIVERED, 1, "250 2.0.0 ok"),
        RecipientRecord("later@b.example", RecipientState.DEFERRED, 1, "451 4.3.0 busy"),
        RecipientRecord("gone@c.example", RecipientState.BOUNCED, 1, "550 5.1.1 no user"),
    )
    assert record.pending_recipients() == ("later@b.example",)

    # the lease is released: the retry can claim it, and a second attempt adds up
    assert await store.claim_due(500.0, "worker", 60, limit=10) == [message_id]
    await store.record_attempt(
        message_id,
        [RecipientOutcome("later@b.example", RecipientState.DELIVERED, "250 2.0.0 done")],
        MessageState.BOUNCED,
        None,
    )
    record = await store.load(message_id)
    assert record is not None
    assert record.state is MessageState.BOUNCED
    assert record.attempts == 2
    assert record.next_attempt_at is None
    assert [(r.state, r.attempts, r.last_reply) for r in record.recipients] == [
        (RecipientState.DELIVERED, 1, "250 2.0.0 ok"),
        (RecipientState.DELIVERED, 2, "250 2.0.0 done"),
        (RecipientState.BOUNCED, 1, "550 5.1.1 no user"),
    ]
    assert record.pending_recipients() == ()


async def test_when_set_state_with_recipient_states_then_only_those_recipients_change(
    store: Store,
) -> None:
    envelope = make_envelope(("a@x.example", "b@y.example", "c@z.example"))
    message_id = await accept(store, envelope=envelope)
    before = await store.load(message_id)
    assert before is not None
    await store.set_state(
        message_id,
        MessageState.HELD,
        recipient_states={"b@y.example": RecipientState.HELD},
    )
    record = await store.load(message_id)
    assert record is not None
    assert record.state is MessageState.HELD
    assert record.next_attempt_at is None
    assert record.updated_at >= before.updated_at
    assert [r.state for r in record.recipients] == [
        RecipientState.PENDING,
        RecipientState.HELD,
        RecipientState.PENDING,
    ]

    await store.set_state(
        message_id,
        MessageState.RELEASED,
        recipient_states={
            "b@y.example": RecipientState.PENDING,
            "c@z.example": RecipientState.REJECTED,
        },
        next_attempt_at=42.0,
    )
    record = await store.load(message_id)
    assert record is not None
    assert record.state is MessageState.RELEASED
    assert record.next_attempt_at == 42.0
    assert [r.state for r in record.recipients] == [
        RecipientState.PENDING,
        RecipientState.PENDING,
        RecipientState.REJECTED,
    ]
    assert await store.claim_due(42.0, "worker", 60, limit=10) == [message_id]


async def test_when_set_state_on_claimed_message_then_lease_released(store: Store) -> None:
    message_id = await accept(store)
    assert await store.claim(message_id, "worker", 3600)
    await store.set_state(message_id, MessageState.QUEUED, next_attempt_at=1.0)
    assert await store.claim(message_id, "other", 60)


async def test_when_set_state_with_lease_then_message_is_claimed_by_that_owner(
    store: Store,
) -> None:
    message_id = await accept(store)
    await store.set_state(
        message_id, MessageState.DELIVERING, next_attempt_at=1.0, lease=("worker", 9e9)
    )
    assert await store.claim(message_id, "other", 60) is False
    assert await store.claim_due(10.0, "other", 60, limit=10) == []
    record = await store.load(message_id)
    assert record is not None and record.state is MessageState.DELIVERING


async def test_when_retry_now_then_deferred_messages_become_due(store: Store) -> None:
    deferred = {await _at(store, MessageState.DEFERRED, 9e9) for _ in range(3)}
    later = await _at(store, MessageState.QUEUED, 9e9)
    await _at(store, MessageState.HELD, 9e9)
    assert await store.claim_due(1000.0, "worker", 60, limit=100) == []

    assert await store.retry_now(1000.0) == 3
    for message_id in deferred:
        record = await store.load(message_id)
        assert record is not None and record.next_attempt_at == 1000.0
    assert set(await store.claim_due(1000.0, "worker", 60, limit=100)) == deferred
    record = await store.load(later)
    assert record is not None and record.next_attempt_at == 9e9
    assert await store.retry_now(1000.0) == 0


async def test_when_counts_then_unfinished_messages_by_state(store: Store) -> None:
    assert (await store.counts()).by_state == {}
    for state, n in (
        (MessageState.RECEIVED, 1),
        (MessageState.QUEUED, 3),
        (MessageState.HELD, 2),
        (MessageState.DELIVERED, 4),
        (MessageState.REJECTED, 1),
    ):
        for _ in range(n):
            await accept(store, state=state)
    await _at(store, MessageState.DEFERRED, 9e9)
    counts = await store.counts()
    # finished messages are history and are not counted (sqlite.py: _COUNTED)
    assert counts == QueueCounts(
        {
            MessageState.RECEIVED: 1,
            MessageState.QUEUED: 3,
            MessageState.HELD: 2,
            MessageState.DEFERRED: 1,
        }
    )
    assert counts.active == 7


async def test_when_messages_then_filtered_by_state_oldest_first_and_limited(
    store: Store,
) -> None:
    held = [
        await accept(store, envelope=make_envelope(received_at=1000.0 - i), state=MessageState.HELD)
        for i in range(5)
    ]
    await accept(store, state=MessageState.QUEUED)
    records = await store.messages([MessageState.HELD], limit=3)
    assert [r.id for r in records] == [held[4], held[3], held[2]]
    everything = await store.messages([MessageState.HELD, MessageState.QUEUED])
    assert len(everything) == 6


@pytest.mark.parametrize(
    "state, kept",
    [
        (MessageState.DEFERRED, True),
        (MessageState.HELD, True),
        (MessageState.DELIVERED, False),
        (MessageState.BOUNCED, False),
        (MessageState.EXPIRED, False),
    ],
)
async def test_when_attempt_finishes_message_then_its_bytes_are_removed_and_record_kept(
    store: Store, tmp_path: Path, state: MessageState, kept: bool
) -> None:
    message_id = await accept(store)
    outcome = RecipientOutcome("a@x.example", RecipientState.DELIVERED, "250 2.0.0 ok")
    await store.record_attempt(message_id, [outcome], state, None)
    if on_sqlite(store):
        assert spool_file(tmp_path, message_id).exists() is kept
    assert await has_content(store, message_id) is kept
    assert await store.load(message_id) is not None
    if not kept:
        with pytest.raises(FileNotFoundError):
            await store.content(message_id)


async def test_when_set_state_rejected_then_bytes_removed(store: Store, tmp_path: Path) -> None:
    message_id = await accept(store)
    await store.set_state(message_id, MessageState.REJECTED)
    if on_sqlite(store):
        assert not spool_file(tmp_path, message_id).exists()
    assert not await has_content(store, message_id)
    record = await store.load(message_id)
    assert record is not None and record.state is MessageState.REJECTED


async def test_when_free_disk_bytes_then_positive(store: Store) -> None:
    assert store.free_disk_bytes() > 0


# -- audit entries share commits -------------------------------------------------------


@pytest.mark.sqlite_only
async def test_when_verdict_entry_then_delivery_outcome_then_both_go_in_one_commit(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The relay writes an audit entry for every verdict; on its own commit that
    # doubled the commits of a delivered message. It waits for the outcome's.
    assert isinstance(store, SQLiteStore)
    monkeypatch.setattr(sqlite_backend, "_AUDIT_DELAY", 30.0)
    message_id = await accept(store, envelope=make_envelope(("one@partner.example",)))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    verdict = asyncio.ensure_future(
        store.append_audit("smtpguard", "verdict", message_id, {"rules": []})
    )
    await asyncio.sleep(0.1)  # the delivery takes a while
    assert statements.count("COMMIT") == 0
    await store.record_attempt(
        message_id,
        [RecipientOutcome("one@partner.example", RecipientState.DELIVERED, "250 2.0.0 ok")],
        MessageState.DELIVERED,
        None,
    )
    entry = await verdict
    assert statements.count("COMMIT") == 1
    assert [e.seq for e in await store.audit_entries(message_id)] == [entry.seq]
    record = await store.load(message_id)
    assert record is not None and record.state is MessageState.DELIVERED


@pytest.mark.sqlite_only
async def test_when_audit_entry_alone_then_committed_within_the_delay(
    store: Store, tmp_path: Path
) -> None:
    started = time.monotonic()
    entry = await asyncio.wait_for(store.append_audit("reviewer", "remind", None, {}), 2)
    assert time.monotonic() - started < 1
    with inspect_db(tmp_path) as db:
        assert db.execute("SELECT hash FROM audit").fetchall() == [(entry.hash,)]


@pytest.mark.sqlite_only
async def test_when_audit_entry_waits_then_a_read_still_sees_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "_AUDIT_DELAY", 30.0)
    waiting = asyncio.ensure_future(store.append_audit("reviewer", "release", "m1", {"n": 1}))
    await asyncio.sleep(0)
    assert [e.detail for e in await store.audit_entries("m1")] == [{"n": 1}]
    await asyncio.wait_for(waiting, 5)


@pytest.mark.sqlite_only
async def test_when_closed_with_an_audit_entry_waiting_then_it_is_written(
    new_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "_AUDIT_DELAY", 30.0)
    store = new_store()
    await store.open()
    waiting = asyncio.ensure_future(store.append_audit("reviewer", "release", "m1", {}))
    await asyncio.sleep(0)
    await store.close()
    entry = await asyncio.wait_for(waiting, 5)
    with inspect_db(tmp_path) as db:
        assert db.execute("SELECT seq, hash FROM audit").fetchall() == [(entry.seq, entry.hash)]


# -- restart -----------------------------------------------------------------------


async def test_when_recover_then_stale_claims_reset_and_leftovers_removed(
    tmp_path: Path,
) -> None:
    first = open_store("sqlite", data_dir(tmp_path))
    await first.open()
    delivering = await accept(first, envelope=make_envelope(received_at=1.0))
    assert await first.claim(delivering, "crashed-worker", 3600)
    received = await accept(
        first, envelope=make_envelope(received_at=2.0), state=MessageState.RECEIVED
    )
    queued = await accept(first, envelope=make_envelope(received_at=3.0))
    deferred = await accept(first, envelope=make_envelope(received_at=4.0))
    await first.set_state(deferred, MessageState.DEFERRED, next_attempt_at=9e9)
    released = await accept(
        first, envelope=make_envelope(received_at=5.0), state=MessageState.RELEASED
    )
    held = await accept(first, state=MessageState.HELD)
    delivered = await accept(first, state=MessageState.DELIVERED)
    await first.close()

    spool = data_dir(tmp_path) / "spool"
    unreadable = new_message_id()
    (spool / f"{unreadable}.eml").write_bytes(b"not a spool file")
    (spool / f"{new_message_id()}.tmp").write_bytes(b"half a mess")
    (spool / f"{delivered}.tmp").write_bytes(b"a partial rewrite")

    second = open_store("sqlite", data_dir(tmp_path))
    await second.open()
    try:
        unfinished = await second.recover()
        assert unfinished == [delivering, received, queued, deferred, released]
        record = await second.load(delivering)
        assert record is not None and record.state is MessageState.QUEUED
        assert await second.claim(delivering, "new-worker", 60)
        names = {p.name for p in spool.iterdir()}
        expected = {delivering, received, queued, deferred, released, held}
        # Partial writes go, and so does the file of a finished message (a crash came
        # between its commit and the file's removal); an unreadable file stays for an
        # administrator, unindexed.
        assert names == {f"{message_id}.eml" for message_id in {*expected, unreadable}}
        assert await second.load(unreadable) is None
        for message_id in expected:
            assert await second.content(message_id) == b"Subject: x\r\n\r\nbody\r\n"
        assert await second.recover() == [delivering, received, queued, deferred, released]
    finally:
        await second.close()


async def test_when_recover_on_empty_store_then_nothing(store: Store) -> None:
    assert await store.recover() == []


async def test_when_reopened_then_messages_survive(tmp_path: Path) -> None:
    first = open_store("sqlite", data_dir(tmp_path))
    await first.open()
    message_id = await accept(first, b"kept\r\n")
    await first.close()
    second = open_store("sqlite", data_dir(tmp_path))
    await second.open()
    try:
        record = await second.load(message_id)
        assert record is not None and record.envelope == make_envelope()
        assert await second.content(message_id) == b"kept\r\n"
    finally:
        await second.close()


# -- schema --------------------------------------------------------------------------


@pytest.mark.sqlite_only
async def test_when_opened_then_schema_version_is_number_of_migrations_and_wal(
    store: Store, tmp_path: Path
) -> None:
    with inspect_db(tmp_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"messages", "recipients"} <= tables


async def test_when_reopened_then_migrations_not_run_again(tmp_path: Path) -> None:
    for _ in range(3):
        opened = open_store("sqlite", data_dir(tmp_path))
        await opened.open()  # a second CREATE TABLE would fail here
        await accept(opened)
        await opened.close()
    with inspect_db(tmp_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 3


async def test_when_schema_is_newer_than_this_version_then_open_refused(tmp_path: Path) -> None:
    opened = open_store("sqlite", data_dir(tmp_path))
    await opened.open()
    await opened.close()
    newer = len(MIGRATIONS) + 1
    with inspect_db(tmp_path) as db:
        db.execute(f"PRAGMA user_version = {newer}")
    again = open_store("sqlite", data_dir(tmp_path))
    try:
        with pytest.raises(RuntimeError, match=rf"version {newer} is newer.*upgrade"):
            await again.open()
    finally:
        await again.close()
    with inspect_db(tmp_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == newer


@pytest.mark.sqlite_only
async def test_when_opened_then_store_is_safe_for_another_process_to_read(
    store: Store, tmp_path: Path
) -> None:
    # WAL: a reader (the CLI, say) sees committed rows while the relay holds the DB open.
    # A new message's row is written within half a second (sooner with its outcome).
    message_id = await accept(store)
    row = None
    for _ in range(40):
        with inspect_db(tmp_path) as db:
            row = db.execute("SELECT state FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is not None:
            break
        await asyncio.sleep(0.05)
    assert row == ("queued",)


# -- failures must not lose or strand a message ------------------------------------


async def test_when_accept_reuses_an_id_then_refused_and_first_message_intact(
    store: Store,
) -> None:
    message_id = await accept(store, b"the first message\r\n")
    with pytest.raises(FileExistsError):
        await store.accept(
            message_id,
            make_envelope(),
            b"an impostor\r\n",
            state=MessageState.QUEUED,
            origin=Origin.RELAY,
            expires_at=EXPIRES,
        )
    assert await store.content(message_id) == b"the first message\r\n"


async def test_when_recipient_states_do_not_match_recipients_then_nothing_written(
    store: Store, tmp_path: Path
) -> None:
    message_id = new_message_id()
    with pytest.raises(ValueError):
        await store.accept(
            message_id,
            make_envelope(("a@x.example", "b@y.example")),
            b"x",
            state=MessageState.QUEUED,
            origin=Origin.RELAY,
            expires_at=EXPIRES,
            recipient_states=[RecipientState.PENDING],
        )
    assert not spool_file(tmp_path, message_id).exists()
    assert not await has_content(store, message_id)
    assert await store.load(message_id) is None


@pytest.mark.sqlite_only
async def test_when_index_is_busy_then_accept_still_returns_once_the_file_is_durable(
    store: Store, tmp_path: Path
) -> None:
    message_id = new_message_id()
    # Another connection holds the write lock, so the index insert has to wait.
    blocker = sqlite3.connect(data_dir(tmp_path) / DB_NAME, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        async with asyncio.timeout(5):
            await store.accept(
                message_id,
                make_envelope(),
                b"durable before indexed\r\n",
                state=MessageState.RECEIVED,
                origin=Origin.RELAY,
                expires_at=EXPIRES,
            )
        assert spool_file(tmp_path, message_id).exists()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    record = await store.load(message_id)  # runs after the insert, on the store's thread
    assert record is not None and record.state is MessageState.RECEIVED


async def test_when_accept_cancelled_then_row_and_file_agree(store: Store, tmp_path: Path) -> None:
    message_id = new_message_id()
    task = asyncio.create_task(
        store.accept(
            message_id,
            make_envelope(),
            b"cancel me\r\n" * 100_000,
            state=MessageState.RECEIVED,
            origin=Origin.RELAY,
            expires_at=EXPIRES,
        )
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):  # the shielded accept finishes on its own
        if await store.load(message_id) is not None:
            break
        await asyncio.sleep(0.01)
    assert (await store.load(message_id) is not None) == await has_content(store, message_id)
    if on_sqlite(store):
        assert await has_content(store, message_id) == spool_file(tmp_path, message_id).exists()


# -- message ids -----------------------------------------------------------------------


def test_when_10000_ids_then_all_unique_and_file_name_safe() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9A-F]{21}", message_id) for message_id in ids)


def test_when_ids_made_one_after_another_then_they_sort_by_time() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    # the time part never goes backwards; within one microsecond the random part decides
    prefixes = [message_id[:13] for message_id in ids]
    assert prefixes == sorted(prefixes)
    spaced = []
    for _ in range(20):
        spaced.append(new_message_id())
        time.sleep(0.002)
    assert spaced == sorted(spaced)


def test_when_id_made_then_time_part_is_now_in_microseconds() -> None:
    before = time.time_ns() // 1000
    message_id = new_message_id()
    after = time.time_ns() // 1000
    assert before <= int(message_id[:13], 16) <= after


async def test_when_delivered_then_sender_and_recipient_are_correspondents(store: Store) -> None:
    envelope = make_envelope(("Ok@A.example", "later@b.example", "gone@c.example"))
    message_id = await accept(store, envelope=envelope)
    assert await store.correspondents("worker@council.example", ["ok@a.example"]) == frozenset()
    assert await store.claim(message_id, "worker", 60)
    await store.record_attempt(
        message_id,
        [
            RecipientOutcome("Ok@A.example", RecipientState.DELIVERED, "250 ok"),
            RecipientOutcome("later@b.example", RecipientState.DEFERRED, "451 busy"),
            RecipientOutcome("gone@c.example", RecipientState.BOUNCED, "550 no"),
        ],
        MessageState.DEFERRED,
        500.0,
    )
    asked = ["OK@a.example", "later@b.example", "gone@c.example", "new@d.example"]
    assert await store.correspondents("Worker@Council.example", asked) == {"ok@a.example"}
    assert await store.correspondents("someone@council.example", asked) == frozenset()
    assert await store.correspondents("", asked) == frozenset()


async def test_when_null_sender_delivered_then_no_correspondent(store: Store) -> None:
    message_id = await accept(store, envelope=make_envelope(("a@b.example",), sender=""))
    assert await store.claim(message_id, "worker", 60)
    await store.record_attempt(
        message_id,
        [RecipientOutcome("a@b.example", RecipientState.DELIVERED, "250 ok")],
        MessageState.DELIVERED,
        None,
    )
    assert await store.correspondents("", ["a@b.example"]) == frozenset()


async def test_when_version_1_database_opened_then_upgraded_and_messages_kept(
    tmp_path: Path,
) -> None:
    folder = data_dir(tmp_path)
    folder.mkdir(mode=0o700)
    with sqlite3.connect(folder / DB_NAME) as db:
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO messages (id, state, origin, sender, client_address, client_name,"
            " smtputf8, body_8bit, tls, mail_options, size, received_at, updated_at, expires_at)"
            " VALUES ('old', 'delivered', 'relay', 's@x', '127.0.0.1', 'h', 0, 0, 0, '[]',"
            " 1, 1.0, 1.0, 2.0)"
        )
        db.execute("PRAGMA user_version = 1")
    opened = open_store("sqlite", folder)
    await opened.open()
    try:
        record = await opened.load("old")
        assert record is not None and record.state is MessageState.DELIVERED
        assert await opened.correspondents("s@x", ["a@b"]) == frozenset()
    finally:
        await opened.close()
    with sqlite3.connect(folder / DB_NAME) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"approvals", "audit", "correspondents", "review_clock"} <= tables
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 6


async def test_when_release_time_comes_then_delayed_recipients_become_pending(
    store: Store,
) -> None:
    envelope = make_envelope(("now@a.example", "later@b.example", "held@c.example"))
    message_id = await accept(store, envelope=envelope, state=MessageState.RECEIVED)
    await store.set_state(
        message_id,
        MessageState.HELD,
        recipient_states={
            "now@a.example": RecipientState.DELIVERED,
            "later@b.example": RecipientState.DELAYED,
            "held@c.example": RecipientState.HELD,
        },
        release_at=1000.0,
    )
    assert await store.release_due(999.0) == []
    assert await store.claim_due(2000.0, "worker", 60, limit=10) == []
    assert await store.release_due(1000.0) == [message_id]
    record = await store.load(message_id)
    assert record is not None
    assert record.state is MessageState.QUEUED and record.release_at is None
    assert {r.address: r.state for r in record.recipients}["later@b.example"] is (
        RecipientState.PENDING
    )
    assert {r.address: r.state for r in record.recipients}["held@c.example"] is (
        RecipientState.HELD
    )
    assert record.pending_recipients() == ("later@b.example",)
    assert await store.release_due(5000.0) == []  # released once
    assert await store.claim_due(5000.0, "worker", 60, limit=10) == [message_id]


async def test_when_message_is_being_delivered_then_its_delay_waits(store: Store) -> None:
    message_id = await accept(store, envelope=make_envelope(("a@b.example", "c@d.example")))
    await store.set_state(
        message_id,
        MessageState.DELIVERING,
        recipient_states={"c@d.example": RecipientState.DELAYED},
        lease=("worker", 10_000_000_000.0),
        release_at=1000.0,
    )
    assert await store.release_due(2000.0) == []
