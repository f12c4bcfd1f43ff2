"""What is PostgreSQL's own: migrations, several instances sharing work, bytes at rest.

Every test runs against a real PostgreSQL server (tests/pg.py) and a database
of its own. Several `PostgresStore` objects on one database stand for several
relay instances: separate connection pools, real row locks. A plain asyncpg
connection looks at the tables the way an administrator would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import yaml
from structlog.testing import capture_logs

from smtpguard.config import ConfigError, load_config
from smtpguard.review.audit import verify_chain
from smtpguard.spool import (
    MessageState,
    Origin,
    RecipientOutcome,
    RecipientState,
    open_configured_store,
)
from smtpguard.spool.cipher import (
    SpoolCipher,
    SpoolDecryptError,
    SpoolKeyError,
    create_spool_key,
)
from smtpguard.spool.postgres import MIGRATIONS, PostgresStore, safe_dsn
from tests.conftest import BASE_CONFIG, merged
from tests.spool.test_sqlite_store import accept, make_envelope

Opener = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def instances(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens store objects on the test's database, one per relay instance; closes them all."""
    opened: list[PostgresStore] = []

    async def open_instance(owner: str = "a", cipher: SpoolCipher | None = None) -> PostgresStore:
        store = PostgresStore(tmp_path / owner, pg_dsn, cipher, owner=owner)
        await store.open()
        opened.append(store)
        return store

    yield open_instance
    for store in opened:
        await store.close()


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


# -- migrations ------------------------------------------------------------------------


