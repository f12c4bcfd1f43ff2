"""SQLite (WAL) store with a spool folder: the default, nothing to install.

The spool files are the durable truth (see files.py); the database indexes
them and records what happened since. All database work happens on one
dedicated thread that owns the connection, so the event loop never waits on
SQLite. Changes are committed in groups: every change that arrives while a
commit is running goes into the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog

from smtpguard.envelope import Envelope
from smtpguard.spool.cipher import SpoolCipher
from smtpguard.spool.files import FILE_MODE, SpoolFolder, SpoolHeader, make_private_dir
from smtpguard.spool.model import (
    DELIVERABLE,
    GENESIS,
    UNFINISHED,
    Approval,
    AuditEntry,
    Instructions,
    MessageRecord,
    MessageState,
    Origin,
    QueueCounts,
    RecipientOutcome,
    RecipientRecord,
    RecipientState,
    audit_hash,
    message_state_of,
)
from smtpguard.spool.store import Enough, ReviewConflict, Store, initial_states

T = TypeVar("T")

log = structlog.get_logger("smtpguard.spool")

# How long an accepted message's row may wait to be written with its outcome.
_INDEX_DELAY = 0.5
# How long an audit entry may wait for another change to share its commit.
_AUDIT_DELAY = 0.05
# Remembered (sender, recipient) pairs; past this many the memory starts again.
_KNOWN_PAIRS_MAX = 200_000

_COUNTED = [s.value for s in MessageState if not s.finished]

# Each entry upgrades the schema by one version; PRAGMA user_version records
# how many have been applied. Never edit an entry once released: append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        origin TEXT NOT NULL,
        sender TEXT NOT NULL,
        client_address TEXT NOT NULL,
        client_name TEXT NOT NULL,
        smtputf8 INTEGER NOT NULL,
        body_8bit INTEGER NOT NULL,
        tls INTEGER NOT NULL,
        mail_options TEXT NOT NULL,
        size INTEGER NOT NULL,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_owner TEXT,
        lease_until REAL,
        verdict TEXT
    );
    CREATE INDEX messages_due ON messages (state, next_attempt_at);
    CREATE TABLE recipients (
        message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_reply TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (message_id, position)
    );
    """,
    """
    CREATE TABLE correspondents (
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        PRIMARY KEY (sender, recipient)
    ) WITHOUT ROWID;
    """,
    """
    ALTER TABLE messages ADD COLUMN release_at REAL;
    CREATE INDEX messages_release ON messages (release_at) WHERE release_at IS NOT NULL;
    """,
    """
    ALTER TABLE recipients ADD COLUMN instructions TEXT NOT NULL DEFAULT '{}';
    """,
    """
    ALTER TABLE messages ADD COLUMN review_until REAL;
    ALTER TABLE messages ADD COLUMN reminded_at REAL;
    CREATE INDEX messages_review ON messages (review_until) WHERE review_until IS NOT NULL;
    CREATE TABLE approvals (
        message_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        role TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (message_id, recipient, reviewer)
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        message_id TEXT,
        detail TEXT NOT NULL,
        prev TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_message ON audit (message_id) WHERE message_id IS NOT NULL;
    """,
    """
    CREATE TABLE review_clock (
        name TEXT PRIMARY KEY,
        at REAL NOT NULL
    );
    """,
)


# A message's row and its recipients' rows, waiting to be written.
_Rows = tuple[tuple[Any, ...], list[tuple[Any, ...]]]


@dataclass
class _Write:
    """One change waiting for the next group commit."""

    apply: Callable[[], Any]
    future: asyncio.Future[Any]
    finished_id: str | None = None  # its spool file is removed once the commit is done


