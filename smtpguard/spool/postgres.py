"""PostgreSQL store: several relay instances, on several machines, share one database.

With more than one instance a spool folder on one machine cannot be the
durable truth, so the message bytes live in the database too (table
`contents`, a `bytea`, sealed with the spool cipher when one is configured).
`accept` returns only after the INSERT has committed with synchronous_commit
on: the 250 is answered once the message is in PostgreSQL's WAL on disk.

Work is shared through leases. `claim_due` takes due messages with
`FOR UPDATE SKIP LOCKED`, so two instances never take the same one, and also
takes messages left in DELIVERING by an instance whose lease ran out (it died
mid-delivery). A message that was received but not yet scanned carries a scan
lease for its receiving instance; `recover` (at start) only takes up received
messages whose scan lease is free, this process's own, or run out, so one
instance never rescans what another has just received. Lease times are this
host's clock: keep the instances' clocks in sync (NTP).

If an instance dies after the upstream accepted a message and before its
outcome was committed, another instance delivers it again once the lease runs
out: at least once, never lost.

The schema is versioned in table `schema_version`; migrations run in one
transaction under an advisory lock, so instances starting together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog

from smtpguard.envelope import Envelope
from smtpguard.spool.cipher import SpoolCipher, unseal
from smtpguard.spool.files import make_private_dir
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

log = structlog.get_logger("smtpguard.spool")

# A received message is this instance's to scan for this long; then any instance
# that starts may take it up. As long as the delivery queue's lease (act/queue.py).
SCAN_LEASE_SECONDS = 600.0
# Transaction-level advisory lock keys (any two fixed numbers this database's other
# users do not take): one for migrations, one that serialises audit appends.
_MIGRATE_LOCK = 0x534D_5450_4701
_AUDIT_LOCK = 0x534D_5450_4702
# Sealing or unsealing more than this is done in a thread, off the event loop.
_SEAL_IN_THREAD = 256 * 1024
_KNOWN_PAIRS_MAX = 200_000

_DELIVERABLE = [s.value for s in DELIVERABLE]
_UNFINISHED = [s.value for s in UNFINISHED]
_COUNTED = [s.value for s in MessageState if not s.finished]
_DELIVERING = MessageState.DELIVERING.value
_RECEIVED = MessageState.RECEIVED.value

# Each entry upgrades the schema by one version; `schema_version` records which
# have been applied. Never edit an entry once released: append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id text PRIMARY KEY,
        state text NOT NULL,
        origin text NOT NULL,
        sender text NOT NULL,
        client_address text NOT NULL,
        client_name text NOT NULL,
        smtputf8 boolean NOT NULL,
        body_8bit boolean NOT NULL,
        tls boolean NOT NULL,
        mail_options text NOT NULL,
        size bigint NOT NULL,
        received_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at double precision,
        lease_owner text,
        lease_until double precision,
        verdict text,
        release_at double precision,
        review_until double precision,
        reminded_at double precision
    );
    CREATE INDEX messages_due ON messages (state, next_attempt_at);
    CREATE INDEX messages_leases ON messages (lease_until) WHERE lease_owner IS NOT NULL;
    CREATE INDEX messages_release ON messages (release_at) WHERE release_at IS NOT NULL;
    CREATE INDEX messages_review ON messages (review_until) WHERE review_until IS NOT NULL;
    CREATE TABLE contents (
        message_id text PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
        key_id text,
        data bytea NOT NULL
    );
    CREATE TABLE recipients (
        message_id text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        position integer NOT NULL,
        address text NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        last_reply text NOT NULL DEFAULT '',
        updated_at double precision NOT NULL,
        instructions text NOT NULL DEFAULT '{}',
        PRIMARY KEY (message_id, position)
    );
    CREATE TABLE correspondents (
        sender text NOT NULL,
        recipient text NOT NULL,
        first_at double precision NOT NULL,
        last_at double precision NOT NULL,
        PRIMARY KEY (sender, recipient)
    );
    CREATE TABLE approvals (
        message_id text NOT NULL,
        recipient text NOT NULL,
        reviewer text NOT NULL,
        role text NOT NULL,
        reason text NOT NULL,
        at double precision NOT NULL,
        PRIMARY KEY (message_id, recipient, reviewer)
    );
    CREATE TABLE audit (
        seq bigint PRIMARY KEY,
        at double precision NOT NULL,
        actor text NOT NULL,
        action text NOT NULL,
        message_id text,
        detail text NOT NULL,
        prev text NOT NULL,
        hash text NOT NULL
    );
    CREATE INDEX audit_message ON audit (message_id) WHERE message_id IS NOT NULL;
    """,
    """
    CREATE TABLE review_clock (
        name text PRIMARY KEY,
        at double precision NOT NULL
    );
    """,
)


