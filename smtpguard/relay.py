"""The relay: listen -> spool -> parse/detect/decide -> act, wired on one event loop.

`Relay` is what the listener hands each message to. In after-queue mode it
stores first, answers 250, then scans; in before-queue mode it scans first so
that a `reject` verdict becomes a 550 and nothing is stored.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import structlog

from smtpguard.act.dsn import FailedRecipient
from smtpguard.act.notices import HeldCopy, build_reviewer_notice, build_sender_notice
from smtpguard.act.queue import DeliveryQueue, Job
from smtpguard.act.upstream import Upstream
from smtpguard.config import Config, ConfigError, Overrides, load_config
from smtpguard.decide import NOTIFY_REVIEWERS, NOTIFY_SENDER, Action, RecipientVerdict, Verdict
from smtpguard.decide.decider import Decider, Reading
from smtpguard.detect import Finding
from smtpguard.envelope import Envelope
from smtpguard.handoff import (
    BEHIND,
    CAUGHT_UP,
    ONE_READ,
    HandedOver,
    HandoffReceiver,
    HandoffSender,
)
from smtpguard.inspect import read_message, unreadable_reading
from smtpguard.listen import Listener, Receipt, listener_settings, replies
from smtpguard.log import configure_logging
from smtpguard.metrics import HealthCheck, MetricsServer, RelayMetrics
from smtpguard.parse.pool import ParsePool, may_lower_priority
from smtpguard.processes import ProcessRole, Supervisor, role_from_environment
from smtpguard.review.clock import AUDIT_ACTOR, ReviewClock
from smtpguard.review.record import ReviewRecord
from smtpguard.spool import (
    Instructions,
    MessageRecord,
    MessageState,
    Origin,
    RecipientRecord,
    RecipientState,
    Store,
    new_message_id,
    open_configured_store,
)
from smtpguard.spool.instance import DataFolderLock, instance_owner
from smtpguard.spool.sqlite import SQLiteStore

log = structlog.get_logger("smtpguard.relay")

_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_PRESSURE_REFRESH = 1.0


def received_header(envelope: Envelope, hostname: str, message_id: str) -> bytes:
    """The one header smtpguard adds on the way through (RFC 5321 4.4)."""
    helo = _HELO_UNSAFE.sub("", envelope.client_name)[:255] or "unknown"
    protocol = ("UTF8SMTP" if envelope.smtputf8 else "ESMTP") + ("S" if envelope.tls else "")
    literal = envelope.client_address
    if ":" in literal:
        literal = f"IPv6:{literal}"  # RFC 5321 4.1.3 address literal
    return (
        f"Received: from {helo} ([{literal}])\r\n"
        f"\tby {hostname} (smtpguard) with {protocol} id {message_id};\r\n"
        f"\t{formatdate(envelope.received_at, localtime=False)}\r\n"
    ).encode("ascii")


def _recipient_state(action: Action) -> RecipientState:
    if action is Action.DELAY:
        return RecipientState.DELAYED
    if action is Action.QUARANTINE:
        return RecipientState.HELD
    if action is Action.REJECT:
        return RecipientState.REJECTED
    return RecipientState.PENDING


def _message_state(states: list[RecipientState]) -> MessageState:
    if RecipientState.PENDING in states:
        return MessageState.QUEUED
    if RecipientState.HELD in states or RecipientState.DELAYED in states:
        return MessageState.HELD
    return MessageState.REJECTED


def _routes(config: Config) -> dict[str, Upstream]:
    return {
        name: Upstream(route, config.server.hostname)
        for name, route in config.policy.routes.items()
    }


def _instructions(verdict: RecipientVerdict) -> Instructions:
    return Instructions(
        route=verdict.route,
        require_tls=verdict.require_tls,
        tag_rules=verdict.rules if verdict.tag else (),
        subject_prefix=verdict.subject_prefix,
    )


def _release_at(verdict: Verdict, now: float) -> float | None:
    """When the delayed recipients go: the longest delay any of them got."""
    delays = [v.delay_seconds for v in verdict.recipients.values() if v.action is Action.DELAY]
    return now + max(delays) if delays else None


@dataclass
class _Pressure:
    free_disk: int = 1 << 62
    active: int = 0


class Relay:
    """Implements the listener's `Intake`: takes messages in, sees them through."""

    def __init__(
        self,
        config: Config,
        store: Store,
        queue: DeliveryQueue,
        parser: ParsePool[Reading],
        decider: Decider,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.config = config
        self.decider = decider  # replaced on reload
        self.store = store
        self.queue = queue
        self.parser = parser
        self.metrics = metrics
        self._pressure = _Pressure()
        self._scans: set[asyncio.Task[object]] = set()
        # Bytes of the messages being scanned. Received messages past the budget
        # (`server.max_waiting_memory`) wait in the store, by id in arrival order, and
        # are read back one at a time while there is room.
        self._scanning_bytes = 0
        self._scanning = 0
        self._waiting: collections.deque[str] = collections.deque()
        self._reading_back = False
        # Every message received and not read yet, with when it was first counted
        # (loop time), oldest first: how far behind reading is.
        self._unread_since: dict[str, float] = {}
        # MAILs waiting for reading to catch up, oldest first.
        self._paced: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pacing = False
        # With a reading process (server.reading_process), an accepting process hands each
        # message over and paces as that process says; the reading process tells them.
        self.handoff: HandoffSender | None = None
        self._reading_behind = False
        self.accepting: HandoffReceiver | None = None
        self._told_behind = False
        self._look_again: asyncio.TimerHandle | None = None
        self._look_again_at = 0.0

    # -- Intake -----------------------------------------------------------

    def pressure(self) -> str | None:
        if self._pressure.free_disk < self.config.store.min_free_disk:
            return replies.R452_STORAGE
        if self._pressure.active >= self.config.store.max_queue:
            return replies.R452_QUEUE_FULL
        return None

    async def pace(self) -> None:
        """Postfix's in_flow_delay: while reading is behind (`server.max_unread_wait`,
        `server.max_unscanned`), a new message waits up to `server.flow_delay` for one to
        be read, so that a flow that stays faster than the relay reads slows its sender
        rather than piling up; a burst that reading soon catches up with is not slowed."""
        if self.config.server.flow_delay <= 0 or not self._behind():
            return
        if self.metrics is not None:
            self.metrics.paced()
        if self.handoff is None:  # else the reading process says it
            self._say_delaying()
        # One goes on for each message read (see _wake_paced), so senders are let in at
        # the rate the relay reads; past flow_delay it goes on all the same.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._paced.append(waiter)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, self.config.server.flow_delay)

    def _say_delaying(self) -> None:
        if not self._pacing:
            self._pacing = True
            log.warning(
                "flow.delaying",
                unscanned=self._unscanned(),
                unread_wait=round(self._unread_wait(), 1),
                max_unscanned=self.config.server.max_unscanned,
                max_unread_wait=self.config.server.max_unread_wait,
            )

    def _unscanned(self) -> int:
        return self._scanning + len(self._waiting)

    def _unread_wait(self) -> float:
        """How long the oldest unread message has waited to be read."""
        oldest = next(iter(self._unread_since.values()), None)
        return 0.0 if oldest is None else asyncio.get_running_loop().time() - oldest

    def _behind(self) -> bool:
        if self.handoff is not None:
            return self._reading_behind  # as the reading process last said
        server = self.config.server
        return (
            self._unscanned() > server.max_unscanned or self._unread_wait() > server.max_unread_wait
        )

    def _wake_paced(self) -> None:
        server = self.config.server
        # Logged as caught up at half the limits, not at them: one pair of lines per
        # episode, not one per message while the flow hovers at a limit.
        if (
            self._pacing
            and self._unscanned() <= server.max_unscanned // 2
            and self._unread_wait() <= server.max_unread_wait / 2
        ):
            self._pacing = False
            log.info("flow.caught_up", unscanned=self._unscanned())
        # Still behind: one waiter goes on for the message just read, the oldest first.
        # Caught up: all of them. (Waking every waiter at every scan while behind, with
        # hundreds of sessions and a hundred scans a second, would busy the loop for
        # nothing.)
        behind = self._behind()
        if self.accepting is not None:  # the waiters are in the accepting processes
            self._tell_accepting(behind, read=True)
        else:
            self._release_paced(1 if behind else len(self._paced))

    def _tell_accepting(self, behind: bool, *, read: bool) -> None:
        """The reading process's half of flow control: the accepting processes pace as
        one process would, from what it tells them."""
        assert self.accepting is not None
        if behind != self._told_behind:
            self._told_behind = behind
            self.accepting.tell_all(BEHIND if behind else CAUGHT_UP)
            if behind and self.config.server.flow_delay > 0:
                self._say_delaying()
        if behind and read:
            self.accepting.tell_one(ONE_READ)
        if not behind and self._unread_since:
            self._look_again_when_late()

    def _look_again_when_late(self) -> None:
        """Time alone puts reading behind: look again when the oldest unread message will
        have waited `max_unread_wait` (one process looks at each MAIL instead)."""
        oldest = next(iter(self._unread_since.values()))
        due = oldest + self.config.server.max_unread_wait + 0.001
        if self._look_again is not None:
            if self._look_again_at == due:
                return
            self._look_again.cancel()
        self._look_again_at = due
        self._look_again = asyncio.get_running_loop().call_at(due, self._looked_again)

    def _looked_again(self) -> None:
        self._look_again = None
        self._tell_accepting(self._behind(), read=False)

    def reading_said(self, signal: bytes) -> None:
        """In an accepting process: flow control as the reading process tells it."""
        if signal == BEHIND:
            self._reading_behind = True
        elif signal == ONE_READ:
            self._release_paced(1)
        elif signal == CAUGHT_UP:
            self._reading_behind = False
            self._release_paced(len(self._paced))

    def _release_paced(self, room: int) -> None:
        while room > 0 and self._paced:
            waiter = self._paced.popleft()
            if not waiter.done():  # not already given up (flow_delay) or gone
                waiter.set_result(None)
                room -= 1

    async def receive(self, envelope: Envelope, content: bytes, tls: bool) -> Receipt:
        message_id = new_message_id()
        content = received_header(envelope, self.config.server.hostname, message_id) + content
        inspected = None
        if self.config.server.mode == "before-queue":
            inspected = await self._inspect(content, envelope, message_id)
            verdict = inspected[0]
            if verdict.action is Action.REJECT:
                log.warning(
                    "message.rejected",
                    client=envelope.client_address,
                    size=len(content),
                    recipients=len(envelope.recipients),
                    domains=envelope.recipient_domains,
                    rules=_fired_rules(verdict),
                )
                reason = next((v.reason for v in verdict.recipients.values() if v.reason), "policy")
                return Receipt(None, replies.R550_POLICY.format(reason=reason))
        # Shielded: once the store has the message, it is seen through even if
        # the client hangs up before reading the 250.
        return await asyncio.shield(self._store(message_id, envelope, content, tls, inspected))

    async def _store(
        self,
        message_id: str,
        envelope: Envelope,
        content: bytes,
        tls: bool,
        inspected: tuple[Verdict, Reading] | None,
    ) -> Receipt:
        """Stored as received in both modes: a before-queue verdict is then acted on by
        the same steps as an after-queue one, so a crash before its hold notice is
        stored means the message is scanned again and the notice sent then."""
        expires_at = envelope.received_at + self.config.delivery.lifetime
        try:
            if self.handoff is not None:
                await self.handoff.hand_over(message_id, envelope, content, expires_at)
            else:
                await self.store.accept(
                    message_id,
                    envelope,
                    content,
                    state=MessageState.RECEIVED,
                    origin=Origin.RELAY,
                    expires_at=expires_at,
                )
        except OSError as exc:
            log.error("message.store_failed", client=envelope.client_address, error=exc.strerror)
            self._pressure.free_disk = min(self._pressure.free_disk, self.store.free_disk_bytes())
            return Receipt(None, replies.R451_TRY_AGAIN)
        self._pressure.active += 1
        log.info(
            "message.received",
            id=message_id,
            client=envelope.client_address,
            size=len(content),
            recipients=len(envelope.recipients),
            domains=envelope.recipient_domains,
            tls=tls,
            mode=self.config.server.mode,
        )
        if self.metrics is not None:
            self.metrics.received(self.config.server.mode)
        if self.handoff is not None:
            return Receipt(message_id)  # the reading process reads it
        if inspected is not None:
            self._track(self._scan(message_id, envelope, content, inspected=inspected))
        else:
            self._scan_later(message_id, envelope, content)
        return Receipt(message_id)

    def take_over(self, message_id: str, envelope: Envelope, content: bytes | None) -> None:
        """In the reading process: a message an accepting process kept (content None:
        read it from the store)."""
        if content is None:
            self._unread_since.setdefault(message_id, asyncio.get_running_loop().time())
            self._wait_in_store(message_id)
        else:
            self._scan_later(message_id, envelope, content)
        if self.accepting is not None:
            self._tell_accepting(self._behind(), read=False)

    # -- scanning ------------------------------------------------------------

    def warm_up(self) -> None:
        sample = b"Subject: warm-up\r\n\r\nNHS number 943 476 5919\r\n"
        reading = self.parser.reader(sample, self.parser.limits)
        envelope = Envelope("warm@up.invalid", ("warm@up.invalid",), "127.0.0.1", "", 0.0)
        self.decider.facts(envelope, reading, frozenset())

    async def _inspect(
        self, content: bytes, envelope: Envelope, message_id: str
    ) -> tuple[Verdict, Reading]:
        """Parse and detect in a worker process; decide here (it needs the envelope)."""
        started = time.monotonic()
        reading = await self.parser.parse(content)
        findings = _finding_counts(reading.findings)
        log.info(
            "message.scanned",
            id=message_id,
            seconds=round(time.monotonic() - started, 4),
            # Detector names and distinct counts: never a value, excerpt or file name.
            findings=findings,
        )
        correspondents = await self.store.correspondents(envelope.sender, envelope.recipients)
        verdict = self.decider.decide(envelope, reading, correspondents)
        if self.metrics is not None:
            self.metrics.scanned(time.monotonic() - started, verdict, findings)
        return verdict, reading

    async def _record_verdict(
        self,
        message_id: str,
        envelope: Envelope,
        verdict: Verdict,
        reading: Reading,
        content: bytes,
    ) -> None:
        """The audit entry every verdict gets; for held copies, what the reviewer is shown.

        Errors are logged: the message's own state is already safe in the store.
        """
        try:
            now = time.time()
            waiting = [
                a
                for a, v in verdict.recipients.items()
                if v.action in (Action.DELAY, Action.QUARANTINE)
            ]
            if waiting:
                quarantined = any(
                    verdict.recipients[a].action is Action.QUARANTINE for a in waiting
                )
                review_until = now + self.config.review.retention if quarantined else None
                record = ReviewRecord.of(
                    verdict, reading.attachments, now, review_until, _message_id_of(content)
                )
                await self.store.record_review(message_id, record.to_json(), review_until)
            await self.store.append_audit(
                AUDIT_ACTOR,
                "verdict",
                message_id,
                {
                    "sender_domain": envelope.sender.rpartition("@")[2].lower(),
                    "recipients": {a: v.action.value for a, v in verdict.recipients.items()},
                    "rules": {a: list(v.rules) for a, v in verdict.recipients.items() if v.rules},
                    "findings": _finding_counts(verdict.findings),
                },
            )
        except Exception as exc:
            log.error("verdict.record_failed", id=message_id, error=type(exc).__name__)

    def _scan_later(
        self,
        message_id: str,
        envelope: Envelope,
        content: bytes,
        notices_sent: bool = False,
        *,
        read_back: bool = False,
    ) -> None:
        """Scan now if the budget allows, else leave the message to wait in the store.

        `read_back`: it comes from the store (or a retry) and is let in even past
        the budget, so that waiting mail always moves.
        """
        self._unread_since.setdefault(message_id, asyncio.get_running_loop().time())
        budget = self.config.server.max_waiting_memory
        if not read_back and self._scanning_bytes and self._scanning_bytes + len(content) > budget:
            self._waiting.append(message_id)
            self._read_back_next()
            return
        self._scanning_bytes += len(content)
        self._scanning += 1
        self._track(self._scan_counted(message_id, envelope, content, notices_sent))

    async def _scan_counted(
        self, message_id: str, envelope: Envelope, content: bytes, notices_sent: bool
    ) -> None:
        try:
            await self._scan(message_id, envelope, content, notices_sent)
        finally:
            self._scanning_bytes -= len(content)
            self._scanning -= 1
            self._read_back_next()
            self._wake_paced()

    def _read_back_next(self) -> None:
        """One read at a time, while there is room: the next waiting message."""
        room = self._scanning_bytes < self.config.server.max_waiting_memory
        if self._waiting and room and not self._reading_back:
            self._reading_back = True
            self._track(self._read_back(self._waiting.popleft()))

    async def _read_back(self, message_id: str) -> None:
        try:
            await self._rescan(message_id)
        finally:
            self._reading_back = False
            self._read_back_next()

    def _track(self, scan: Coroutine[Any, Any, object]) -> None:
        """Scans run as tasks; they are awaited (within the drain time) at shutdown."""
        task = asyncio.create_task(scan)
        self._scans.add(task)
        task.add_done_callback(self._scans.discard)

    async def _rescan(self, message_id: str) -> None:
        """A message stored but not scanned (after a restart, or one that waited in the store
        past the memory budget): read back and scanned."""
        try:
            record = await self.store.load(message_id)
            if record is not None and record.state is MessageState.RECEIVED:
                content = await self.store.content(message_id)
                self._scan_later(message_id, record.envelope, content, read_back=True)
            else:  # read meanwhile (a scan retried from memory), or gone
                self._unread_since.pop(message_id, None)
        except Exception as exc:
            # Still received in the store (a lock, a full disk): read back again later.
            log.error("scan.reload_failed", id=message_id, error=type(exc).__name__)
            asyncio.get_running_loop().call_later(
                self.config.delivery.retry_initial, self._wait_in_store, message_id
            )

    def _wait_in_store(self, message_id: str) -> None:
        self._waiting.append(message_id)
        self._read_back_next()

    async def _scan(
        self,
        message_id: str,
        envelope: Envelope,
        content: bytes,
        notices_sent: bool = False,
        inspected: tuple[Verdict, Reading] | None = None,
    ) -> None:
        """`notices_sent`: a retry of a scan that failed after storing its bounce and hold
        notice (they are not sent twice); `inspected`: the verdict a before-queue relay
        reached before its 250."""
        try:
            verdict, reading = inspected or await self._inspect(content, envelope, message_id)
            states = {
                r: _recipient_state(verdict.recipients[r].action) for r in envelope.recipients
            }
            told = {r: _instructions(verdict.recipients[r]) for r in envelope.recipients}
            state = _message_state(list(states.values()))
            now = time.time()
            record = MessageRecord(
                id=message_id,
                state=MessageState.DELIVERING,
                envelope=envelope,
                size=len(content),
                origin=Origin.RELAY,
                attempts=0,
                next_attempt_at=now,
                expires_at=envelope.received_at + self.config.delivery.lifetime,
                updated_at=now,
                recipients=tuple(
                    RecipientRecord(a, s, instructions=told[a]) for a, s in states.items()
                ),
            )
            if verdict.action is not Action.PASS:
                log.info(
                    "message.verdict",
                    id=message_id,
                    action=verdict.action.value,
                    rules=_fired_rules(verdict),
                )
            release_at = _release_at(verdict, now)
            # Route, TLS and tag instructions are stored with their recipients, so a
            # retry after a restart delivers each copy the same way.
            special = {a: i for a, i in told.items() if i != Instructions()}
            # The bounce and the sender's hold notice are stored before the verdict is
            # recorded: a crash in between scans the message again and sends them again,
            # never not at all.
            if not notices_sent:
                await self._bounce_refused(record, verdict, content)
                notices_sent = await self._notify_holds(
                    message_id, envelope, verdict, content, release_at
                )
            if state is not MessageState.QUEUED:
                await self.store.set_state(
                    message_id,
                    state,
                    recipient_states=states,
                    release_at=release_at,
                    instructions=special,
                )
            elif special or any(s is not RecipientState.PENDING for s in states.values()):
                # Some recipients wait, are refused or go their own way: record that,
                # and claim the rest for delivery, in one commit.
                await self.store.set_state(
                    message_id,
                    MessageState.DELIVERING,
                    recipient_states=states,
                    next_attempt_at=now,
                    lease=self.queue.lease(),
                    release_at=release_at,
                    instructions=special,
                )
            self._unread_since.pop(message_id, None)
            self._track(self._record_verdict(message_id, envelope, verdict, reading, content))
            if state is MessageState.QUEUED:
                # A message every recipient may have goes straight to delivery: the
                # attempt's own commit records the outcome. It stays RECEIVED in the
                # store meanwhile, so a crash means it is scanned and sent again.
                self.queue.submit(Job(message_id, claimed=True, record=record, content=content))
        except Exception as exc:
            # Stays RECEIVED and is scanned again later. Never delivered unscanned.
            log.error("scan.failed", id=message_id, error=type(exc).__name__)
            if self.metrics is not None:
                self.metrics.scan_failed()
            # Not counted as unread until it is tried again: one message that keeps failing
            # must not hold every sender back (scan.failed says what is wrong).
            self._unread_since.pop(message_id, None)
            # From memory: its row may not be in the store yet (a full disk).
            asyncio.get_running_loop().call_later(
                self.config.delivery.retry_initial,
                functools.partial(
                    self._scan_later, message_id, envelope, content, notices_sent, read_back=True
                ),
            )

    async def _notify_holds(
        self,
        message_id: str,
        envelope: Envelope,
        verdict: Verdict,
        content: bytes,
        release_at: float | None,
    ) -> bool:
        """Tell the sender at once, and the reviewers when a rule asks, without content.

        A notice that cannot be queued (disk full) is logged (returns False); the hold
        itself stands.
        """
        try:
            await self._send_hold_notices(message_id, envelope, verdict, content, release_at)
        except Exception as exc:
            log.error("notice.failed", id=message_id, error=type(exc).__name__)
            return False
        return True

    async def _send_hold_notices(
        self,
        message_id: str,
        envelope: Envelope,
        verdict: Verdict,
        content: bytes,
        release_at: float | None,
    ) -> None:
        held = [
            HeldCopy(
                address,
                v.action.value,
                v.reason,
                v.approvals,
                release_at if v.action is Action.DELAY else None,
            )
            for address, v in verdict.recipients.items()
            if v.action in (Action.DELAY, Action.QUARANTINE)
        ]
        if not held:
            return
        notify: set[str] = set()
        for copy in held:
            notify |= verdict.recipients[copy.address].notify
        told = []
        postmaster = self.config.delivery.postmaster
        hostname = self.config.server.hostname
        if NOTIFY_SENDER in notify and envelope.sender:
            notice = build_sender_notice(
                reporting_mta=hostname,
                postmaster=postmaster,
                original_sender=envelope.sender,
                queue_id=message_id,
                message_id=_message_id_of(content),
                held=held,
                reviewers=self.config.policy.reviewers,
            )
            await self.queue.queue_notice(envelope.sender, notice, smtputf8=envelope.smtputf8)
            told.append("sender")
        reviewers = self.config.policy.reviewers
        each = self.config.review.reviewer_notices == "each"  # else the clock's digest tells them
        if NOTIFY_REVIEWERS in notify and reviewers and each:
            notice = build_reviewer_notice(
                reporting_mta=hostname,
                postmaster=postmaster,
                reviewers=reviewers,
                queue_id=message_id,
                original_sender=envelope.sender,
                held=held,
                rules=_fired_rules(verdict),
            )
            await self.queue.queue_notice(reviewers, notice, smtputf8=False)
            told.append("reviewers")
        log.info(
            "message.held",
            id=message_id,
            recipients=len(held),
            domains=sorted({c.address.rpartition("@")[2].lower() for c in held}),
            rules=_fired_rules(verdict),
            notified=told,
        )

    async def _bounce_refused(
        self, record: MessageRecord, verdict: Verdict, content: bytes
    ) -> None:
        """After-queue, a `reject` goes back to the sender as a bounce without the content."""
        refused = [
            FailedRecipient(
                address,
                "5.7.1",
                f"550 5.7.1 Refused by policy: {verdict.recipients[address].reason or 'policy'}",
            )
            for address, outcome in verdict.recipients.items()
            if outcome.action is Action.REJECT
        ]
        if refused:
            await self.queue.notify_sender(record, refused, content, expired=False)

    # -- lifecycle --------------------------------------------------------

    async def resume(self) -> int:
        """After a restart: everything unfinished is taken up again. Returns how many."""
        unfinished = await self.store.recover()
        # Only received messages wait to be read; queued and deferred ones are the delivery
        # queue's, which finds them in the store. (Counted as unread, ten thousand of them
        # left by an upstream outage would slow every sender until the read-back had
        # walked past them all.)
        received = (await self.store.counts()).by_state.get(MessageState.RECEIVED, 0)
        if received:
            records = await self.store.messages([MessageState.RECEIVED], limit=received)
            ours = {record.id for record in records}
            # Read back in turn, within the memory budget, not all at once.
            self._waiting.extend(i for i in unfinished if i in ours)
            self._read_back_next()
        return len(unfinished)

    async def watch_pressure(self) -> None:
        while True:
            try:
                self._pressure.free_disk = await asyncio.to_thread(self.store.free_disk_bytes)
                counts = await self.store.counts()
                self._pressure.active = counts.active
                if self.metrics is not None:
                    await self.metrics.refresh(self.store, counts, self._pressure.free_disk)
            except Exception as exc:
                log.error("pressure.check_failed", error=type(exc).__name__)
            await asyncio.sleep(_PRESSURE_REFRESH)

    async def finish_scans(self, timeout: float) -> None:
        if self._look_again is not None:
            self._look_again.cancel()
        self._waiting.clear()  # they stay received in the store: read at the next start
        self._unread_since.clear()
        if self._scans:
            await asyncio.wait(set(self._scans), timeout=timeout)


_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^<>\s]{1,250}>)")