async def test_when_fresh_database_opened_then_every_migration_is_applied_once(
    instances: Opener, db: asyncpg.Connection
) -> None:
    await instances()
    versions = [r["version"] for r in await db.fetch("SELECT version FROM schema_version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    tables = {
        r["tablename"]
        for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    expected = {"messages", "recipients", "contents", "correspondents", "approvals", "audit"}
    assert expected | {"schema_version"} <= tables


async def test_when_reopened_then_migrations_not_run_again_and_messages_kept(
    pg_dsn: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    ids = []
    for _ in range(3):
        store = PostgresStore(tmp_path, pg_dsn)
        await store.open()  # a second CREATE TABLE would fail here
        ids.append(await accept(store, b"kept\r\n"))
        await store.close()
    store = PostgresStore(tmp_path, pg_dsn)
    await store.open()
    try:
        for message_id in ids:
            record = await store.load(message_id)
            assert record is not None and record.envelope == make_envelope()
            assert await store.content(message_id) == b"kept\r\n"
    finally:
        await store.close()
    assert await db.fetchval("SELECT count(*) FROM schema_version") == len(MIGRATIONS)


async def test_when_several_instances_start_at_once_then_the_schema_is_made_once(
    pg_dsn: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    stores = [PostgresStore(tmp_path / str(i), pg_dsn, owner=str(i)) for i in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    assert await db.fetchval("SELECT count(*) FROM schema_version") == len(MIGRATIONS)


async def test_when_schema_is_newer_than_this_version_then_open_refused(
    instances: Opener, pg_dsn: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    await instances()
    newer = len(MIGRATIONS) + 1
    await db.execute("INSERT INTO schema_version (version) VALUES ($1)", newer)
    again = PostgresStore(tmp_path, pg_dsn)
    with pytest.raises(RuntimeError, match=rf"version {newer} is newer.*upgrade smtpguard"):
        await again.open()
    await again.close()  # harmless after a refused open
    assert await db.fetchval("SELECT max(version) FROM schema_version") == newer


# -- several instances -------------------------------------------------------------------


async def _due(store: PostgresStore, n: int) -> set[str]:
    ids = set()
    for _ in range(n):
        message_id = await accept(store)
        await store.set_state(message_id, MessageState.QUEUED, next_attempt_at=1.0)
        ids.add(message_id)
    return ids


async def test_when_two_instances_claim_due_at_once_then_no_message_goes_to_both(
    instances: Opener,
) -> None:
    first, second = await instances("a"), await instances("b")
    due = await _due(first, 150)

    async def drain(store: PostgresStore, owner: str) -> list[str]:
        taken: list[str] = []
        while batch := await store.claim_due(time.time(), owner, 600, limit=7):
            taken += batch
        return taken

    # Two instances, each with three pollers, as fast as they can.
    results = await asyncio.gather(
        *(drain(store, store.owner) for store in (first, second) for _ in range(3))
    )
    claimed = [message_id for batch in results for message_id in batch]
    assert len(claimed) == len(set(claimed)) == len(due)
    assert set(claimed) == due
    by_a = {m for batch in results[:3] for m in batch}
    for message_id in due:
        record = await second.load(message_id)
        assert record is not None and record.state is MessageState.DELIVERING
    assert by_a and by_a != due  # both instances took a share


async def test_when_an_instance_dies_mid_delivery_then_another_takes_over_after_its_lease(
    instances: Opener,
) -> None:
    dead, alive = await instances("dead:1"), await instances("alive:2")
    due = await _due(dead, 5)
    assert set(await dead.claim_due(time.time(), "dead:1", 0.5, limit=10)) == due
    # While the lease lasts, nobody else may take the work.
    assert await alive.claim_due(time.time(), "alive:2", 600, limit=10) == []
    one = next(iter(due))
    assert await alive.claim(one, "alive:2", 600) is False
    await asyncio.sleep(0.6)
    assert await alive.claim(one, "alive:2", 600) is True
    taken = await alive.claim_due(time.time(), "alive:2", 600, limit=10)
    assert set(taken) == due - {one}
    await alive.record_attempt(
        one,
        [
            RecipientOutcome(r, RecipientState.DELIVERED, "250 ok")
            for r in make_envelope().recipients
        ],
        MessageState.DELIVERED,
        None,
    )
    record = await alive.load(one)
    assert record is not None and record.state is MessageState.DELIVERED and record.attempts == 1


async def test_when_recover_then_only_own_and_expired_claims_are_released(
    instances: Opener, db: asyncpg.Connection
) -> None:
    a, b = await instances("a"), await instances("b")
    live_a = await accept(a, envelope=make_envelope(received_at=1.0))
    assert await a.claim(live_a, "a", 3600)
    own_b = await accept(b, envelope=make_envelope(received_at=2.0))
    assert await b.claim(own_b, "b", 3600)
    expired_c = await accept(a, envelope=make_envelope(received_at=3.0))
    assert await a.claim(expired_c, "c", 0.01)
    scanning_a = await accept(
        a, envelope=make_envelope(received_at=4.0), state=MessageState.RECEIVED
    )
    scanning_b = await accept(
        b, envelope=make_envelope(received_at=5.0), state=MessageState.RECEIVED
    )
    queued = await accept(a, envelope=make_envelope(received_at=6.0))
    await accept(a, state=MessageState.HELD)
    await asyncio.sleep(0.05)

    unfinished = await b.recover()
    # a's live delivery and a's scan are a's: b neither releases nor rescans them.
    assert unfinished == [own_b, expired_c, scanning_b, queued]
    states = {
        r["id"]: (r["state"], r["lease_owner"])
        for r in await db.fetch("SELECT id, state, lease_owner FROM messages")
    }
    assert states[live_a] == ("delivering", "a")
    assert states[own_b] == ("queued", None)
    assert states[expired_c] == ("queued", None)
    assert states[scanning_a] == ("received", "a")
    assert states[scanning_b] == ("received", "b")
    assert await b.claim(live_a, "b", 60) is False

    # a dies; once its scan lease runs out, the next instance to start scans the message.
    await db.execute("UPDATE messages SET lease_until = 1 WHERE id = $1", scanning_a)
    c = await instances("c")
    assert scanning_a in await c.recover()
    assert await db.fetchval("SELECT lease_owner FROM messages WHERE id = $1", scanning_a) == "c"
    assert scanning_a not in await b.recover()


async def test_when_received_by_one_instance_then_it_is_at_once_visible_to_another(
    instances: Opener,
) -> None:
    # 250 is sent once the INSERT committed: no index delay, nothing kept in memory.
    first, second = await instances("a"), await instances("b")
    message_id = await accept(first, b"seen everywhere\r\n", state=MessageState.RECEIVED)
    record = await second.load(message_id)
    assert record is not None and record.state is MessageState.RECEIVED
    assert await second.content(message_id) == b"seen everywhere\r\n"


async def test_audit_appends_from_three_instances_form_one_unbroken_chain(
    instances: Opener, db: asyncpg.Connection
) -> None:
    stores = [await instances(owner) for owner in ("a", "b", "c")]
    await asyncio.gather(
        *(
            store.append_audit(store.owner, "verdict", f"m{n}", {"n": n})
            for n in range(30)
            for store in stores
        )
    )
    entries = await stores[0].audit_entries()
    assert [e.seq for e in entries] == list(range(1, 91))
    assert len({e.prev for e in entries}) == 90  # no two entries claim one predecessor
    report = verify_chain(entries)
    assert report.intact and report.entries == 90
    for store in stores:
        assert await store.audit_head() == (90, entries[-1].hash)
    assert await db.fetchval("SELECT count(DISTINCT seq) FROM audit") == 90


async def test_when_two_instances_remind_at_once_then_one_reminds(instances: Opener) -> None:
    first, second = await instances("a"), await instances("b")
    message_id = await accept(
        first, state=MessageState.HELD, recipient_states=[RecipientState.HELD] * 2
    )
    await first.record_review(message_id, "{}", time.time() + 100)
    now = time.time()
    results = await asyncio.gather(first.reminders_due(now, 200), second.reminders_due(now, 200))
    assert sorted(len(r) for r in results) == [0, 1]


# -- bytes at rest -----------------------------------------------------------------------

SECRET = b"Subject: Child protection conference\r\n\r\nNHS number 943 476 5919\r\n"


async def test_when_a_cipher_is_configured_then_content_is_encrypted_in_the_table(
    instances: Opener, db: asyncpg.Connection
) -> None:
    cipher = SpoolCipher(os.urandom(32))
    store = await instances("a", cipher)
    message_id = await accept(store, SECRET)
    row = await db.fetchrow("SELECT key_id, data FROM contents WHERE message_id = $1", message_id)
    assert row["key_id"] == cipher.key_id
    stored = bytes(row["data"])
    for text in (b"Child protection", b"943 476 5919", b"NHS number", b"Subject"):
        assert text not in stored
    assert await store.content(message_id) == SECRET
    record = await store.load(message_id)
    assert record is not None and record.size == len(SECRET)

    # Without the key, or under another, the bytes are refused, never served.
    plain_reader = await instances("b")
    with pytest.raises(SpoolKeyError, match=cipher.key_id):
        await plain_reader.content(message_id)
    other = await instances("c", SpoolCipher(os.urandom(32)))
    with pytest.raises(SpoolKeyError, match="not configured"):
        await other.content(message_id)
    # One message's sealed bytes can never be served as another's.
    second = await accept(store, b"another\r\n")
    await db.execute(
        "UPDATE contents SET data = $1 WHERE message_id = $2", bytes(row["data"]), second
    )
    with pytest.raises(SpoolDecryptError):
        await store.content(second)


async def test_when_no_cipher_then_content_is_kept_plain_and_still_read_after_one_is_set(
    instances: Opener, db: asyncpg.Connection
) -> None:
    plain = await instances("a")
    message_id = await accept(plain, SECRET)
    row = await db.fetchrow("SELECT key_id, data FROM contents WHERE message_id = $1", message_id)
    assert row["key_id"] is None and bytes(row["data"]) == SECRET
    encrypting = await instances("b", SpoolCipher(os.urandom(32)))
    assert await encrypting.content(message_id) == SECRET


async def test_when_large_encrypted_message_then_round_trips(instances: Opener) -> None:
    store = await instances("a", SpoolCipher(os.urandom(32)))
    content = b"line of a large attachment\r\n" * 200_000
    message_id = await accept(store, content)
    assert await store.content(message_id) == content


async def test_when_message_finishes_then_its_bytes_leave_the_database(
    instances: Opener, db: asyncpg.Connection
) -> None:
    store = await instances()
    message_id = await accept(store, SECRET)
    assert await store.claim(message_id, "a", 60)
    outcomes = [
        RecipientOutcome(r, RecipientState.DELIVERED, "250 ok") for r in make_envelope().recipients
    ]
    await store.record_attempt(message_id, outcomes, MessageState.DELIVERED, None)
    assert await db.fetchval("SELECT count(*) FROM contents") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 1


# -- configuration and secrets ----------------------------------------------------------


def test_safe_dsn_never_shows_the_password() -> None:
    assert (
        safe_dsn("postgresql://relay:s3cret@db.council.example:5433/smtpguard?sslmode=verify-full")
        == "postgresql://relay@db.council.example:5433/smtpguard"
    )
    assert "s3cret" not in safe_dsn("host=db password=s3cret")
    store = PostgresStore(Path("/nonexistent"), "postgresql://relay:s3cret@db/smtpguard")
    assert "s3cret" not in repr(store)


async def test_when_the_database_cannot_be_reached_then_open_fails_without_the_password(
    tmp_path: Path,
) -> None:
    store = PostgresStore(tmp_path, "postgresql://relay:s3cret-pw@127.0.0.1:1/smtpguard")
    with capture_logs() as logs, pytest.raises(OSError) as failed:
        await store.open()
    assert "s3cret-pw" not in str(failed.value)
    assert logs and "s3cret-pw" not in repr(logs)
    assert logs[0]["dsn"] == "postgresql://relay@127.0.0.1:1/smtpguard"


def _config(tmp_path: Path, store: dict[str, object]) -> Path:
    path = tmp_path / "smtpguard.yaml"
    changes = {"store": {**BASE_CONFIG["store"], **store}}
    path.write_text(yaml.safe_dump(merged(BASE_CONFIG, changes)), encoding="utf-8")
    return path


async def test_when_dsn_file_is_configured_then_it_is_read_relative_to_the_config(
    tmp_path: Path, pg_dsn: str
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "dsn").write_text(pg_dsn + "\n", encoding="utf-8")
    config = load_config(_config(tmp_path, {"backend": "postgresql", "dsn_file": "secrets/dsn"}))
    assert config.store.dsn_file == tmp_path / "secrets" / "dsn"
    assert "dsn=" not in repr(config.store)  # a DSN may hold a password: never printed
    store = open_configured_store(config.store)
    assert isinstance(store, PostgresStore) and store.dsn == pg_dsn
    await store.open()
    try:
        message_id = await accept(store)
        assert await store.load(message_id) is not None
    finally:
        await store.close()


@pytest.mark.parametrize(
    "store, problem",
    [
        ({"backend": "postgresql"}, "needs dsn"),
        ({"backend": "postgresql", "dsn": "postgresql:///x", "dsn_file": "f"}, "not both"),
        ({"backend": "postgresql", "dsn_file": "missing"}, "store.dsn_file: no such file"),
        ({"backend": "mysql"}, "store.backend"),
    ],
)
def test_when_store_config_is_incomplete_then_refused(
    tmp_path: Path, store: dict[str, object], problem: str
) -> None:
    (tmp_path / "f").write_text("postgresql:///x", encoding="utf-8")
    with pytest.raises(ConfigError, match=problem):
        load_config(_config(tmp_path, store))


# -- key rotation ------------------------------------------------------------------------


async def test_spool_rekey_moves_every_stored_message_to_the_new_key(
    instances: Opener, db: asyncpg.Connection, tmp_path: Path, pg_dsn: str
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    old_id, new_id = create_spool_key(keys / "old.key"), create_spool_key(keys / "new.key")
    plain = await accept(await instances("a"), SECRET)
    old = SpoolCipher.from_files(keys / "old.key")
    under_old = await accept(await instances("b", old), SECRET)
    unreadable = await accept(await instances("c", SpoolCipher(os.urandom(32))), SECRET)
    rotating = SpoolCipher.from_files(keys / "new.key", [keys / "old.key"])
    current = await accept(await instances("d", rotating), SECRET)
    path = _config(
        tmp_path,
        {
            "backend": "postgresql",
            "dsn": pg_dsn,
            "encryption": {"key_file": "keys/new.key", "old_key_files": ["keys/old.key"]},
        },
    )

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "smtpguard.cli", "spool", "rekey", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr  # one message is under a key not configured
    assert f"rewrote 2 stored messages under key {new_id}; 1 were already under it" in (
        result.stdout
    )
    assert f"1 stored messages are still not under key {new_id}" in result.stdout
    assert unreadable in result.stderr and old_id not in result.stderr
    assert "943 476" not in result.stdout + result.stderr
    rows = {
        r["message_id"]: (r["key_id"], bytes(r["data"]))
        for r in await db.fetch("SELECT message_id, key_id, data FROM contents")
    }
    for message_id in (plain, under_old, current):
        assert rows[message_id][0] == new_id and b"943 476" not in rows[message_id][1]
    reader = await instances("e", SpoolCipher.from_files(keys / "new.key"))
    for message_id in (plain, under_old, current):
        assert await reader.content(message_id) == SECRET


async def test_recipient_activity_counts_relayed_copies_by_state(instances: Opener) -> None:
    store = await instances()
    since = time.time()
    message_id = await accept(store)
    assert await store.claim(message_id, "a", 60)
    first, second = make_envelope().recipients
    await store.record_attempt(
        message_id,
        [
            RecipientOutcome(first, RecipientState.DELIVERED, "250 ok"),
            RecipientOutcome(second, RecipientState.DEFERRED, "451 later"),
        ],
        MessageState.DEFERRED,
        9e9,
    )
    await accept(store, origin=Origin.NOTICE)  # smtpguard's own mail is not counted
    assert await store.recipient_activity(since) == {
        RecipientState.DELIVERED: 1,
        RecipientState.DEFERRED: 1,
    }
    assert await store.recipient_activity(time.time() + 60) == {}
