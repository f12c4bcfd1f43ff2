"""The reviewer's operations on held mail, over the same store the relay uses.

Each operation checks who may do it, changes the store in one transaction,
writes an audit entry naming the reviewer, and queues the sender's notice as
a message of its own, which the running relay delivers at its next poll. The
relay and these commands share nothing but the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from smtpguard.act.notices import build_outcome_notice
from smtpguard.act.queue import store_notice
from smtpguard.config.model import Config
from smtpguard.inspect import read_message
from smtpguard.review.decisions import approvals_needed, check_approval, enough
from smtpguard.review.record import ReviewRecord
from smtpguard.review.reviewers import Reviewer, ReviewRefused
from smtpguard.spool import (
    Approval,
    AuditEntry,
    MessageRecord,
    MessageState,
    RecipientRecord,
    RecipientState,
    ReviewConflict,
    Store,
)

# Message states a reviewer may find held or delayed copies in.
_REVIEWABLE = (
    MessageState.HELD,
    MessageState.QUEUED,
    MessageState.DEFERRED,
    MessageState.DELIVERING,
    MessageState.RELEASED,
)
_WAITING = (RecipientState.HELD, RecipientState.DELAYED)
_OUTCOME_STATES = (
    RecipientState.DELIVERED,
    RecipientState.BOUNCED,
    RecipientState.DEFERRED,
    RecipientState.HELD,
    RecipientState.REJECTED,
    RecipientState.EXPIRED,
)


@dataclass(frozen=True)
class Held:
    """A message with copies waiting for review or for their delay to end."""

    record: MessageRecord
    review: ReviewRecord | None
    approvals: tuple[Approval, ...]

    def waiting(self) -> tuple[str, ...]:
        return self.record.addresses_in(*_WAITING)

    def failed(self) -> tuple[str, ...]:
        """Copies a reviewer released that the upstream then refused: never shown as done."""
        return tuple(
            a for a in self.record.addresses_in(RecipientState.BOUNCED) if self.approvals_of(a)
        )

    def approvals_of(self, recipient: str) -> tuple[Approval, ...]:
        return tuple(a for a in self.approvals if a.recipient == recipient)

    def needed(self, recipient: str) -> int:
        shown = self.review.recipients.get(recipient) if self.review else None
        return approvals_needed(shown)


@dataclass(frozen=True)
class HoldFilter:
    state: str | None = None  # "held", "delayed" or "failed" (released, then refused upstream)
    sender: str | None = None
    domain: str | None = None  # recipient domain
    rule: str | None = None
    older_than: float | None = None  # seconds since it arrived

    def admits(self, held: Held, now: float) -> bool:
        record = held.record
        if self.state == "held" and not record.addresses_in(RecipientState.HELD):
            return False
        if self.state == "delayed" and not record.addresses_in(RecipientState.DELAYED):
            return False
        if self.state == "failed" and not held.failed():
            return False
        if self.sender and record.envelope.sender.lower() != self.sender.lower():
            return False
        domain = (self.domain or "").lower().lstrip("@")
        if domain and not any(a.rpartition("@")[2].lower() == domain for a in held.waiting()):
            return False
        if self.rule and (held.review is None or self.rule not in held.review.rules()):
            return False
        return self.older_than is None or now - record.envelope.received_at >= self.older_than


@dataclass
class Approved:
    """What an approval did: recorded for these copies, released those that had enough."""

    approved: tuple[str, ...]
    released: tuple[str, ...]
    waiting: dict[str, str] = field(default_factory=dict)  # recipient -> what it still needs


class Quarantine:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config

    # -- reading ------------------------------------------------------------

    async def held(self, only: HoldFilter | None = None, limit: int = 10_000) -> list[Held]:
        records = await self.store.messages(_REVIEWABLE, limit)
        records += await self.store.released_then_refused(limit)
        now = time.time()
        found = []
        for record in records:
            bounced = record.addresses_in(RecipientState.BOUNCED)
            if not record.addresses_in(*_WAITING) and not bounced:
                continue
            held = await self._held(record)
            if not held.waiting() and not held.failed():
                continue
            if only is None or only.admits(held, now):
                found.append(held)
        return found

    async def get(self, message_id: str) -> Held:
        record = await self.store.load(message_id)
        if record is None:
            raise ReviewConflict(f"{message_id}: no such message")
        return await self._held(record)

    async def _held(self, record: MessageRecord) -> Held:
        text = await self.store.review_record(record.id)
        review = ReviewRecord.from_json(text) if text else None
        return Held(record, review, tuple(await self.store.approvals(record.id)))

    async def history(self, message_id: str) -> list[AuditEntry]:
        return await self.store.audit_entries(message_id)

    async def content(self, reviewer: Reviewer, message_id: str, purpose: str) -> bytes:
        """The held message itself: reading it is a reviewer action like any other."""
        held = await self.get(message_id)
        if held.record.state.finished:
            raise ReviewConflict(f"{message_id}: finished ({held.record.state.value}); not kept")
        content = await self.store.content(message_id)
        await self._audit(reviewer, purpose, message_id, {"bytes": len(content)})
        return content

    # -- deciding -----------------------------------------------------------

    async def release(
        self,
        reviewer: Reviewer,
        message_id: str,
        recipients: Sequence[str] | None,
        reason: str,
    ) -> Approved:
        check_reason(reason, self.config)
        held = await self.get(message_id)
        chosen = self._chosen(held, recipients, (RecipientState.HELD,), "held")
        review = held.review
        shown = {r: review.recipients.get(r) if review else None for r in chosen}
        for recipient in chosen:
            check_approval(
                reviewer,
                held.record.envelope.sender,
                recipient,
                shown[recipient],
                held.approvals_of(recipient),
            )
        approvals = [Approval(r, reviewer.login, reviewer.role, reason) for r in chosen]
        released = await self.store.approve(
            message_id,
            approvals,
            lambda recipient, so_far: enough(shown.get(recipient), so_far),
            self.config.delivery.lifetime,
        )
        await self._audit(
            reviewer,
            "approve",
            message_id,
            {"recipients": list(chosen), "released": list(released), "reason": reason},
        )
        after = await self.get(message_id)
        waiting = {r: _still_needs(after, r) for r in chosen if r not in released}
        if released:
            await self._tell_sender(held, "released", released, "")
        return Approved(tuple(chosen), released, waiting)

    async def delivery_outcome(
        self, message_id: str, recipients: Sequence[str], timeout: float
    ) -> dict[str, RecipientRecord]:
        """Wait until the relay has tried the released copies; their states, as far as known."""
        deadline = time.monotonic() + timeout
        while True:
            record = await self.store.load(message_id)
            if record is None:
                return {}
            states = {r.address: r for r in record.recipients if r.address in recipients}
            tried = all(
                r.state in _OUTCOME_STATES and (r.attempts > 0 or r.state is RecipientState.HELD)
                for r in states.values()
            )
            if tried or time.monotonic() >= deadline:
                return states
            await asyncio.sleep(0.2)

    async def reject(
        self, reviewer: Reviewer, message_id: str, recipients: Sequence[str] | None, reason: str
    ) -> tuple[str, ...]:
        return await self._refuse(
            reviewer, message_id, recipients, _WAITING, "reject", reason, tell="rejected"
        )

    async def recall(self, reviewer: Reviewer, message_id: str, reason: str) -> tuple[str, ...]:
        delayed = (RecipientState.DELAYED,)
        return await self._refuse(
            reviewer, message_id, None, delayed, "recall", reason, tell="recalled"
        )

    async def delete(self, reviewer: Reviewer, message_id: str, reason: str) -> tuple[str, ...]:
        """Refuse every waiting copy without telling the sender (test mail, spam, duplicates)."""
        return await self._refuse(reviewer, message_id, None, _WAITING, "delete", reason, tell=None)

    async def _refuse(
        self,
        reviewer: Reviewer,
        message_id: str,
        recipients: Sequence[str] | None,
        states: tuple[RecipientState, ...],
        action: str,
        reason: str,
        *,
        tell: str | None,
    ) -> tuple[str, ...]:
        check_reason(reason, self.config)
        held = await self.get(message_id)
        what = "delayed" if states == (RecipientState.DELAYED,) else "held or delayed"
        chosen = self._chosen(held, recipients, states, what)
        note = f"{action.rstrip('e')}ed by {reviewer.login}: {reason}"  # rejected, recalled...
        await self.store.finish_held(message_id, chosen, RecipientState.REJECTED, note)
        await self._audit(
            reviewer, action, message_id, {"recipients": list(chosen), "reason": reason}
        )
        if tell is not None:
            await self._tell_sender(held, tell, chosen, reason)
        return tuple(chosen)

    # -- plumbing -----------------------------------------------------------

    @staticmethod
    def _chosen(
        held: Held,
        recipients: Sequence[str] | None,
        states: tuple[RecipientState, ...],
        what: str,
    ) -> list[str]:
        waiting = held.record.addresses_in(*states)
        if not recipients:
            if not waiting:
                raise ReviewConflict(f"{held.record.id}: no copy of it is {what}")
            return list(waiting)
        by_lower = {a.lower(): a for a in held.record.envelope.recipients}
        chosen = []
        for given in recipients:
            address = by_lower.get(given.strip().lower())
            if address is None:
                raise ReviewConflict(f"{held.record.id}: {given} is not one of its recipients")
            if address not in waiting:
                state = next(r.state for r in held.record.recipients if r.address == address)
                raise ReviewConflict(f"{held.record.id}: the copy to {address} is {state.value}")
            chosen.append(address)
        return list(dict.fromkeys(chosen))

    async def _audit(
        self, reviewer: Reviewer, action: str, message_id: str, detail: dict[str, object]
    ) -> None:
        await self.store.append_audit(
            reviewer.login, action, message_id, {"role": reviewer.role, **detail}
        )

    async def _tell_sender(
        self, held: Held, outcome: str, recipients: Sequence[str], reason: str
    ) -> None:
        await tell_sender(self.store, self.config, held, outcome, recipients, reason)


async def tell_sender(
    store: Store,
    config: Config,
    held: Held,
    outcome: str,
    recipients: Sequence[str],
    reason: str = "",
) -> None:
    """Queue the sender's notice that a review ended (released, rejected, recalled, expired)."""
    sender = held.record.envelope.sender
    if not sender:
        return  # a bounce is never answered
    notice = build_outcome_notice(
        reporting_mta=config.server.hostname,
        postmaster=config.delivery.postmaster,
        original_sender=sender,
        queue_id=held.record.id,
        message_id=held.review.message_id if held.review else None,
        outcome=outcome,
        recipients=recipients,
        reason=reason,
    )
    await store_notice(
        store,
        sender,
        notice,
        reporting_mta=config.server.hostname,
        lifetime=config.delivery.lifetime,
        smtputf8=held.record.envelope.smtputf8,
    )


