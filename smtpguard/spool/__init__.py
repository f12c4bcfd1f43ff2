"""Spool and store: where a message lives from the 250 until it is finished."""

from pathlib import Path

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
    "open_store",
]


def open_store(backend: str, data_dir: Path, cipher: SpoolCipher | None = None) -> Store:
    """The store named in config; callers never construct a backend directly.

    `cipher` (from `spool_cipher(config.store)`) encrypts new spool files at rest.
    """
    if backend == "sqlite":
        return SQLiteStore(data_dir, cipher)
    raise ValueError(f"unknown store backend {backend!r}")
