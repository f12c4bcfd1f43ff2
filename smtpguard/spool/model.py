"""What the store records about a message and each of its recipients."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smtpguard.envelope import Envelope


class MessageState(enum.StrEnum):
    RECEIVED = "received"  # on disk, not yet scanned
    QUEUED = "queued"  # scanned, waiting for delivery
    DELIVERING = "delivering"  # claimed by a delivery task (leased)
    DEFERRED = "deferred"  # some recipient failed temporarily; retry later
    DELIVERED = "delivered"  # every recipient accepted upstream
    BOUNCED = "bounced"  # finished, at least one recipient refused permanently
    HELD = "held"  # waiting for a reviewer (or a delay)
    RELEASED = "released"  # a reviewer released it; goes on to delivery
    REJECTED = "rejected"  # refused by policy or a reviewer
    EXPIRED = "expired"  # lifetime ran out before delivery

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset(
    {MessageState.DELIVERED, MessageState.BOUNCED, MessageState.REJECTED, MessageState.EXPIRED}
)

# States a delivery task may pick up once they are due.
DELIVERABLE = (MessageState.QUEUED, MessageState.DEFERRED, MessageState.RELEASED)
# States that need work after a restart.
UNFINISHED = (
    MessageState.RECEIVED,
    MessageState.QUEUED,
    MessageState.DELIVERING,
    MessageState.DEFERRED,
    MessageState.RELEASED,
)


class RecipientState(enum.StrEnum):
    PENDING = "pending"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    HELD = "held"  # waits for a reviewer
    DELAYED = "delayed"  # delivered by itself at the message's release time, unless recalled
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self in (
            RecipientState.DELIVERED,
            RecipientState.BOUNCED,
            RecipientState.REJECTED,
            RecipientState.EXPIRED,
        )


class Origin(enum.StrEnum):
    RELAY = "relay"  # mail a client gave us
    NOTICE = "notice"  # mail smtpguard wrote itself (DSN, notices): never scanned


@dataclass(frozen=True)
class Instructions:
    """How one recipient's copy is delivered, as its verdict said; kept with the recipient
    so that a retry after a restart delivers it the same way."""

    route: str | None = None  # a named next hop instead of the upstream
    require_tls: bool = False  # only over verified TLS (or the configured TLS route)
    tag_rules: tuple[str, ...] = ()  # tag: the rules named in the X-Smtpguard-Tag header
    subject_prefix: str | None = None

    def to_json(self) -> str:
        data: dict[str, object] = {}
        if self.route:
            data["route"] = self.route
        if self.require_tls:
            data["require_tls"] = True
        if self.tag_rules:
            data["tag_rules"] = list(self.tag_rules)
        if self.subject_prefix:
            data["subject_prefix"] = self.subject_prefix
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Instructions:
        data = json.loads(text or "{}")
        return cls(
            route=data.get("route"),
            require_tls=bool(data.get("require_tls", False)),
            tag_rules=tuple(data.get("tag_rules", ())),
            subject_prefix=data.get("subject_prefix"),
        )


@dataclass(frozen=True)
class RecipientRecord:
    address: str
    state: RecipientState
    attempts: int = 0
    last_reply: str = ""
    instructions: Instructions = Instructions()


@dataclass(frozen=True)
class MessageRecord:
    id: str
    state: MessageState
    envelope: Envelope
    size: int
    origin: Origin
    attempts: int
    next_attempt_at: float | None
    expires_at: float
    updated_at: float
    recipients: tuple[RecipientRecord, ...]
    release_at: float | None = None  # when the delayed recipients are delivered
    review_until: float | None = None  # when a hold not yet reviewed expires

    def pending_recipients(self) -> tuple[str, ...]:
        return tuple(
            r.address
            for r in self.recipients
            if r.state in (RecipientState.PENDING, RecipientState.DEFERRED)
        )

    def addresses_in(self, *states: RecipientState) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.state in states)


def message_state_of(states: Iterable[RecipientState]) -> MessageState:
    """The message's state once no delivery is under way, from its recipients' states."""
    found = set(states)
    if RecipientState.PENDING in found:
        return MessageState.QUEUED
    if RecipientState.DEFERRED in found:
        return MessageState.DEFERRED
    if RecipientState.HELD in found or RecipientState.DELAYED in found:
        return MessageState.HELD
    if RecipientState.BOUNCED in found or RecipientState.EXPIRED in found:
        return MessageState.BOUNCED
    if RecipientState.DELIVERED in found:
        return MessageState.DELIVERED
    return MessageState.REJECTED


@dataclass(frozen=True)
class Approval:
    """One reviewer's release of one recipient's copy of a held message."""

    recipient: str
    reviewer: str  # the reviewer's login
    role: str  # "reviewer" or "approver", as the staff register said at the time
    reason: str
    at: float = 0.0


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log: who did what to which message; never content.

    `hash` chains each entry to the one before it (see `audit_hash`), so an
    entry edited, removed or inserted afterwards breaks the chain.
    """

    seq: int
    at: float
    actor: str  # "smtpguard" for the relay, else the reviewer's login
    action: str  # "verdict", "approve", "release", "reject", "recall", "expire", ...
    message_id: str | None
    detail: dict[str, Any]
    prev: str
    hash: str


GENESIS = "0" * 64


def audit_hash(
    prev: str, seq: int, at: float, actor: str, action: str, message_id: str | None, detail: Any
) -> str:
    body = json.dumps(
        [prev, seq, repr(at), actor, action, message_id, detail],
        sort_keys=True,
        ensure_ascii=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class RecipientOutcome:
    """What the upstream said about one recipient in one delivery attempt."""

    address: str
    state: RecipientState
    reply: str  # "250 2.0.0 ok" / "451 4.3.0 ..." / "connection refused"


@dataclass(frozen=True)
class QueueCounts:
    by_state: dict[MessageState, int]

    @property
    def active(self) -> int:
        return sum(n for state, n in self.by_state.items() if not state.finished)
