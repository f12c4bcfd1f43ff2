"""Checking the audit log: every entry chained to the one before it.

Each entry's hash covers its own fields and the previous entry's hash, so an
entry edited in place no longer matches its hash, a removed entry leaves a
gap in the sequence and a broken link, and an inserted one breaks the link
of the entry after it. Removing entries from the end leaves a shorter chain
that is still whole: the relay writes the newest hash to its own log at start
and stop, and `audit verify` prints it, so the two can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smtpguard.spool import GENESIS, AuditEntry, audit_hash


@dataclass(frozen=True)
class AuditReport:
    entries: int
    head: str  # hash of the last entry checked (GENESIS for an empty log)
    broken_at: int | None = None  # seq of the first entry that does not check
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify_chain(entries: Sequence[AuditEntry]) -> AuditReport:
    prev = GENESIS
    for count, entry in enumerate(entries, start=1):
        if entry.seq != count:
            return AuditReport(
                count - 1, prev, entry.seq, f"expected entry {count}, found entry {entry.seq}"
            )
        if entry.prev != prev:
            return AuditReport(
                count - 1,
                prev,
                entry.seq,
                "does not follow the entry before it (removed or inserted?)",
            )
        digest = audit_hash(
            entry.prev,
            entry.seq,
            entry.at,
            entry.actor,
            entry.action,
            entry.message_id,
            entry.detail,
        )
        if digest != entry.hash:
            return AuditReport(
                count - 1, prev, entry.seq, "its content was changed after it was written"
            )
        prev = entry.hash
    return AuditReport(len(entries), prev)
