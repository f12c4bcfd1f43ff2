"""Spool and store: where a message lives from the 250 until it is finished."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from smtpguard.spool.cipher import SpoolCipher
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
from smtpguard.spool.sqlite import SQLiteStore
from smtpguard.spool.store import ReviewConflict, Store, new_message_id

if TYPE_CHECKING:
    from smtpguard.config.model import StoreConfig

__all__ = [
    "DELIVERABLE",
    "GENESIS",
    "UNFINISHED",
    "Approval",
    "AuditEntry",
    "Instructions",
    "MessageRecord",
    "MessageState",
    "Origin",
    "QueueCounts",
    "RecipientOutcome",
    "RecipientRecord",
    "RecipientState",
    "ReviewConflict",
    "SQLiteStore",
    "SpoolCipher",
    "Store",
    "audit_hash",
    "message_state_of",
    "new_message_id",
    "open_configured_store",
    "open_store",
]


def open_store(
    backend: str,
    data_dir: Path,
    cipher: SpoolCipher | None = None,
    *,
    dsn: str | None = None,
    owner: str | None = None,
) -> Store:
    """The store named in config; callers never construct a backend directly.

    `cipher` (from `spool_cipher(config.store)`) encrypts new spool files at rest
    (with PostgreSQL, the message bytes in the database). `dsn` is PostgreSQL's
    libpq URL; `owner` the lease owner whose claims a PostgreSQL `recover` may
    release (by default this process's delivery queue).
    """
    if backend == "sqlite":
        return SQLiteStore(data_dir, cipher)
    if backend == "postgresql":
        if not dsn:
            raise ValueError("the postgresql store backend needs a DSN (store.dsn or dsn_file)")
        from smtpguard.spool.postgres import PostgresStore

        return PostgresStore(data_dir, dsn, cipher, owner=owner)
    raise ValueError(f"unknown store backend {backend!r}")


def open_configured_store(store: StoreConfig, owner: str | None = None) -> Store:
    """The store `config.store` describes: its backend, cipher and (PostgreSQL) DSN.

    Reads the spool key files and the DSN file now: a new key or password takes
    effect when the store is opened again, as at a restart.
    """
    from smtpguard.spool.cipher import spool_cipher

    dsn = store.dsn
    if store.backend == "postgresql" and store.dsn_file is not None:
        dsn = store.dsn_file.read_text(encoding="utf-8").strip()
    return open_store(
        store.backend, store.data_dir, cipher=spool_cipher(store), dsn=dsn, owner=owner
    )