class SQLiteStore(Store):
    def __init__(self, data_dir: Path, cipher: SpoolCipher | None = None) -> None:
        self.data_dir = data_dir
        self.db_path = data_dir / "smtpguard.db"
        self.spool = SpoolFolder(data_dir / "spool", cipher)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Write] = []
        self._pending_lock = threading.Lock()
        self._commit_due = False  # a commit is on its way to the store thread
        self._audit_timer: asyncio.TimerHandle | None = None
        # Accepted messages whose row is not written yet (loop thread only), and those
        # of them whose row is being written by itself.
        self._unindexed: dict[str, _Rows] = {}
        self._indexing: set[str] = set()
        self._index_failed: set[str] = set()  # rows whose write failed (reported once)
        # (sender, recipient) pairs known to have had a delivery: they only ever grow, so
        # a hit needs no trip to the store thread (which is busy with commits).
        self._known_pairs: set[tuple[str, str]] = set()

    # -- plumbing ---------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """A read on the store thread; it sees every message accepted before it,
        and every change asked for before it."""
        self._index_all()
        loop = asyncio.get_running_loop()
        self._commit_soon(loop)
        return await loop.run_in_executor(self._executor, partial(fn, *args))

    async def _write(
        self,
        fn: Callable[..., T],
        *args: Any,
        subject: str | None = None,
        finished_id: str | None = None,
    ) -> T:
        """Run `fn` inside the next group commit; return once that commit is done.

        Every change waiting when the store thread becomes free goes into one
        transaction. A change about one message (`subject`) that is not in the
        index yet carries the message's row with it; any other change first
        indexes every message accepted before it.
        """
        apply: Callable[[], Any] = partial(fn, *args)
        # Not popped: the rows stay here until a commit has written them, so a commit
        # that fails (a full disk) cannot leave a live message out of the index.
        rows = self._unindexed.get(subject) if subject is not None else None
        if rows is not None:
            apply = partial(_in_order, partial(self._insert, *rows), apply)
        elif subject is None:
            self._index_all()
        result: T = await self._enqueue(apply, finished_id)
        if subject is not None and rows is not None:
            self._indexed(subject, rows)
        return result

    def _enqueue(
        self, apply: Callable[[], Any], finished_id: str | None = None, *, wait: bool = False
    ) -> Any:
        """`wait`: the change does not ask for a commit of its own; it goes with the
        next one, or after _AUDIT_DELAY."""
        loop = asyncio.get_running_loop()
        write = _Write(apply, loop.create_future(), finished_id)
        with self._pending_lock:
            self._pending.append(write)
        if not wait:
            self._commit_soon(loop)
        elif self._audit_timer is None:
            self._audit_timer = loop.call_later(_AUDIT_DELAY, self._commit_soon, loop)
        return write.future

    def _commit_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand every change waiting to the store thread, unless a commit already will."""
        if self._audit_timer is not None:
            self._audit_timer.cancel()
            self._audit_timer = None
        with self._pending_lock:
            if not self._pending or self._commit_due:
                return
            self._commit_due = True
        loop.run_in_executor(self._executor, self._commit_pending, loop)

    def _index_later(self, message_id: str) -> None:
        if message_id in self._unindexed and message_id not in self._indexing:
            self._index(message_id, self._unindexed[message_id])

    def _index_all(self) -> list[asyncio.Future[Any]]:
        return [
            self._index(message_id, rows)
            for message_id, rows in list(self._unindexed.items())
            if message_id not in self._indexing
        ]

    def _index(self, message_id: str, rows: _Rows) -> asyncio.Future[Any]:
        self._indexing.add(message_id)
        index: asyncio.Future[Any] = self._enqueue(partial(self._insert, *rows))
        index.add_done_callback(partial(self._index_done, message_id, rows))
        return index

    def _index_done(self, message_id: str, rows: _Rows, index: asyncio.Future[Any]) -> None:
        self._indexing.discard(message_id)
        if index.cancelled():
            return
        error = index.exception()
        if error is None:
            self._indexed(message_id, rows)
        elif message_id not in self._index_failed:
            # Said once per message, not at every retry (each store read retries it: a
            # full disk made thousands of lines). The message is safe in its spool
            # file, and its row is written by a later commit.
            self._index_failed.add(message_id)
            log.error("store.index_failed", id=message_id, error=type(error).__name__)

    def _indexed(self, message_id: str, rows: _Rows) -> None:
        if self._unindexed.get(message_id) is rows:
            del self._unindexed[message_id]
        if message_id in self._index_failed:
            self._index_failed.discard(message_id)
            log.info("store.index_written", id=message_id)

    def _commit_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._commit_due = False
        if not batch:
            return
        results: list[tuple[Any, BaseException | None]] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if len(batch) == 1:
                    results.append((batch[0].apply(), None))  # fails the transaction alone
                else:
                    for write in batch:
                        # A savepoint per change: one bad change fails alone.
                        self._db.execute("SAVEPOINT change")
                        try:
                            results.append((write.apply(), None))
                        except Exception as exc:
                            self._db.execute("ROLLBACK TO change")
                            results.append((None, exc))
                        self._db.execute("RELEASE change")
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except BaseException as exc:
            results = [(None, exc)] * len(batch)
        for write, (value, error) in zip(batch, results, strict=True):
            if write.finished_id is not None and error is None:
                # After the commit: a crash in between leaves a spare file, never a
                # live message without its bytes. Finished mail is not kept.
                with contextlib.suppress(OSError):
                    self.spool.remove(write.finished_id)
            loop.call_soon_threadsafe(_settle, write.future, value, error)

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "store is not open"
        return self._conn

    def _open(self) -> None:
        make_private_dir(self.data_dir)
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{self.db_path}{suffix}")
            if path.exists():
                path.chmod(FILE_MODE)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a crash of the process, not a power cut.
        # What a power cut can lose is rebuilt from the spool files at start
        # (a message is then seen through again: at least once, never lost).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        self._conn = conn
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"store schema version {version} is newer than this smtpguard "
                f"({len(MIGRATIONS)}); upgrade smtpguard"
            )
        for number in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {number + 1}")
            self._db.execute("COMMIT")

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await asyncio.gather(*self._index_all(), return_exceptions=True)

        def _close() -> None:
            self.spool.close()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(_close)
        self._executor.shutdown(wait=True)

    # -- accepting --------------------------------------------------------

    async def accept(
        self,
        message_id: str,
        envelope: Envelope,
        content: bytes,
        *,
        state: MessageState,
        origin: Origin,
        expires_at: float,
        recipient_states: Sequence[RecipientState] | None = None,
        release_at: float | None = None,
        instructions: Sequence[Instructions] | None = None,
    ) -> None:
        states = initial_states(envelope, recipient_states)
        header = SpoolHeader(envelope, origin.value, expires_at)
        message_row, recipient_rows = _rows(
            message_id, header, len(content), state, states, release_at, instructions
        )
        # Shielded: once begun, an accept completes even if its caller goes away,
        # so the file and its row always end up agreeing.
        await asyncio.shield(self._accept(message_id, header, content, message_row, recipient_rows))

    async def _accept(
        self,
        message_id: str,
        header: SpoolHeader,
        content: bytes,
        message_row: tuple[Any, ...],
        recipient_rows: list[tuple[Any, ...]],
    ) -> None:
        # The durable step, in a worker thread: file and folder fsync'd. Many run
        # in parallel, so concurrent messages do not queue behind one another.
        await asyncio.to_thread(self.spool.write, message_id, header, content)
        self._index_soon(message_id, (message_row, recipient_rows))

    def _index_soon(self, message_id: str, rows: _Rows) -> None:
        # The file holds everything, so the index row can wait a moment: most
        # messages are delivered within it, and their row is then written once,
        # with the outcome, in the same commit (see _write).
        self._unindexed[message_id] = rows
        asyncio.get_running_loop().call_later(_INDEX_DELAY, self._index_later, message_id)

    # -- handing over (server.reading_process) ----------------------------

    async def keep(
        self, message_id: str, envelope: Envelope, content: bytes, *, expires_at: float
    ) -> SpoolHeader:
        """The durable half of `accept`, in an accepting process: the spool file alone.

        The reading process `adopt`s the message; its store alone writes rows, so
        the accepting processes never wait for the database's lock.
        """
        header = SpoolHeader(envelope, Origin.RELAY.value, expires_at)
        await asyncio.shield(asyncio.to_thread(self.spool.write, message_id, header, content))
        return header

    def adopt(self, message_id: str, header: SpoolHeader, size: int) -> None:
        """The other half, in the reading process: the row of a message another process
        kept, written as if this process had accepted it. (If this process dies first,
        recovery finds the file without a row and writes it then.)"""
        pending = [RecipientState.PENDING] * len(header.envelope.recipients)
        self._index_soon(
            message_id, _rows(message_id, header, size, MessageState.RECEIVED, pending)
        )

    def _insert(self, message_row: tuple[Any, ...], recipient_rows: list[tuple[Any, ...]]) -> None:
        self._db.execute(
            # OR IGNORE: a row already written (by a commit whose success was not seen
            # yet) is never overwritten by its state at the time it was accepted.
            "INSERT OR IGNORE INTO messages (id, state, origin, sender, client_address,"
            " client_name, smtputf8, body_8bit, tls, mail_options, size, received_at,"
            " updated_at, expires_at, next_attempt_at, release_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            message_row,
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO recipients (message_id, position, address, state, updated_at,"
            " instructions) VALUES (?, ?, ?, ?, ?, ?)",
            recipient_rows,
        )

    # -- reading ----------------------------------------------------------

    def _record(self, row: sqlite3.Row) -> MessageRecord:
        recipients = tuple(
            RecipientRecord(
                address=r["address"],
                state=RecipientState(r["state"]),
                attempts=r["attempts"],
                last_reply=r["last_reply"],
                instructions=Instructions.from_json(r["instructions"]),
            )
            for r in self._db.execute(
                "SELECT * FROM recipients WHERE message_id = ? ORDER BY position", (row["id"],)
            )
        )
        envelope = Envelope(
            sender=row["sender"],
            recipients=tuple(r.address for r in recipients),
            client_address=row["client_address"],
            client_name=row["client_name"],
            received_at=row["received_at"],
            smtputf8=bool(row["smtputf8"]),
            body_8bit=bool(row["body_8bit"]),
            tls=bool(row["tls"]),
            mail_options=tuple(json.loads(row["mail_options"])),
        )
        return MessageRecord(
            id=row["id"],
            state=MessageState(row["state"]),
            envelope=envelope,
            size=row["size"],
            origin=Origin(row["origin"]),
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            expires_at=row["expires_at"],
            updated_at=row["updated_at"],
            recipients=recipients,
            release_at=row["release_at"],
            review_until=row["review_until"],
        )

    def _load(self, message_id: str) -> MessageRecord | None:
        row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return self._record(row) if row else None

    def _correspondents(self, sender: str, recipients: Sequence[str]) -> frozenset[str]:
        marks = ",".join("?" * len(recipients))
        rows = self._db.execute(
            f"SELECT recipient FROM correspondents WHERE sender = ? AND recipient IN ({marks})",  # noqa: S608
            (sender, *recipients),
        ).fetchall()
        return frozenset(row["recipient"] for row in rows)

    async def correspondents(self, sender: str, recipients: Sequence[str]) -> frozenset[str]:
        if not sender or not recipients:
            return frozenset()
        sender = sender.lower()
        lowered = sorted({r.lower() for r in recipients})
        known = frozenset(r for r in lowered if (sender, r) in self._known_pairs)
        if len(known) == len(lowered):
            return known
        # Not through _run: this read needs no message index, so it forces no index write.
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(
            self._executor, partial(self._correspondents, sender, lowered)
        )
        self._remember_pairs(sender, found)
        return found

    def _remember_pairs(self, sender: str, recipients: Iterable[str]) -> None:
        if len(self._known_pairs) > _KNOWN_PAIRS_MAX:
            self._known_pairs.clear()
        self._known_pairs.update((sender, r) for r in recipients)

    async def load(self, message_id: str) -> MessageRecord | None:
        return await self._run(self._load, message_id)

    async def content(self, message_id: str) -> bytes:
        return await asyncio.to_thread(self.spool.read, message_id)

    def _messages(self, states: Sequence[MessageState], limit: int) -> list[MessageRecord]:
        marks = ",".join("?" * len(states))
        rows = self._db.execute(
            f"SELECT * FROM messages WHERE state IN ({marks}) ORDER BY received_at LIMIT ?",  # noqa: S608
            [*(s.value for s in states), limit],
        ).fetchall()
        return [self._record(row) for row in rows]

    async def messages(
        self, states: Sequence[MessageState], limit: int = 1000
    ) -> list[MessageRecord]:
        return await self._run(self._messages, states, limit)

    def _counts(self) -> QueueCounts:
        # Finished messages are history; counting them would scan the whole table.
        marks = ",".join("?" * len(_COUNTED))
        rows = self._db.execute(
            f"SELECT state, count(*) FROM messages WHERE state IN ({marks}) GROUP BY state",  # noqa: S608
            _COUNTED,
        )
        return QueueCounts({MessageState(state): n for state, n in rows})

    async def counts(self) -> QueueCounts:
        return await self._run(self._counts)

    def _recipient_activity(self, since: float) -> dict[RecipientState, int]:
        rows = self._db.execute(
            "SELECT r.state, count(*) FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE r.updated_at >= ? AND m.origin = ? GROUP BY r.state",
            (since, Origin.RELAY.value),
        )
        return {RecipientState(state): n for state, n in rows}

    async def recipient_activity(self, since: float) -> dict[RecipientState, int] | None:
        # No index on updated_at: a scan of the recipients table, fine for a command.
        return await self._run(self._recipient_activity, since)

    def free_disk_bytes(self) -> int:
        return self.spool.free_bytes()

    # -- changing state ---------------------------------------------------
    # Each _name function runs inside a group commit (see _write).

    def _set_state(
        self,
        message_id: str,
        state: MessageState,
        recipient_states: dict[str, RecipientState] | None,
        next_attempt_at: float | None,
        lease: tuple[str, float] | None,
        release_at: float | None,
        instructions: dict[str, Instructions] | None = None,
    ) -> None:
        now = time.time()
        if next_attempt_at is None and state in DELIVERABLE:
            next_attempt_at = now  # otherwise no queue check would ever find it
        owner, until = lease if lease else (None, None)
        self._db.execute(
            "UPDATE messages SET state = ?, updated_at = ?, next_attempt_at = ?,"
            " lease_owner = ?, lease_until = ?, release_at = ? WHERE id = ?",
            (state.value, now, next_attempt_at, owner, until, release_at, message_id),
        )

        self._db.executemany(
            "UPDATE recipients SET state = ?, updated_at = ? WHERE message_id = ? AND address = ?",
            [(r.value, now, message_id, a) for a, r in (recipient_states or {}).items()],
        )
        self._db.executemany(
            "UPDATE recipients SET instructions = ? WHERE message_id = ? AND address = ?",
            [(told.to_json(), message_id, a) for a, told in (instructions or {}).items()],
        )

    async def set_state(
        self,
        message_id: str,
        state: MessageState,
        *,
        recipient_states: dict[str, RecipientState] | None = None,
        next_attempt_at: float | None = None,
        lease: tuple[str, float] | None = None,
        release_at: float | None = None,
        instructions: dict[str, Instructions] | None = None,
    ) -> None:
        await self._write(
            self._set_state,
            message_id,
            state,
            recipient_states,
            next_attempt_at,
            lease,
            release_at,
            instructions,
            subject=message_id,
            finished_id=message_id if state.finished else None,
        )

    def _release_due(self, now: float) -> list[str]:
        # Not while a delivery has it: that attempt's outcome would put it back on hold.
        rows = self._db.execute(
            "SELECT id, state FROM messages WHERE release_at IS NOT NULL AND release_at <= ?"
            " AND state IN (?, ?, ?, ?)",
            (now, *(s.value for s in (*DELIVERABLE, MessageState.HELD))),
        ).fetchall()
        released = []
        for row in rows:
            self._db.execute(
                "UPDATE recipients SET state = ?, updated_at = ?"
                " WHERE message_id = ? AND state = ?",
                (RecipientState.PENDING.value, now, row["id"], RecipientState.DELAYED.value),
            )
            state = MessageState(row["state"])
            if state is MessageState.HELD:
                state = MessageState.QUEUED  # deliverable; held recipients stay held
            self._db.execute(
                "UPDATE messages SET state = ?, release_at = NULL, updated_at = ?,"
                " next_attempt_at = CASE WHEN ? THEN ? ELSE next_attempt_at END WHERE id = ?",
                (state.value, now, state is MessageState.QUEUED, now, row["id"]),
            )
            released.append(row["id"])
        return released

    async def release_due(self, now: float) -> list[str]:
        return await self._write(self._release_due, now)

    def _claim(self, message_id: str, owner: str, lease_seconds: float) -> bool:
        now = time.time()
        marks = ",".join("?" * len(DELIVERABLE))
        cursor = self._db.execute(
            f"UPDATE messages SET state = ?, lease_owner = ?, lease_until = ?, updated_at = ?"  # noqa: S608
            f" WHERE id = ? AND state IN ({marks})",
            (
                MessageState.DELIVERING.value,
                owner,
                now + lease_seconds,
                now,
                message_id,
                *(s.value for s in DELIVERABLE),
            ),
        )
        return cursor.rowcount == 1

    async def claim(self, message_id: str, owner: str, lease_seconds: float) -> bool:
        return await self._write(self._claim, message_id, owner, lease_seconds, subject=message_id)

    def _claim_due(self, now: float, owner: str, lease_seconds: float, limit: int) -> list[str]:
        marks = ",".join("?" * len(DELIVERABLE))
        rows = self._db.execute(
            f"UPDATE messages SET state = ?, lease_owner = ?, lease_until = ?, updated_at = ?"  # noqa: S608
            f" WHERE id IN (SELECT id FROM messages WHERE state IN ({marks})"
            f" AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?) RETURNING id",
            (
                MessageState.DELIVERING.value,
                owner,
                now + lease_seconds,
                now,
                *(s.value for s in DELIVERABLE),
                now,
                limit,
            ),
        ).fetchall()
        return [row[0] for row in rows]

    async def claim_due(
        self, now: float, owner: str, lease_seconds: float, limit: int
    ) -> list[str]:
        return await self._write(self._claim_due, now, owner, lease_seconds, limit)

    def _record_attempt(
        self,
        message_id: str,
        outcomes: Sequence[RecipientOutcome],
        state: MessageState,
        next_attempt_at: float | None,
    ) -> str | None:
        now = time.time()
        self._db.executemany(
            "UPDATE recipients SET state = ?, attempts = attempts + 1, last_reply = ?,"
            " updated_at = ? WHERE message_id = ? AND address = ?",
            [(o.state.value, o.reply, now, message_id, o.address) for o in outcomes],
        )
        if state is MessageState.HELD:
            # A reviewer may have released, refused or recalled a held copy while this
            # attempt delivered the others: the message goes on from where they are now.
            state = message_state_of(self._recipient_states(message_id))
            if state is MessageState.QUEUED:
                next_attempt_at = now
        self._db.execute(
            "UPDATE messages SET state = ?, attempts = attempts + 1, next_attempt_at = ?,"
            " updated_at = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
            (state.value, next_attempt_at, now, message_id),
        )
        delivered = [o.address.lower() for o in outcomes if o.state is RecipientState.DELIVERED]
        if delivered:
            row = self._db.execute(
                "SELECT sender FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is not None and row["sender"]:
                sender = row["sender"].lower()
                self._remember_pairs(sender, delivered)
                self._db.executemany(
                    "INSERT INTO correspondents (sender, recipient, first_at, last_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (sender, recipient)"
                    " DO UPDATE SET last_at = excluded.last_at",
                    [(sender, recipient, now, now) for recipient in delivered],
                )
        return message_id if state.finished else None

    def _recipient_states(self, message_id: str) -> list[RecipientState]:
        rows = self._db.execute("SELECT state FROM recipients WHERE message_id = ?", (message_id,))
        return [RecipientState(row[0]) for row in rows]

    async def record_attempt(
        self,
        message_id: str,
        outcomes: Sequence[RecipientOutcome],
        state: MessageState,
        next_attempt_at: float | None,
    ) -> None:
        finished = await self._write(
            self._record_attempt,
            message_id,
            outcomes,
            state,
            next_attempt_at,
            subject=message_id,
            finished_id=message_id if state.finished else None,
        )
        if finished and not state.finished:
            # Finished by a review meanwhile (see _record_attempt): its bytes go too.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.spool.remove, message_id)

    # -- review -----------------------------------------------------------

    def _record_review(self, message_id: str, review: str, review_until: float | None) -> None:
        self._db.execute(
            "UPDATE messages SET verdict = ?, review_until = ? WHERE id = ?",
            (review, review_until, message_id),
        )

    async def record_review(self, message_id: str, review: str, review_until: float | None) -> None:
        await self._write(self._record_review, message_id, review, review_until, subject=message_id)

    def _review_record(self, message_id: str) -> str | None:
        row = self._db.execute(
            "SELECT verdict FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        return row[0] if row else None

    async def review_record(self, message_id: str) -> str | None:
        return await self._run(self._review_record, message_id)

    def _approvals(self, message_id: str) -> list[Approval]:
        rows = self._db.execute(
            "SELECT recipient, reviewer, role, reason, at FROM approvals"
            " WHERE message_id = ? ORDER BY at, reviewer",
            (message_id,),
        )
        return [Approval(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def approvals(self, message_id: str) -> list[Approval]:
        return await self._run(self._approvals, message_id)

    def _held_states(self, message_id: str, recipients: Sequence[str]) -> dict[str, RecipientState]:
        rows = self._db.execute(
            "SELECT address, state FROM recipients WHERE message_id = ?", (message_id,)
        ).fetchall()
        if not rows:
            raise ReviewConflict(f"{message_id}: no such message")
        states = {row[0]: RecipientState(row[1]) for row in rows}
        unknown = [r for r in recipients if r not in states]
        if unknown:
            raise ReviewConflict(f"{message_id}: not a recipient: {', '.join(unknown)}")
        return states

    def _approve(
        self, message_id: str, approvals: Sequence[Approval], enough: Enough, lifetime: float
    ) -> tuple[str, ...]:
        now = time.time()
        wanted = list(dict.fromkeys(a.recipient for a in approvals))
        states = self._held_states(message_id, wanted)
        gone = [r for r in wanted if states[r] is not RecipientState.HELD]
        if gone:
            raise ReviewConflict(
                "; ".join(f"{r} is not held (it is {states[r].value})" for r in gone)
            )
        self._db.executemany(
            "INSERT INTO approvals (message_id, recipient, reviewer, role, reason, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(message_id, a.recipient, a.reviewer, a.role, a.reason, now) for a in approvals],
        )
        every = self._approvals(message_id)
        released = tuple(r for r in wanted if enough(r, [a for a in every if a.recipient == r]))
        if released:
            self._set_recipients(message_id, released, RecipientState.PENDING, now)
            # Not while a delivery has it: that attempt's own commit takes the copies up.
            self._db.execute(
                "UPDATE messages SET state = ?, next_attempt_at = ?, expires_at = ?,"
                " updated_at = ? WHERE id = ? AND state IN (?, ?)",
                (
                    MessageState.RELEASED.value,
                    now,
                    now + lifetime,
                    now,
                    message_id,
                    MessageState.HELD.value,
                    MessageState.DEFERRED.value,
                ),
            )
        return released

    async def approve(
        self, message_id: str, approvals: Sequence[Approval], enough: Enough, lifetime: float
    ) -> tuple[str, ...]:
        return await self._write(
            self._approve, message_id, approvals, enough, lifetime, subject=message_id
        )

    def _set_recipients(
        self, message_id: str, recipients: Sequence[str], state: RecipientState, now: float
    ) -> None:
        self._db.executemany(
            "UPDATE recipients SET state = ?, updated_at = ? WHERE message_id = ? AND address = ?",
            [(state.value, now, message_id, r) for r in recipients],
        )

    def _released_then_refused(self, limit: int) -> list[MessageRecord]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE state = ? AND id IN (SELECT message_id FROM approvals)"
            " ORDER BY received_at DESC LIMIT ?",
            (MessageState.BOUNCED.value, limit),
        ).fetchall()
        return [self._record(row) for row in rows]

    async def released_then_refused(self, limit: int = 1000) -> list[MessageRecord]:
        return await self._run(self._released_then_refused, limit)

    def _finish_held(
        self, message_id: str, recipients: Sequence[str], state: RecipientState, note: str
    ) -> MessageRecord:
        now = time.time()
        states = self._held_states(message_id, recipients)
        waiting = (RecipientState.HELD, RecipientState.DELAYED)
        gone = [r for r in recipients if states[r] not in waiting]
        if gone:
            raise ReviewConflict(
                "; ".join(f"{r} is not held (it is {states[r].value})" for r in gone)
            )
        self._set_recipients(message_id, recipients, state, now)
        self._db.executemany(
            "UPDATE recipients SET last_reply = ? WHERE message_id = ? AND address = ?",
            [(note, message_id, r) for r in recipients],
        )
        states.update((r, state) for r in recipients)
        after = message_state_of(states.values())
        if after is not MessageState.HELD:
            delayed = RecipientState.DELAYED in states.values()
            self._db.execute(
                "UPDATE messages SET state = ?, updated_at = ?,"
                " release_at = CASE WHEN ? THEN release_at ELSE NULL END"
                " WHERE id = ? AND state = ?",
                (after.value, now, delayed, message_id, MessageState.HELD.value),
            )
        record = self._load(message_id)
        assert record is not None
        return record

    async def finish_held(
        self, message_id: str, recipients: Sequence[str], state: RecipientState, note: str
    ) -> MessageRecord:
        record = await self._write(
            self._finish_held, message_id, recipients, state, note, subject=message_id
        )
        if record.state.finished:
            # After the commit, as for every finished message: its bytes are not kept.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.spool.remove, message_id)
        return record

    def _holds_due(self, now: float) -> list[MessageRecord]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE review_until IS NOT NULL AND review_until <= ?"
            " AND state IN (?, ?) ORDER BY review_until",
            (now, MessageState.HELD.value, MessageState.DEFERRED.value),
        ).fetchall()
        records = [self._record(row) for row in rows]
        return [r for r in records if r.addresses_in(RecipientState.HELD)]

    async def holds_due(self, now: float) -> list[MessageRecord]:
        return await self._run(self._holds_due, now)

    def _reminders_due(self, now: float, before: float) -> list[MessageRecord]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE review_until IS NOT NULL AND review_until <= ?"
            " AND review_until > ? AND reminded_at IS NULL AND state = ?",
            (now + before, now, MessageState.HELD.value),
        ).fetchall()
        records = [self._record(row) for row in rows]
        self._db.executemany(
            "UPDATE messages SET reminded_at = ? WHERE id = ?", [(now, r.id) for r in records]
        )
        return [r for r in records if r.addresses_in(RecipientState.HELD)]

    async def reminders_due(self, now: float, before: float) -> list[MessageRecord]:
        return await self._write(self._reminders_due, now, before)

    def _claim_digest(self, now: float, interval: float) -> float | None:
        row = self._db.execute("SELECT at FROM review_clock WHERE name = 'digest'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO review_clock (name, at) VALUES ('digest', ?)", (now,))
            return None
        if now - row[0] < interval:
            return None
        self._db.execute("UPDATE review_clock SET at = ? WHERE name = 'digest'", (now,))
        return float(row[0])

    async def claim_digest(self, now: float, interval: float) -> float | None:
        return await self._write(self._claim_digest, now, interval)

    def _append_audit(
        self, actor: str, action: str, message_id: str | None, detail: Mapping[str, Any]
    ) -> AuditEntry:
        count, prev = self._audit_head()
        seq = count + 1
        at = time.time()
        plain = json.loads(json.dumps(dict(detail)))  # stored and hashed exactly as read back
        digest = audit_hash(prev, seq, at, actor, action, message_id, plain)
        self._db.execute(
            "INSERT INTO audit (seq, at, actor, action, message_id, detail, prev, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, at, actor, action, message_id, json.dumps(plain, sort_keys=True), prev, digest),
        )
        return AuditEntry(seq, at, actor, action, message_id, plain, prev, digest)

    async def append_audit(
        self, actor: str, action: str, message_id: str | None, detail: Mapping[str, Any]
    ) -> AuditEntry:
        # Waits for the next commit (at most _AUDIT_DELAY), and forces no message row
        # out early: the relay writes an entry for every verdict, and with a commit of
        # its own that doubled the commits of a delivered message. A read still sees it.
        entry: AuditEntry = await self._enqueue(
            partial(self._append_audit, actor, action, message_id, detail), wait=True
        )
        return entry

    def _audit_head(self) -> tuple[int, str]:
        last = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (last[0], last[1]) if last else (0, GENESIS)

    async def audit_head(self) -> tuple[int, str]:
        return await self._run(self._audit_head)

    def _audit_entries(self, message_id: str | None) -> list[AuditEntry]:
        if message_id is None:
            rows = self._db.execute("SELECT * FROM audit ORDER BY seq")
        else:
            rows = self._db.execute(
                "SELECT * FROM audit WHERE message_id = ? ORDER BY seq", (message_id,)
            )
        return [
            AuditEntry(
                r["seq"],
                r["at"],
                r["actor"],
                r["action"],
                r["message_id"],
                json.loads(r["detail"]),
                r["prev"],
                r["hash"],
            )
            for r in rows
        ]

    async def audit_entries(self, message_id: str | None = None) -> list[AuditEntry]:
        return await self._run(self._audit_entries, message_id)

    def _release_claims(self) -> None:
        self._db.execute(
            "UPDATE messages SET state = ?, lease_owner = NULL, lease_until = NULL WHERE state = ?",
            (MessageState.QUEUED.value, MessageState.DELIVERING.value),
        )

    def _reconcile_spool(self) -> list[str]:
        """Spool files the index lost (a power cut) get rows again, to be scanned; files of
        finished messages (a crash between their last commit and the file's removal) go."""
        self.spool.remove_partial_writes()
        states = dict(self._db.execute("SELECT id, state FROM messages").fetchall())
        on_disk = set(self.spool.message_ids())
        spare = sorted(i for i in on_disk & states.keys() if MessageState(states[i]).finished)
        for message_id in spare:
            self.spool.remove(message_id)
        if spare:
            self.spool.sync()
            log.info("spool.finished_files_removed", count=len(spare))
        rebuilt = []
        for message_id in sorted(on_disk - states.keys()):
            try:
                header = self.spool.read_header(message_id)
            except (OSError, ValueError, KeyError) as exc:
                # Left in place, unindexed, for an administrator to look at.
                log.error("spool.unreadable", id=message_id, error=type(exc).__name__)
                continue
            origin = Origin(header.origin)
            state = MessageState.QUEUED if origin is Origin.NOTICE else MessageState.RECEIVED
            size = len(self.spool.read(message_id))
            pending = [RecipientState.PENDING] * len(header.envelope.recipients)
            row, recipient_rows = _rows(message_id, header, size, state, pending)
            self._db.execute("BEGIN IMMEDIATE")
            self._insert(row, recipient_rows)
            self._db.execute("COMMIT")
            rebuilt.append(message_id)
        return rebuilt

    def _unfinished(self) -> list[str]:
        marks = ",".join("?" * len(UNFINISHED))
        rows = self._db.execute(
            f"SELECT id FROM messages WHERE state IN ({marks}) ORDER BY received_at",  # noqa: S608
            [s.value for s in UNFINISHED],
        )
        return [row[0] for row in rows]

    async def recover(self) -> list[str]:
        # One process owns a SQLite store, so at start every claim is stale.
        await self._write(self._release_claims)
        await self._run(self._reconcile_spool)
        return await self._run(self._unfinished)

    def _retry_now(self, now: float) -> int:
        cursor = self._db.execute(
            "UPDATE messages SET next_attempt_at = ? WHERE state = ?",
            (now, MessageState.DEFERRED.value),
        )
        return cursor.rowcount

    async def retry_now(self, now: float) -> int:
        return await self._write(self._retry_now, now)


def read_correspondents(data_dir: Path, sender: str, recipients: Sequence[str]) -> frozenset[str]:
    """For `smtpguard scan`: the store's recipient history, read-only, if there is a store.

    A dry run must not change anything, so the database is opened read-only
    and a missing or older one simply means no history.
    """
    path = data_dir / "smtpguard.db"
    if not sender or not recipients or not path.is_file():
        return frozenset()
    lowered = sorted({r.lower() for r in recipients})
    marks = ",".join("?" * len(lowered))
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute(
                f"SELECT recipient FROM correspondents WHERE sender = ? AND recipient IN ({marks})",  # noqa: S608
                (sender.lower(), *lowered),
            ).fetchall()
    except sqlite3.Error:
        return frozenset()
    return frozenset(row[0] for row in rows)


def _rows(
    message_id: str,
    header: SpoolHeader,
    size: int,
    state: MessageState,
    recipient_states: Sequence[RecipientState],
    release_at: float | None = None,
    instructions: Sequence[Instructions] | None = None,
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The messages row and the recipients rows for a new message."""
    now = time.time()
    envelope = header.envelope
    message_row = (
        message_id,
        state.value,
        header.origin,
        envelope.sender,
        envelope.client_address,
        envelope.client_name,
        int(envelope.smtputf8),
        int(envelope.body_8bit),
        int(envelope.tls),
        json.dumps(list(envelope.mail_options)),
        size,
        envelope.received_at,
        now,
        header.expires_at,
        now,
        release_at,
    )
    how = instructions or [Instructions()] * len(envelope.recipients)
    recipient_rows = [
        (message_id, position, address, rstate.value, now, told.to_json())
        for position, (address, rstate, told) in enumerate(
            zip(envelope.recipients, recipient_states, how, strict=True)
        )
    ]
    return message_row, recipient_rows


def _in_order(*steps: Callable[[], Any]) -> Any:
    result = None
    for step in steps:
        result = step()
    return result


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
