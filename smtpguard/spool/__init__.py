"""Spool and store: where a message lives from the 250 until it is finished."""

from pathlib import Path

from smtpguard.spool.model import (
    DELIVERABLE,
    UNFINISHED,
    Instructions,
    MessageRecord,
    MessageState,
    Origin,
    QueueCounts,
    RecipientOutcome,
    RecipientRecord,
    RecipientState,
)
from smtpguard.spool.sqlite import SQLiteStore
from smtpguard.spool.store import Store, new_message_id

__all__ = [
    "DELIVERABLE",
    "UNFINISHED",
    "Instructions",
    "MessageRecord",
    "MessageState",
    "Origin",
    "QueueCounts",
    "RecipientOutcome",
    "RecipientRecord",
    "RecipientState",
    "SQLiteStore",
    "Store",
    "new_message_id",
    "open_store",
]


def open_store(backend: str, data_dir: Path) -> Store:
    """The store named in config; callers never construct a backend directly."""
    if backend == "sqlite":
        return SQLiteStore(data_dir)
    raise ValueError(f"unknown store backend {backend!r}")
