"""Time in the quarantine: expiry, reminders and digests, run by the relay.

A quarantined copy nobody reviews is refused when its retention ends, and
its sender is told; reviewers are reminded once before that. With
`review.reviewer_notices: digest` the reviewers get one notice per interval
listing the new holds instead of one per hold. (Delayed copies need no clock
of their own: the delivery queue releases them when their time comes.)
"""

from __future__ import annotations

import structlog

from smtpguard.act.notices import WaitingHold, build_reviewer_digest
from smtpguard.act.queue import store_notice
from smtpguard.config.model import Config
from smtpguard.review.quarantine import Held, Quarantine, tell_sender
from smtpguard.spool import RecipientState, ReviewConflict, Store

log = structlog.get_logger("smtpguard.review")

AUDIT_ACTOR = "smtpguard"


class ReviewClock:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config  # replaced on reload

    async def tick(self, now: float) -> None:
        """One pass: expire what ran out, remind what is about to, send a digest if due."""
        await self.expire(now)
        await self.remind(now)
        if self.config.review.reviewer_notices == "digest":
            await self.digest(now)

    async def expire(self, now: float) -> list[str]:
        expired = []
        desk = Quarantine(self.store, self.config)
        for record in await self.store.holds_due(now):
            try:
                held = await desk.get(record.id)
                copies = held.record.addresses_in(RecipientState.HELD)
                note = "expired: not reviewed within the retention period"
                await self.store.finish_held(record.id, copies, RecipientState.REJECTED, note)
            except ReviewConflict:
                continue  # a reviewer got there first
            await self.store.append_audit(
                AUDIT_ACTOR, "expire", record.id, {"recipients": list(copies)}
            )
            await tell_sender(self.store, self.config, held, "expired", copies)
            log.info("hold.expired", id=record.id, recipients=len(copies))
            expired.append(record.id)
        return expired

    async def remind(self, now: float) -> list[str]:
        reviewers = self.config.policy.reviewers
        records = await self.store.reminders_due(now, self.config.review.remind_before)
        if not records or not reviewers:
            return []
        desk = Quarantine(self.store, self.config)
        holds = [_waiting(await desk.get(r.id)) for r in records]
        await self._send(holds, reminder=True)
        ids = [h.queue_id for h in holds]
        await self.store.append_audit(AUDIT_ACTOR, "remind", None, {"messages": ids})
        log.info("hold.reminded", messages=len(ids))
        return ids

    async def digest(self, now: float) -> list[str]:
        since = await self.store.claim_digest(now, self.config.review.digest_interval)
        if since is None or not self.config.policy.reviewers:
            return []
        desk = Quarantine(self.store, self.config)
        new = [
            held
            for held in await desk.held()
            if held.review is not None
            and since <= held.review.held_at < now
            and held.record.addresses_in(RecipientState.HELD)
        ]
        if not new:
            return []
        await self._send([_waiting(h) for h in new], reminder=False)
        log.info("hold.digest_sent", messages=len(new))
        return [h.record.id for h in new]

    async def _send(self, holds: list[WaitingHold], *, reminder: bool) -> None:
        reviewers = self.config.policy.reviewers
        assert reviewers is not None
        notice = build_reviewer_digest(
            reporting_mta=self.config.server.hostname,
            postmaster=self.config.delivery.postmaster,
            reviewers=reviewers,
            holds=holds,
            reminder=reminder,
        )
        await store_notice(
            self.store,
            reviewers,
            notice,
            reporting_mta=self.config.server.hostname,
            lifetime=self.config.delivery.lifetime,
        )


def _waiting(held: Held) -> WaitingHold:
    return WaitingHold(
        queue_id=held.record.id,
        sender=held.record.envelope.sender,
        recipients=held.record.addresses_in(RecipientState.HELD),
        rules=held.review.rules() if held.review else (),
        review_until=held.record.review_until,
    )