def default_owner() -> str:
    """The owner string of this process's delivery queue (`DeliveryQueue.owner`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "(unparseable DSN)"
    if parts.scheme not in ("postgres", "postgresql"):
        return "(a key=value DSN)"  # may hold password=...: say nothing of it
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class PostgresStore(Store):
    """The Store interface on PostgreSQL (asyncpg, a connection pool).

    `data_dir` is this instance's own folder (only its free space is reported);
    `owner` is the lease owner whose claims `recover` may release, by default
    this process's delivery queue's.
    """

    def __init__(
        self,
        data_dir: Path,
        dsn: str,
        cipher: SpoolCipher | None = None,
        *,
        owner: str | None = None,
        pool_size: int = 10,
    ) -> None:
        self.data_dir = data_dir
        self.dsn = dsn
        self.cipher = cipher
        self.owner = owner or default_owner()
        self.pool_size = pool_size
        self._pool: Any = None
        self._known_pairs: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"PostgresStore({safe_dsn(self.dsn)!r}, owner={self.owner!r})"

    # -- plumbing ---------------------------------------------------------

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def open(self) -> None:
        make_private_dir(self.data_dir)
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                # A commit must be on disk before accept returns, whatever the server's default.
                server_settings={"synchronous_commit": "on", "application_name": "smtpguard"},
            )
        except Exception as exc:
            # The error names host and user, never the password; the DSN is shown without it.
            log.error("store.connect_failed", dsn=safe_dsn(self.dsn), error=type(exc).__name__)
            raise
        try:
            async with self.pool.acquire() as conn:
                await _migrate(conn)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(10):
                await pool.close()
        except TimeoutError:
            pool.terminate()

    def free_disk_bytes(self) -> int:
        # The bytes are in PostgreSQL; the database server watches its own disk.
        # This instance's own folder (logs, its data_dir) is what is checked here.
        stats = os.statvfs(self.data_dir)
        return stats.f_bavail * stats.f_frsize

    async def _seal(self, message_id: str, content: bytes) -> tuple[str | None, bytes]:
        if self.cipher is None:
            return None, content
        cipher = self.cipher

        def seal() -> bytes:
            return b"".join(cipher.seal(message_id, content))

        sealed = await asyncio.to_thread(seal) if len(content) > _SEAL_IN_THREAD else seal()
        return cipher.key_id, sealed

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
        how = instructions or [Instructions()] * len(envelope.recipients)
        key_id, data = await self._seal(message_id, content)
        now = time.time()
        # A received message is scanned by this instance: leased to it, so that
        # another instance's `recover` leaves it alone while the lease lasts.
        scanning = state is MessageState.RECEIVED
        args = (
            message_id,
            state.value,
            origin.value,
            envelope.sender,
            envelope.client_address,
            envelope.client_name,
            envelope.smtputf8,
            envelope.body_8bit,
            envelope.tls,
            json.dumps(list(envelope.mail_options)),
            len(content),
            envelope.received_at,
            now,
            expires_at,
            now,
            release_at,
            self.owner if scanning else None,
            now + SCAN_LEASE_SECONDS if scanning else None,
            key_id,
            data,
            list(envelope.recipients),
            [s.value for s in states],
            [told.to_json() for told in how],
        )
        # Shielded: once sent, the INSERT completes (or fails) as a whole even if the
        # caller goes away. One statement, so one commit: the row, its recipients and
        # its bytes are durable together.
        await asyncio.shield(self._insert(args))

    async def _insert(self, args: tuple[Any, ...]) -> None:
        try:
            await self.pool.execute(_INSERT_MESSAGE, *args)
        except asyncpg.UniqueViolationError:
            raise FileExistsError(f"message {args[0]} is already stored") from None

    # -- reading ----------------------------------------------------------

    async def load(self, message_id: str) -> MessageRecord | None:
        async with self.pool.acquire() as conn:
            return await _load(conn, message_id)

    async def content(self, message_id: str) -> bytes:
        row = await self.pool.fetchrow(
            "SELECT key_id, data FROM contents WHERE message_id = $1", message_id
        )
        if row is None:
            # As a spool file that is not there: finished (its bytes are not kept) or unknown.
            raise FileNotFoundError(f"no content stored for message {message_id}")
        data = bytes(row["data"])
        if row["key_id"] is None:
            return data
        cipher = self.cipher
        if len(data) > _SEAL_IN_THREAD:
            return await asyncio.to_thread(unseal, cipher, message_id, data)
        return unseal(cipher, message_id, data)

    async def correspondents(self, sender: str, recipients: Sequence[str]) -> frozenset[str]:
        if not sender or not recipients:
            return frozenset()
        sender = sender.lower()
        lowered = sorted({r.lower() for r in recipients})
        known = frozenset(r for r in lowered if (sender, r) in self._known_pairs)
        if len(known) == len(lowered):
            return known
        rows = await self.pool.fetch(
            "SELECT recipient FROM correspondents WHERE sender = $1 AND recipient = ANY($2)",
            sender,
            lowered,
        )
        found = frozenset(str(row["recipient"]) for row in rows)
        self._remember_pairs(sender, found)
        return found

    def _remember_pairs(self, sender: str, recipients: Iterable[str]) -> None:
        # Pairs only ever grow, in every instance, so a remembered one stays true.
        if len(self._known_pairs) > _KNOWN_PAIRS_MAX:
            self._known_pairs.clear()
        self._known_pairs.update((sender, r) for r in recipients)

    async def messages(
        self, states: Sequence[MessageState], limit: int = 1000
    ) -> list[MessageRecord]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM messages WHERE state = ANY($1) ORDER BY received_at LIMIT $2",
                [s.value for s in states],
                limit,
            )
            return await _records(conn, rows)

    async def counts(self) -> QueueCounts:
        # Finished messages are history; counting them would scan the whole table.
        rows = await self.pool.fetch(
            "SELECT state, count(*) AS n FROM messages WHERE state = ANY($1) GROUP BY state",
            _COUNTED,
        )
        return QueueCounts({MessageState(row["state"]): int(row["n"]) for row in rows})

    async def recipient_activity(self, since: float) -> dict[RecipientState, int] | None:
        rows = await self.pool.fetch(
            "SELECT r.state, count(*) AS n FROM recipients r"
            " JOIN messages m ON m.id = r.message_id"
            " WHERE r.updated_at >= $1 AND m.origin = $2 GROUP BY r.state",
            since,
            Origin.RELAY.value,
        )
        return {RecipientState(row["state"]): int(row["n"]) for row in rows}

    # -- changing state ---------------------------------------------------

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
        now = time.time()
        if next_attempt_at is None and state in DELIVERABLE:
            next_attempt_at = now  # otherwise no queue check would ever find it
        owner, until = lease if lease else (None, None)
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE messages SET state = $2, updated_at = $3, next_attempt_at = $4,"
                " lease_owner = $5, lease_until = $6, release_at = $7 WHERE id = $1",
                message_id,
                state.value,
                now,
                next_attempt_at,
                owner,
                until,
                release_at,
            )
            if recipient_states:
                await _set_recipient_states(
                    conn, message_id, {a: s.value for a, s in recipient_states.items()}, now
                )
            if instructions:
                await conn.execute(
                    "UPDATE recipients r SET instructions = u.told"
                    " FROM unnest($2::text[], $3::text[]) AS u(address, told)"
                    " WHERE r.message_id = $1 AND r.address = u.address",
                    message_id,
                    list(instructions),
                    [told.to_json() for told in instructions.values()],
                )
            if state.finished:
                # In the same commit: finished mail is not kept.
                await conn.execute("DELETE FROM contents WHERE message_id = $1", message_id)

    async def claim(self, message_id: str, owner: str, lease_seconds: float) -> bool:
        now = time.time()
        # A message left DELIVERING by an instance whose lease ran out may be taken too.
        status = await self.pool.execute(
            "UPDATE messages SET state = $2, lease_owner = $3, lease_until = $4, updated_at = $5"
            " WHERE id = $1 AND (state = ANY($6) OR (state = $2 AND lease_until < $5))",
            message_id,
            _DELIVERING,
            owner,
            now + lease_seconds,
            now,
            _DELIVERABLE,
        )
        return _row_count(status) == 1

    async def claim_due(
        self, now: float, owner: str, lease_seconds: float, limit: int
    ) -> list[str]:
        # SKIP LOCKED: rows another instance is claiming right now are left to it, and
        # a row it has claimed is DELIVERING under a live lease, so it is not taken twice.
        rows = await self.pool.fetch(
            "UPDATE messages SET state = $1, lease_owner = $2, lease_until = $3, updated_at = $4"
            " WHERE id IN (SELECT id FROM messages"
            "  WHERE (state = ANY($5) AND next_attempt_at <= $4)"
            "   OR (state = $1 AND lease_until < $4)"
            "  ORDER BY next_attempt_at LIMIT $6 FOR UPDATE SKIP LOCKED)"
            " RETURNING id",
            _DELIVERING,
            owner,
            now + lease_seconds,
            now,
            _DELIVERABLE,
            limit,
        )
        return [str(row["id"]) for row in rows]

    async def record_attempt(
        self,
        message_id: str,
        outcomes: Sequence[RecipientOutcome],
        state: MessageState,
        next_attempt_at: float | None,
    ) -> None:
        now = time.time()
        async with self._transaction() as conn:
            # The message row first, as every review change does: they wait for each other.
            sender = await conn.fetchval(
                "SELECT sender FROM messages WHERE id = $1 FOR UPDATE", message_id
            )
            if outcomes:
                await conn.execute(
                    "UPDATE recipients r SET state = u.state, attempts = r.attempts + 1,"
                    " last_reply = u.reply, updated_at = $2"
                    " FROM unnest($3::text[], $4::text[], $5::text[]) AS u(address, state, reply)"
                    " WHERE r.message_id = $1 AND r.address = u.address",
                    message_id,
                    now,
                    [o.address for o in outcomes],
                    [o.state.value for o in outcomes],
                    [o.reply for o in outcomes],
                )
            if state is MessageState.HELD:
                # A reviewer may have released, refused or recalled a held copy while this
                # attempt delivered the others: the message goes on from where they are now.
                state = message_state_of(await _recipient_states(conn, message_id))
                if state is MessageState.QUEUED:
                    next_attempt_at = now
            await conn.execute(
                "UPDATE messages SET state = $2, attempts = attempts + 1, next_attempt_at = $3,"
                " updated_at = $4, lease_owner = NULL, lease_until = NULL WHERE id = $1",
                message_id,
                state.value,
                next_attempt_at,
                now,
            )
            delivered = sorted(
                {o.address.lower() for o in outcomes if o.state is RecipientState.DELIVERED}
            )
            if delivered and sender:
                # Sorted, so two instances recording the same pairs take their locks in order.
                await conn.execute(
                    "INSERT INTO correspondents (sender, recipient, first_at, last_at)"
                    " SELECT $1, r, $3, $3 FROM unnest($2::text[]) AS r"
                    " ON CONFLICT (sender, recipient) DO UPDATE SET last_at = excluded.last_at",
                    sender.lower(),
                    delivered,
                    now,
                )
            if state.finished:
                await conn.execute("DELETE FROM contents WHERE message_id = $1", message_id)
        if delivered and sender:
            self._remember_pairs(sender.lower(), delivered)

    async def release_due(self, now: float) -> list[str]:
        # Not while a delivery has it: that attempt's outcome would put it back on hold.
        # Rows another instance is releasing (or a reviewer is changing) are skipped: the
        # next poll finds them if they still need it.
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "SELECT id, state FROM messages WHERE release_at IS NOT NULL"
                " AND release_at <= $1 AND state = ANY($2) ORDER BY id FOR UPDATE SKIP LOCKED",
                now,
                [*_DELIVERABLE, MessageState.HELD.value],
            )
            released = []
            for row in rows:
                message_id = str(row["id"])
                await conn.execute(
                    "UPDATE recipients SET state = $3, updated_at = $2"
                    " WHERE message_id = $1 AND state = $4",
                    message_id,
                    now,
                    RecipientState.PENDING.value,
                    RecipientState.DELAYED.value,
                )
                state = MessageState(row["state"])
                if state is MessageState.HELD:
                    state = MessageState.QUEUED  # deliverable; held recipients stay held
                await conn.execute(
                    "UPDATE messages SET state = $2, release_at = NULL, updated_at = $3,"
                    " next_attempt_at = CASE WHEN $4 THEN $3 ELSE next_attempt_at END"
                    " WHERE id = $1",
                    message_id,
                    state.value,
                    now,
                    state is MessageState.QUEUED,
                )
                released.append(message_id)
            return released

    async def recover(self) -> list[str]:
        """Release this process's own and run-out claims; return the unfinished messages
        this instance may take up (not those another live instance holds a lease on).

        Unlike SQLite, other instances run on: their live leases are left alone.
        Received messages nobody is scanning are taken for scanning by this instance.
        """
        now = time.time()
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE messages SET state = $1, lease_owner = NULL, lease_until = NULL"
                " WHERE state = $2 AND (lease_owner IS NULL OR lease_owner = $3"
                " OR lease_until < $4)",
                MessageState.QUEUED.value,
                _DELIVERING,
                self.owner,
                now,
            )
            await conn.execute(
                "UPDATE messages SET lease_owner = $2, lease_until = $3"
                " WHERE state = $1 AND (lease_owner IS NULL OR lease_owner = $2"
                " OR lease_until < $4)",
                _RECEIVED,
                self.owner,
                now + SCAN_LEASE_SECONDS,
                now,
            )
            rows = await conn.fetch(
                "SELECT id FROM messages WHERE state = ANY($1)"
                " AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < $3)"
                " ORDER BY received_at",
                _UNFINISHED,
                self.owner,
                now,
            )
        return [str(row["id"]) for row in rows]

    async def retry_now(self, now: float) -> int:
        status = await self.pool.execute(
            "UPDATE messages SET next_attempt_at = $1 WHERE state = $2",
            now,
            MessageState.DEFERRED.value,
        )
        return _row_count(status)

    # -- review -----------------------------------------------------------

    async def record_review(self, message_id: str, review: str, review_until: float | None) -> None:
        await self.pool.execute(
            "UPDATE messages SET verdict = $2, review_until = $3 WHERE id = $1",
            message_id,
            review,
            review_until,
        )

    async def review_record(self, message_id: str) -> str | None:
        value = await self.pool.fetchval("SELECT verdict FROM messages WHERE id = $1", message_id)
        return None if value is None else str(value)

    async def approvals(self, message_id: str) -> list[Approval]:
        async with self.pool.acquire() as conn:
            return await _approvals(conn, message_id)

    async def approve(
        self, message_id: str, approvals: Sequence[Approval], enough: Enough, lifetime: float
    ) -> tuple[str, ...]:
        now = time.time()
        wanted = list(dict.fromkeys(a.recipient for a in approvals))
        async with self._transaction() as conn:
            # Locked first: two reviewers approving at once see each other's approval.
            await conn.execute("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", message_id)
            states = await _held_states(conn, message_id, wanted)
            gone = [r for r in wanted if states[r] is not RecipientState.HELD]
            if gone:
                raise ReviewConflict(
                    "; ".join(f"{r} is not held (it is {states[r].value})" for r in gone)
                )
            await conn.executemany(
                "INSERT INTO approvals (message_id, recipient, reviewer, role, reason, at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                [(message_id, a.recipient, a.reviewer, a.role, a.reason, now) for a in approvals],
            )
            every = await _approvals(conn, message_id)
            released = tuple(r for r in wanted if enough(r, [a for a in every if a.recipient == r]))
            if released:
                await _set_recipient_states(
                    conn, message_id, dict.fromkeys(released, RecipientState.PENDING.value), now
                )
                # Not while a delivery has it: that attempt's own commit takes the copies up.
                await conn.execute(
                    "UPDATE messages SET state = $2, next_attempt_at = $3, expires_at = $4,"
                    " updated_at = $3 WHERE id = $1 AND state = ANY($5)",
                    message_id,
                    MessageState.RELEASED.value,
                    now,
                    now + lifetime,
                    [MessageState.HELD.value, MessageState.DEFERRED.value],
                )
            return released

    async def released_then_refused(self, limit: int = 1000) -> list[MessageRecord]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM messages WHERE state = $1"
                " AND id IN (SELECT message_id FROM approvals)"
                " ORDER BY received_at DESC LIMIT $2",
                MessageState.BOUNCED.value,
                limit,
            )
            return await _records(conn, rows)

    async def finish_held(
        self, message_id: str, recipients: Sequence[str], state: RecipientState, note: str
    ) -> MessageRecord:
        now = time.time()
        async with self._transaction() as conn:
            await conn.execute("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", message_id)
            states = await _held_states(conn, message_id, recipients)
            waiting = (RecipientState.HELD, RecipientState.DELAYED)
            gone = [r for r in recipients if states[r] not in waiting]
            if gone:
                raise ReviewConflict(
                    "; ".join(f"{r} is not held (it is {states[r].value})" for r in gone)
                )
            await conn.execute(
                "UPDATE recipients SET state = $2, updated_at = $3, last_reply = $4"
                " WHERE message_id = $1 AND address = ANY($5)",
                message_id,
                state.value,
                now,
                note,
                list(recipients),
            )
            states.update((r, state) for r in recipients)
            after = message_state_of(states.values())
            if after is not MessageState.HELD:
                delayed = RecipientState.DELAYED in states.values()
                await conn.execute(
                    "UPDATE messages SET state = $2, updated_at = $3,"
                    " release_at = CASE WHEN $4 THEN release_at ELSE NULL END"
                    " WHERE id = $1 AND state = $5",
                    message_id,
                    after.value,
                    now,
                    delayed,
                    MessageState.HELD.value,
                )
            record = await _load(conn, message_id)
            assert record is not None
            if record.state.finished:
                await conn.execute("DELETE FROM contents WHERE message_id = $1", message_id)
            return record

    async def holds_due(self, now: float) -> list[MessageRecord]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM messages WHERE review_until IS NOT NULL AND review_until <= $1"
                " AND state = ANY($2) ORDER BY review_until",
                now,
                [MessageState.HELD.value, MessageState.DEFERRED.value],
            )
            records = await _records(conn, rows)
        return [r for r in records if r.addresses_in(RecipientState.HELD)]

    async def reminders_due(self, now: float, before: float) -> list[MessageRecord]:
        async with self._transaction() as conn:
            # Marked in the same statement that finds them: of several instances, one reminds.
            rows = await conn.fetch(
                "UPDATE messages SET reminded_at = $1 WHERE review_until IS NOT NULL"
                " AND review_until <= $2 AND review_until > $1 AND reminded_at IS NULL"
                " AND state = $3 RETURNING *",
                now,
                now + before,
                MessageState.HELD.value,
            )
            records = await _records(conn, rows)
        return [r for r in records if r.addresses_in(RecipientState.HELD)]

    async def claim_digest(self, now: float, interval: float) -> float | None:
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO review_clock (name, at) VALUES ('digest', $1)"
                " ON CONFLICT (name) DO NOTHING",
                now,
            )
            # Locked to the commit: of several instances, one takes the window.
            since = float(
                await conn.fetchval("SELECT at FROM review_clock WHERE name = 'digest' FOR UPDATE")
            )
            if since >= now or now - since < interval:
                return None
            await conn.execute("UPDATE review_clock SET at = $1 WHERE name = 'digest'", now)
        return since

    async def append_audit(
        self, actor: str, action: str, message_id: str | None, detail: Mapping[str, Any]
    ) -> AuditEntry:
        plain = json.loads(json.dumps(dict(detail)))  # stored and hashed exactly as read back
        async with self._transaction() as conn:
            # Held to the commit: of every instance, one appends at a time, so no two
            # entries ever claim the same seq or the same predecessor.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _AUDIT_LOCK)
            count, prev = await _audit_head(conn)
            seq = count + 1
            at = time.time()
            digest = audit_hash(prev, seq, at, actor, action, message_id, plain)
            await conn.execute(
                "INSERT INTO audit (seq, at, actor, action, message_id, detail, prev, hash)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                seq,
                at,
                actor,
                action,
                message_id,
                json.dumps(plain, sort_keys=True),
                prev,
                digest,
            )
        return AuditEntry(seq, at, actor, action, message_id, plain, prev, digest)

    async def audit_head(self) -> tuple[int, str]:
        async with self.pool.acquire() as conn:
            return await _audit_head(conn)

    async def audit_entries(self, message_id: str | None = None) -> list[AuditEntry]:
        if message_id is None:
            rows = await self.pool.fetch("SELECT * FROM audit ORDER BY seq")
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM audit WHERE message_id = $1 ORDER BY seq", message_id
            )
        return [
            AuditEntry(
                int(r["seq"]),
                float(r["at"]),
                str(r["actor"]),
                str(r["action"]),
                r["message_id"],
                json.loads(r["detail"]),
                str(r["prev"]),
                str(r["hash"]),
            )
            for r in rows
        ]

    # -- key rotation -----------------------------------------------------

    async def rekey(self, batch: int = 100) -> Rekeying:
        """Seal every stored message that is plain or under an old key under the current key.

        For `smtpguard spool rekey` while the relays run: a batch at a time, each row
        rewritten in place under its row lock; rows a relay is changing at that moment
        are skipped (and counted as remaining).
        """
        cipher = self.cipher
        if cipher is None:
            raise ValueError("no spool key configured to rekey under")
        done = Rekeying()
        after = ""
        while True:
            async with self._transaction() as conn:
                rows = await conn.fetch(
                    "SELECT message_id, key_id, data FROM contents"
                    " WHERE message_id > $1 AND key_id IS DISTINCT FROM $2"
                    " ORDER BY message_id LIMIT $3 FOR UPDATE SKIP LOCKED",
                    after,
                    cipher.key_id,
                    batch,
                )
                for row in rows:
                    message_id = after = str(row["message_id"])
                    data = bytes(row["data"])
                    try:
                        plain = data if row["key_id"] is None else unseal(cipher, message_id, data)
                    except ValueError as exc:  # SpoolKeyError, SpoolDecryptError: ids only
                        done.failed.append(f"{message_id}: {exc}")
                        continue
                    _, sealed = await self._seal(message_id, plain)
                    await conn.execute(
                        "UPDATE contents SET key_id = $2, data = $3 WHERE message_id = $1",
                        message_id,
                        cipher.key_id,
                        sealed,
                    )
                    done.rewritten += 1
            if len(rows) < batch:
                break
        counts = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE key_id = $1) AS current,"
            " count(*) FILTER (WHERE key_id IS DISTINCT FROM $1) AS remaining FROM contents",
            cipher.key_id,
        )
        done.current = int(counts["current"]) - done.rewritten
        done.remaining = int(counts["remaining"])
        return done


@dataclass
class Rekeying:
    """What `PostgresStore.rekey` did: counts, and failures by message id (never content)."""

    rewritten: int = 0
    current: int = 0  # already under the current key
    remaining: int = 0  # still plain or under another key afterwards
    failed: list[str] = field(default_factory=list)


# One statement: the message, its bytes and its recipients commit together.
_INSERT_MESSAGE = """
WITH m AS (
    INSERT INTO messages (id, state, origin, sender, client_address, client_name, smtputf8,
        body_8bit, tls, mail_options, size, received_at, updated_at, expires_at,
        next_attempt_at, release_at, lease_owner, lease_until)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
    RETURNING id
), c AS (
    INSERT INTO contents (message_id, key_id, data) SELECT id, $19, $20 FROM m
)
INSERT INTO recipients (message_id, position, address, state, updated_at, instructions)
SELECT m.id, u.position - 1, u.address, u.state, $13, u.told
FROM m, unnest($21::text[], $22::text[], $23::text[])
    WITH ORDINALITY AS u(address, state, told, position)
