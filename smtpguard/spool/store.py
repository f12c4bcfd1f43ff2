"""The store interface every backend implements.

Callers (the listener, the delivery queue, the CLI) see only this interface,
so a PostgreSQL backend can stand beside SQLite without touching them. Every
method is a coroutine: a backend must never block the event loop.
"""

from __future__ import annotations

import abc
import itertools
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from smtpguard.envelope import Envelope
from smtpguard.spool.model import (
    Approval,
    AuditEntry,
    Instructions,
    MessageRecord,
    MessageState,
    Origin,
    QueueCounts,
    RecipientOutcome,
    RecipientState,
)

_PROCESS_TAG = secrets.token_hex(2).upper()
_sequence = itertools.count()


def new_message_id() -> str:
    """Sortable by arrival, unique across processes and instances, safe in file names and logs.

    Microseconds, then a per-process counter and a per-process random tag, so two
    messages in the same microsecond, or from two relay processes, never collide.
    """
    return f"{time.time_ns() // 1000:013X}{next(_sequence) & 0xFFFF:04X}{_PROCESS_TAG}"


def initial_states(
    envelope: Envelope, recipient_states: Sequence[RecipientState] | None
) -> Sequence[RecipientState]:
    """The recipients' states a new message is stored with (all pending unless given)."""
    states = recipient_states or [RecipientState.PENDING] * len(envelope.recipients)
    if len(states) != len(envelope.recipients):
        raise ValueError("one recipient state per envelope recipient")
    return states


class ReviewConflict(Exception):
    """A review action that no longer applies: the copy is not held any more, or is gone."""


# Given a recipient and every approval of it so far: is that enough to release it?
Enough = Callable[[str, Sequence[Approval]], bool]


class Store(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
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
        """Make the message durable. Returns only once a crash can no longer lose it."""

    @abc.abstractmethod
    async def load(self, message_id: str) -> MessageRecord | None: ...

    @abc.abstractmethod
    async def content(self, message_id: str) -> bytes: ...

    @abc.abstractmethod
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
        """Move a message on; with `lease` (owner, until) it is also claimed for delivery;
        with `release_at`, its delayed recipients are delivered from that time.

        A message moved to a finished state loses its bytes: mail that is done
        with is not kept on the relay.
        """

    @abc.abstractmethod
    async def claim(self, message_id: str, owner: str, lease_seconds: float) -> bool:
        """Take one deliverable message for delivery; False if another task has it."""

    @abc.abstractmethod
    async def claim_due(
        self, now: float, owner: str, lease_seconds: float, limit: int
    ) -> list[str]:
        """Take up to `limit` deliverable messages whose next attempt is due."""

    @abc.abstractmethod
    async def record_attempt(
        self,
        message_id: str,
        outcomes: Sequence[RecipientOutcome],
        state: MessageState,
        next_attempt_at: float | None,
    ) -> None:
        """Store one delivery attempt's per-recipient outcomes and the new message state.

        As with set_state, a finished message's bytes are removed.
        """

    @abc.abstractmethod
    async def release_due(self, now: float) -> list[str]:
        """Delayed recipients whose time has come become pending; returns the message ids."""

    @abc.abstractmethod
    async def correspondents(self, sender: str, recipients: Sequence[str]) -> frozenset[str]:
        """Which of `recipients` (lower-cased) have had mail from `sender` delivered before.

        A delivery records the pair; it is what makes a recipient not `first_time`.
        """

    @abc.abstractmethod
    async def recover(self) -> list[str]:
        """After a restart: release stale claims; return every unfinished message id."""

    @abc.abstractmethod
    async def counts(self) -> QueueCounts: ...

    @abc.abstractmethod
    async def messages(
        self, states: Sequence[MessageState], limit: int = 1000
    ) -> list[MessageRecord]: ...

    @abc.abstractmethod
    async def retry_now(self, now: float) -> int:
        """Make every deferred message due now; returns how many."""

    async def recipient_activity(self, since: float) -> dict[RecipientState, int] | None:
        """Copies of relayed mail (not notices) by state, among those whose state last
        changed at or after `since`: for `smtpguard stats`. Read-only. None: this
        backend cannot tell (the default, so a backend need not implement it).
        """
        return None

    # -- review ---------------------------------------------------------------

    @abc.abstractmethod
    async def record_review(self, message_id: str, review: str, review_until: float | None) -> None:
        """Keep the verdict in reviewers' words (JSON) with a held message; its held copies
        wait for review until `review_until`."""

    @abc.abstractmethod
    async def review_record(self, message_id: str) -> str | None:
        """The verdict recorded for reviewers when the message was held (JSON)."""

    @abc.abstractmethod
    async def approvals(self, message_id: str) -> list[Approval]: ...

    @abc.abstractmethod
    async def approve(
        self, message_id: str, approvals: Sequence[Approval], enough: Enough, lifetime: float
    ) -> tuple[str, ...]:
        """Record approvals of held copies and release those that now have `enough`.

        One transaction, so two reviewers approving at once cannot both fall
        short. Released copies are delivered with a fresh `lifetime`. Raises
        ReviewConflict when a copy is not held (any more). Returns the released.
        """

    @abc.abstractmethod
    async def released_then_refused(self, limit: int = 1000) -> list[MessageRecord]:
        """Finished messages a reviewer released that the upstream then refused, newest first."""

    @abc.abstractmethod
    async def finish_held(
        self, message_id: str, recipients: Sequence[str], state: RecipientState, note: str
    ) -> MessageRecord:
        """Refuse, recall or expire held or delayed copies (to REJECTED); `note` says why,
        in each copy's last reply ("rejected by ...", "expired unreviewed").

        Raises ReviewConflict when a copy is not held or delayed (any more).
        Returns the message as it is afterwards.
        """

    @abc.abstractmethod
    async def holds_due(self, now: float) -> list[MessageRecord]:
        """Messages with copies still held whose review time has run out."""

    @abc.abstractmethod
    async def reminders_due(self, now: float, before: float) -> list[MessageRecord]:
        """Held messages whose review time ends within `before` seconds, not yet reminded;
        each is marked reminded as it is returned."""

    @abc.abstractmethod
    async def claim_digest(self, now: float, interval: float) -> float | None:
        """Take the reviewers' digest due at `now`: the time the last one covered up to
        (the window moves on to `now`), or None when that was under `interval` ago.

        Kept in the store, so a restart does not skip a window and, of several
        instances on one database, one sends each digest. The first call only opens
        the first window.
        """

    @abc.abstractmethod
    async def append_audit(
        self, actor: str, action: str, message_id: str | None, detail: Mapping[str, Any]
    ) -> AuditEntry:
        """Add one entry to the hash-chained audit log."""

    @abc.abstractmethod
    async def audit_head(self) -> tuple[int, str]:
        """How many audit entries there are and the newest one's hash."""

    @abc.abstractmethod
    async def audit_entries(self, message_id: str | None = None) -> list[AuditEntry]:
        """The audit log in order; with `message_id`, only that message's entries."""

    @abc.abstractmethod
    def free_disk_bytes(self) -> int:
        """Free space where message bytes are kept (a cheap, non-blocking syscall)."""