def _still_needs(held: Held, recipient: str) -> str:
    shown = held.review.recipients.get(recipient) if held.review else None
    approver = shown is not None and shown.approver
    so_far = held.approvals_of(recipient)
    missing = held.needed(recipient) - len({a.reviewer for a in so_far})
    parts = []
    if missing > 0:
        parts.append(f"{missing} more approval{'s' if missing > 1 else ''}")
    if approver and not any(a.role == "approver" for a in so_far):
        parts.append("an approver")
    return " and ".join(parts) or "release by the relay"


__all__ = ["Approved", "Held", "HoldFilter", "Quarantine", "ReviewRefused"]


# Findings a reason may carry: topics and case references name no one.
_TOPICS = frozenset({"keywords", "protective_marking", "encryption_request", "case_reference"})


def check_reason(reason: str, config: Config) -> None:
    """A reason is kept in the audit log for good and sent to the sender: refuse one that
    carries an identifier or a match against the council's registers (the detectors the
    relay itself runs), naming the kind of data, never the value."""
    raw = (
        b"Subject: reason\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + reason.encode("utf-8", "replace") + b"\r\n"
    )
    findings = read_message(raw, config.parse.limits(), settings=config.detect).findings
    personal = sorted({f.detector.replace("_", " ") for f in findings if f.detector not in _TOPICS})
    if personal:
        raise ReviewRefused(
            "the reason is kept in the audit log and sent to the sender, and it holds what"
            f" looks like personal data ({', '.join(personal)}): give the reason without it"
        )