"""


async def _migrate(conn: Any) -> None:
    """Bring the schema up to date, or refuse a newer one; once, whoever starts first."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"store schema version {version} is newer than this smtpguard "
                f"({len(MIGRATIONS)}); upgrade smtpguard"
            )
        for number in range(version, len(MIGRATIONS)):
            await conn.execute(MIGRATIONS[number])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number + 1)
            log.info("store.migrated", backend="postgresql", version=number + 1)


def _row_count(status: str) -> int:
    """The row count from a command status such as 'UPDATE 3'."""
    return int(status.rsplit(" ", 1)[-1])


async def _load(conn: Any, message_id: str) -> MessageRecord | None:
    row = await conn.fetchrow("SELECT * FROM messages WHERE id = $1", message_id)
    if row is None:
        return None
    [record] = await _records(conn, [row])
    return record


async def _records(conn: Any, rows: Sequence[Any]) -> list[MessageRecord]:
    """Message rows as records, with every message's recipients read in one query."""
    if not rows:
        return []
    recipient_rows = await conn.fetch(
        "SELECT * FROM recipients WHERE message_id = ANY($1) ORDER BY message_id, position",
        [row["id"] for row in rows],
    )
    by_message: dict[str, list[RecipientRecord]] = {}
    for r in recipient_rows:
        by_message.setdefault(r["message_id"], []).append(
            RecipientRecord(
                address=r["address"],
                state=RecipientState(r["state"]),
                attempts=r["attempts"],
                last_reply=r["last_reply"],
                instructions=Instructions.from_json(r["instructions"]),
            )
        )
    return [_record(row, tuple(by_message.get(row["id"], ()))) for row in rows]