def _message_id_of(content: bytes) -> str | None:
    """The Message-ID, so the sender's mail program can match the notice to the message."""
    end = content.find(b"\r\n\r\n")
    match = _MESSAGE_ID.search(content if end < 0 else content[:end])
    return match.group(1).decode("ascii", "replace") if match else None


def _finding_counts(findings: Iterable[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.detector] = counts.get(finding.detector, 0) + finding.count
    return counts


def _fired_rules(verdict: Verdict) -> list[str]:
    return sorted({rule for v in verdict.recipients.values() for rule in v.rules})


def notify_systemd(state: str) -> None:
    """sd_notify without a dependency: systemd's Type=notify readiness protocol."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


class RelayService:
    """The running daemon: owns the store, the listener, the queue and the signals."""

    def __init__(
        self,
        config_path: Path,
        overrides: Overrides,
        config: Config,
        role: ProcessRole | None = None,
    ) -> None:
        self.config_path = config_path
        self.role = role or ProcessRole()
        self.overrides = overrides
        self.config = config
        # The spool key (and DSN file) is read once, here: a new one takes effect at
        # restart, not on SIGHUP.
        owner = instance_owner(config.store.data_dir)
        self.store = open_configured_store(config.store, owner=owner)
        self.upstream = Upstream(config.upstream, config.server.hostname)
        # Only a relay that serves its metrics pays for counting them.
        self.metrics = RelayMetrics() if config.metrics.listen is not None else None
        self.queue = DeliveryQueue(
            self.store,
            self.upstream,
            config.delivery,
            config.server.hostname,
            workers=config.upstream.max_connections,
            routes=_routes(config),
            tls_route=config.policy.tls_route,
            metrics=self.metrics,
            owner=owner,
            max_waiting_memory=config.server.max_waiting_memory,
        )
        self.config_routes = config.policy.routes
        self.parser = ParsePool(
            config.parse.workers,
            config.parse.limits(),
            config.parse.worker_memory,
            reader=functools.partial(read_message, settings=config.detect),
            unreadable=unreadable_reading,
            worker_setup=functools.partial(configure_logging, config.logging),
            worker_nice=_worker_nice(config, self.role),
        )
        self.relay = Relay(
            config, self.store, self.queue, self.parser, Decider.from_config(config), self.metrics
        )
        self.review_clock = ReviewClock(self.store, config)
        self.listener = Listener(self.relay, listener_settings(config.server))
        self.address: tuple[str, int] | None = None
        self.metrics_server: MetricsServer | None = None
        self.metrics_address: tuple[str, int] | None = None
        if self.metrics is not None and self.role.work == "reading":
            self.metrics.count_accepting_processes()
        elif self.metrics is not None:
            self.metrics.watch_sessions(self.listener.registry.sessions)
            self.listener.registry.on_reply = self.metrics.replied
        self.receiver: HandoffReceiver | None = None
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    async def start(self, *, handle_signals: bool = False) -> tuple[str, int]:
        """With `handle_signals`, signals are handled before readiness is announced."""
        if handle_signals:
            self._install_signal_handlers()
        await self.store.open()
        if self.role.reads:
            # Compile the detectors' Hyperscan database and load the suffix list now, in a
            # thread, so the first short message read on the loop does not pay for them.
            await asyncio.to_thread(self.relay.warm_up)
        # With several processes only the first recovers (before the others start) and
        # keeps the review clock: the others would release its claims, or remind twice.
        resumed = await self.relay.resume() if self.role.first else 0
        if self.role.reads:
            self.queue.start()
            self.queue.wake()  # due mail is looked for now, not after the first poll interval
        self._background.append(asyncio.create_task(self.relay.watch_pressure()))
        if self.role.first:
            self._background.append(asyncio.create_task(self._run_review_clock()))
            head = await self.store.audit_head()
            log.info("audit.head", entries=head[0], hash=head[1])
        await self._start_metrics()
        if self.role.work == "reading":
            self.address = await self._start_reading()
        else:
            self.address = await self._start_listening()
        log.info(
            "relay.reading" if self.role.work == "reading" else "relay.listening",
            host=self.address[0],
            port=self.address[1],
            upstream=f"{self.config.upstream.host}:{self.config.upstream.port}",
            mode=self.config.server.mode,
            data_dir=str(self.config.store.data_dir),
            resumed=resumed,
        )
        notify_systemd("READY=1")
        self.role.report_ready(self.address)
        return self.address

    async def _start_listening(self) -> tuple[str, int]:
        if self.role.work == "accepting":
            assert isinstance(self.store, SQLiteStore)  # the config allows no other
            (fd,) = self.role.handoff_fds
            self.relay.handoff = HandoffSender(
                self.store,
                socket.socket(fileno=fd),
                self.config.server.max_waiting_memory,
                self.relay.reading_said,
                tally=None if self.metrics is None else self.metrics.tally,
            )
            await self.relay.handoff.start()
        listen = self.config.server.listen
        return await self.listener.start(
            listen.host, listen.port, sock=self.role.listening_socket()
        )

    async def _start_reading(self) -> tuple[str, int]:
        """The reading process listens to the accepting processes, not to SMTP clients."""
        self.receiver = HandoffReceiver(
            [socket.socket(fileno=fd) for fd in self.role.handoff_fds],
            self._take_over,
            self._handoff_broken,
            on_tally=None if self.metrics is None else self.metrics.add_tally,
        )
        self.relay.accepting = self.receiver
        await self.receiver.start()
        shared = self.role.listening_socket()
        assert shared is not None
        bound = shared.getsockname()
        shared.detach()  # the accepting processes serve on it: this process must not close it
        return str(bound[0]), int(bound[1])

    def _take_over(self, handed: HandedOver) -> None:
        assert isinstance(self.store, SQLiteStore)
        self.store.adopt(handed.message_id, handed.header, handed.size)
        self.relay.take_over(handed.message_id, handed.header.envelope, handed.content)

    def _handoff_broken(self) -> None:
        """Exit 1: every process starts again, and recovery reads what was kept."""
        self.exit_code = 1
        self.request_stop()

    async def _start_metrics(self) -> None:
        """Bound before the listener, so a port in use stops the start, not the scrapes."""
        endpoint = self.config.metrics.listen
        # With a reading process, it serves what every process counted.
        if self.metrics is None or endpoint is None or self.role.work == "accepting":
            return
        health = HealthCheck(self.store, lambda: self.upstream.config)
        self.metrics_server = MetricsServer(self.metrics, health)
        self.metrics_address = await self.metrics_server.start(endpoint.host, endpoint.port)
        log.info("metrics.listening", host=self.metrics_address[0], port=self.metrics_address[1])

    def request_stop(self) -> None:
        self._stop.set()

    async def _run_review_clock(self) -> None:
        while True:
            try:
                await self.review_clock.tick(time.time())
            except Exception as exc:
                log.error("review.clock_failed", error=type(exc).__name__)
            await asyncio.sleep(self.config.review.check_interval)

    def reload(self) -> bool:
        """Re-read the config; keep the running one if the new one is invalid."""
        try:
            new = load_config(self.config_path, self.overrides)
        except ConfigError as exc:
            log.error(
                "config.reload_refused",
                problems=[str(p) for p in exc.problems],
                kept="previous configuration",
            )
            return False
        restart_needed = [
            name
            for name, old, now in (
                ("server.listen", self.config.server.listen, new.server.listen),
                ("server.processes", self.config.server.processes, new.server.processes),
                ("store", self.config.store.data_dir, new.store.data_dir),
                ("store.backend", self.config.store.backend, new.store.backend),
                ("store.dsn", self.config.store.dsn, new.store.dsn),
                ("store.dsn_file", self.config.store.dsn_file, new.store.dsn_file),
                ("store.encryption", self.config.store.encryption, new.store.encryption),
                ("metrics.listen", self.config.metrics.listen, new.metrics.listen),
            )
            if old != now
        ]
        self.config = new
        self.relay.config = new
        self.review_clock.config = new
        self.relay.decider = Decider.from_config(new)
        self.parser.limits = new.parse.limits()
        self.parser.reader = functools.partial(read_message, settings=new.detect)
        self.listener.settings = listener_settings(new.server)
        self.queue.config = new.delivery
        if new.upstream != self.upstream.config:
            old_upstream = self.upstream
            self.upstream = Upstream(new.upstream, new.server.hostname)
            self.queue.upstream = self.upstream
            self._background.append(asyncio.create_task(old_upstream.close()))
        if new.policy.routes != self.config_routes:
            old_routes = self.queue.routes
            self.queue.routes = _routes(new)
            for route in old_routes.values():
                self._background.append(asyncio.create_task(route.close()))
        self.config_routes = new.policy.routes
        self.queue.tls_route = new.policy.tls_route
        configure_logging(new.logging)
        log.info("config.reloaded", restart_needed_for=restart_needed)
        self.queue.wake()
        return True

    async def run_until_stopped(self) -> None:
        try:
            await self._stop.wait()
        finally:
            self._remove_signal_handlers()
        await self.shutdown()

    async def shutdown(self) -> None:
        notify_systemd("STOPPING=1")
        timeout = self.config.server.drain_timeout
        log.info("relay.stopping", sessions=len(self.listener.registry.sessions))
        self.listener.stop_accepting()
        drained = await self.listener.drain(timeout)
        if self.relay.handoff is not None:
            await self.relay.handoff.close()
        if self.receiver is not None:
            await self.receiver.close()
        await self.relay.finish_scans(timeout)
        await self.queue.stop(timeout)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.upstream.close()
        for route in self.queue.routes.values():
            await route.close()
        await asyncio.to_thread(self.parser.close)
        head = await self.store.audit_head()
        await self.store.close()
        log.info("relay.stopped", drained=drained, audit_entries=head[0], audit_hash=head[1])


def _worker_nice(config: Config, role: ProcessRole) -> int:
    """How much lower than their relay process the parse workers run."""
    if config.server.mode != "after-queue":
        return 0  # every reply waits for its message to be read: nothing to yield to
    if role.work == "reading":
        return 0  # the whole process already runs lower (run_relay), workers with it
    return config.parse.worker_nice


def _freeze_startup_objects() -> None:
    """Keep the detectors, policy and modules out of every later full collection.

    They live as long as the process; without this each full collection walks
    all of them while a client waits (up to 87 ms measured under load, 28 ms
    frozen). A reload builds new detectors, which the collector then tracks
    as usual.
    """
    gc.collect()
    gc.freeze()


def run_relay(
    config_path: Path,
    overrides: Overrides,
    on_ready: Callable[[tuple[str, int]], None] | None = None,
) -> int:
    """Entry point of `smtpguard serve`; raises ConfigError before anything starts."""
    role = role_from_environment()
    config = load_config(config_path, overrides)
    configure_logging(config.logging)
    if role.count > 1:
        structlog.contextvars.bind_contextvars(process=role.index)

    # The relay (or, with several processes, their supervisor) holds its data folder
    # while it runs: its recovery may then release every claim it finds as its own.
    folder = DataFolderLock(config.store.data_dir) if role.count == 1 else None
    if folder is not None:
        folder.acquire()
    supervises = (config.server.processes > 1 or config.server.reading_process) and role.count == 1
    lowers = not supervises and config.parse.worker_nice > 0
    # Asked now, of a child process it waits for, so that the pool built inside the loop
    # finds the answer ready instead of blocking the loop for it.
    if lowers and config.server.mode == "after-queue":
        allowed = may_lower_priority()
        if allowed and role.work == "reading":
            # Reading and delivering yield to taking mail in, as the parse workers do in
            # a single process; the workers inherit it (_worker_nice).
            os.nice(config.parse.worker_nice)

    async def main() -> int:
        if supervises:
            return await Supervisor(config_path, overrides, config).run(on_ready)
        service = RelayService(config_path, overrides, config, role)
        address = await service.start(handle_signals=True)
        _freeze_startup_objects()
        if on_ready is not None:
            on_ready(address)
        await service.run_until_stopped()
        return service.exit_code

    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main())
        return uvloop.run(main())
    finally:
        if folder is not None:
            folder.release()