def _record(row: Any, recipients: tuple[RecipientRecord, ...]) -> MessageRecord:
    envelope = Envelope(
        sender=row["sender"],
        recipients=tuple(r.address for r in recipients),
        client_address=row["client_address"],
        client_name=row["client_name"],
        received_at=row["received_at"],
        smtputf8=row["smtputf8"],
        body_8bit=row["body_8bit"],
        tls=row["tls"],
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


async def _recipient_states(conn: Any, message_id: str) -> list[RecipientState]:
    rows = await conn.fetch("SELECT state FROM recipients WHERE message_id = $1", message_id)
    return [RecipientState(row["state"]) for row in rows]


async def _set_recipient_states(
    conn: Any, message_id: str, states: Mapping[str, str], now: float
) -> None:
    await conn.execute(
        "UPDATE recipients r SET state = u.state, updated_at = $2"
        " FROM unnest($3::text[], $4::text[]) AS u(address, state)"
        " WHERE r.message_id = $1 AND r.address = u.address",
        message_id,
        now,
        list(states),
        list(states.values()),
    )


async def _held_states(
    conn: Any, message_id: str, recipients: Sequence[str]
) -> dict[str, RecipientState]:
    rows = await conn.fetch(
        "SELECT address, state FROM recipients WHERE message_id = $1 ORDER BY position",
        message_id,
    )
    if not rows:
        raise ReviewConflict(f"{message_id}: no such message")
    states = {str(row["address"]): RecipientState(row["state"]) for row in rows}
    unknown = [r for r in recipients if r not in states]
    if unknown:
        raise ReviewConflict(f"{message_id}: not a recipient: {', '.join(unknown)}")
    return states


async def _approvals(conn: Any, message_id: str) -> list[Approval]:
    rows = await conn.fetch(
        "SELECT recipient, reviewer, role, reason, at FROM approvals"
        " WHERE message_id = $1 ORDER BY at, reviewer",
        message_id,
    )
    return [Approval(r[0], r[1], r[2], r[3], r[4]) for r in rows]


async def _audit_head(conn: Any) -> tuple[int, str]:
    last = await conn.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    return (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS)
