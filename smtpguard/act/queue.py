"""The delivery queue: every stored message is attempted until it is finished.

Fresh messages are handed straight to a delivery task; deferred ones are
claimed from the store when their next attempt is due, which is also how
work left by a crash is found again. Per recipient: 2xx is delivered, 4xx or
a network failure is retried with exponential backoff and jitter, 5xx is
bounced with a DSN to the sender. Past the lifetime the message is given up,
also with a DSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import structlog

from smtpguard.act.dsn import FailedRecipient, build_dsn, failed_recipient
from smtpguard.act.upstream import Transaction, Upstream
from smtpguard.config import DeliveryConfig
from smtpguard.config.model import RouteConfig, UpstreamConfig
from smtpguard.envelope import Envelope
from smtpguard.spool import (
    Instructions,
    MessageRecord,
    MessageState,
    Origin,
    RecipientOutcome,
    RecipientState,
    Store,
    message_state_of,
    new_message_id,
)

if TYPE_CHECKING:
    from smtpguard.metrics import RelayMetrics

log = structlog.get_logger("smtpguard.act")

LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class Job:
    """A message for a delivery task; fresh messages come with what is already in memory."""

    message_id: str
    claimed: bool = False
    record: MessageRecord | None = None
    content: bytes | None = None


def retry_delay(config: DeliveryConfig, attempts: int) -> float:
    """Exponential backoff with jitter, so a recovering upstream is not hit by a wave."""
    base: float = min(config.retry_max, config.retry_initial * 2.0 ** max(attempts - 1, 0))
    return base * random.uniform(0.75, 1.25)


def verifies_tls(config: UpstreamConfig) -> bool:
    """Whether a copy that must go by verified TLS may leave through this hop."""
    if isinstance(config, RouteConfig) and config.secure:
        return True
    return config.security != "none" and config.verify_certificate


def tagged(content: bytes, instructions: Instructions) -> bytes:
    """The copy with the verdict header and subject prefix a `tag` verdict asks for."""
    if not instructions.tag_rules and not instructions.subject_prefix:
        return content
    end = content.find(b"\r\n\r\n")
    head, body = (content, b"") if end < 0 else (content[: end + 2], content[end + 2 :])
    if instructions.subject_prefix:
        prefix = instructions.subject_prefix.encode("utf-8")
        lines = head.split(b"\r\n")
        for index, line in enumerate(lines):
            if line[:8].lower() == b"subject:":
                value = line[8:].lstrip()
                if not value.startswith(prefix):
                    lines[index] = b"Subject: " + prefix + b" " + value
                break
        else:
            lines.insert(0, b"Subject: " + prefix)
        head = b"\r\n".join(lines)
    if instructions.tag_rules:
        rules = ", ".join(instructions.tag_rules).encode("ascii", "replace")
        head = b"X-Smtpguard-Tag: " + rules + b"\r\n" + head
    return head + body


def reply_code(reply: str) -> str:
    """The part of a reply that is safe to log.

    An upstream's text can echo an address, so only its codes are kept
    ("451 4.3.0"); smtpguard's own descriptions ("upstream timed out") carry
    nothing from the message and are kept whole.
    """
    words = reply.split()
    if not words or not words[0].isdigit():
        return reply
    if len(words) > 1 and words[1][:1] in "245" and words[1].count(".") == 2:
        return f"{words[0]} {words[1]}"
    return words[0]


async def store_notice(
    store: Store,
    recipient: str,
    notice: bytes,
    *,
    reporting_mta: str,
    lifetime: float,
    smtputf8: bool = False,
) -> str:
    """Store a message smtpguard wrote itself, from the null sender, ready for delivery.

    Any process may call it (the review commands do): the relay's queue finds
    the notice at its next poll.
    """
    now = time.time()
    notice_id = new_message_id()
    envelope = Envelope(
        sender="",
        recipients=(recipient,),
        client_address="127.0.0.1",
        client_name=reporting_mta,
        received_at=now,
        smtputf8=smtputf8,
    )
    await store.accept(
        notice_id,
        envelope,
        notice,
        state=MessageState.QUEUED,
        origin=Origin.NOTICE,
        expires_at=now + lifetime,
    )
    log.info("notice.queued", id=notice_id, size=len(notice), domains=envelope.recipient_domains)
    return notice_id


class DeliveryQueue:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        config: DeliveryConfig,
        reporting_mta: str,
        workers: int,
        routes: Mapping[str, Upstream] | None = None,
        tls_route: str | None = None,
        metrics: RelayMetrics | None = None,
        owner: str | None = None,
        max_waiting_memory: int = 256 * 1024**2,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        # Named next hops (`route` verdicts) and the one that enforces verified TLS
        # onward (`require_tls` when the upstream itself is not verified TLS).
        self.routes: Mapping[str, Upstream] = routes or {}
        self.tls_route = tls_route
        self.config = config
        self.reporting_mta = reporting_mta
        self.workers = workers
        # Leases name their owner; the relay passes its instance's (host and data folder).
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._ready: asyncio.Queue[Job] = asyncio.Queue()
        # Bytes of the messages waiting in `_ready` with their content; past the budget a
        # job waits without it, and its content is read from the store when its turn comes.
        self._ready_bytes = 0
        self.max_waiting_memory = max_waiting_memory
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._poll()))

    def submit(self, job: Job) -> None:
        """A message ready now; unless the job says it is claimed, the task claims it first."""
        size = len(job.content) if job.content is not None else 0
        if self._ready_bytes + size > self.max_waiting_memory:
            job = replace(job, content=None)
        else:
            self._ready_bytes += size
        self._ready.put_nowait(job)

    def lease(self) -> tuple[str, float]:
        """A claim for this queue, for a caller that moves a message straight to delivery."""
        return self.owner, time.time() + LEASE_SECONDS

    def wake(self) -> None:
        """Look for due messages now (after `queue flush`, a release, a reload)."""
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Let attempts in flight finish within `timeout`; unfinished work stays in the store."""
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _poll(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            room = self.workers * 2 - self._ready.qsize()
            if room <= 0 or self._stopping:
                continue
            try:
                released = await self.store.release_due(time.time())
                if released:
                    log.info("message.delay_ended", ids=released)
                due = await self.store.claim_due(time.time(), self.owner, LEASE_SECONDS, room)
            except Exception as exc:
                log.error("queue.poll_failed", error=type(exc).__name__)
                continue
            for message_id in due:
                self._ready.put_nowait(Job(message_id, claimed=True))

    async def _worker(self) -> None:
        while True:
            job = await self._ready.get()
            if job.content is not None:
                self._ready_bytes -= len(job.content)
            if self._stopping:
                continue
            self._busy += 1
            self._idle.clear()
            claimed = job.claimed
            try:
                claimed = claimed or await self.store.claim(
                    job.message_id, self.owner, LEASE_SECONDS
                )
                if claimed:
                    await self.attempt(job)
            except Exception as exc:
                log.error("delivery.failed", id=job.message_id, error=type(exc).__name__)
                if claimed:
                    # The store failed before the outcome was recorded (a full disk, a
                    # lock held too long): the message is still claimed by this queue, which
                    # nothing else takes up while the relay runs, so it is tried again here.
                    asyncio.get_running_loop().call_later(
                        retry_delay(self.config, 1), self._again, replace(job, claimed=True)
                    )
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

    def _again(self, job: Job) -> None:
        if not self._stopping:
            self.submit(job)

    async def attempt(self, job: Job) -> None:
        record = job.record or await self.store.load(job.message_id)
        if record is None:
            return
        pending = record.pending_recipients()
        now = time.time()
        if not pending:
            await self._finish(record, [], now)
            return
        if now >= record.expires_at:
            await self._expire(record, pending, now)
            return
        content = job.content if job.content is not None else await self.store.content(record.id)
        told = {r.address: r.instructions for r in record.recipients}
        groups: dict[Instructions, list[str]] = {}
        for address in pending:
            groups.setdefault(told.get(address, Instructions()), []).append(address)
        started = time.monotonic()
        outcomes: list[RecipientOutcome] = []
        for instructions, recipients in groups.items():
            outcomes += await self._deliver(record, content, instructions, recipients)
        elapsed = time.monotonic() - started
        await self._finish(record, outcomes, now, content=content, elapsed=elapsed)

    async def _deliver(
        self,
        record: MessageRecord,
        content: bytes,
        instructions: Instructions,
        recipients: Sequence[str],
    ) -> list[RecipientOutcome]:
        """One transaction for the recipients that share their delivery instructions."""
        hop, unavailable = self._hop(instructions)
        if hop is None:
            held = [RecipientOutcome(a, RecipientState.HELD, unavailable) for a in recipients]
            if self.metrics is not None:
                self.metrics.delivered(self._route_label(instructions, hop), held, None)
            return held
        transaction = Transaction(
            sender=record.envelope.sender,
            recipients=recipients,
            content=tagged(content, instructions),
            smtputf8=record.envelope.smtputf8,
            body_8bit=record.envelope.body_8bit,
        )
        started = time.monotonic()
        outcomes = await hop.deliver(transaction)
        if self.metrics is not None:
            seconds = time.monotonic() - started
            self.metrics.delivered(self._route_label(instructions, hop), outcomes, seconds)
        return outcomes

    def _route_label(self, instructions: Instructions, hop: Upstream | None) -> str:
        """The configured name of the hop a copy goes (or would go) through, for metrics."""
        if instructions.route:
            return instructions.route
        if hop is self.upstream or self.tls_route is None:
            return "upstream"
        return self.tls_route

    def _hop(self, instructions: Instructions) -> tuple[Upstream | None, str]:
        """The next hop these instructions allow, or why there is none (the copy is held)."""
        hop = self.upstream
        if instructions.route:
            route = self.routes.get(instructions.route)
            if route is None:
                return None, f"held: route {instructions.route} is not configured"
            hop = route
        if instructions.require_tls and not verifies_tls(hop.config):
            if instructions.route or self.tls_route is None:
                return None, "held: verified TLS required and the next hop does not verify TLS"
            tls_hop = self.routes.get(self.tls_route)
            if tls_hop is None:
                return None, f"held: TLS route {self.tls_route} is not configured"
            hop = tls_hop
        return hop, ""

    async def _finish(
        self,
        record: MessageRecord,
        outcomes: Sequence[RecipientOutcome],
        now: float,
        *,
        content: bytes = b"",
        elapsed: float = 0.0,
    ) -> None:
        after = {r.address: r.state for r in record.recipients}
        after.update((o.address, o.state) for o in outcomes)
        state = message_state_of(after.values())
        next_attempt: float | None = None
        if state is MessageState.DEFERRED:
            next_attempt = min(
                now + retry_delay(self.config, record.attempts + 1), record.expires_at
            )
        bounced = [o for o in outcomes if o.state is RecipientState.BOUNCED]
        if bounced:
            # The DSN is stored before the bounce is recorded: a crash in between sends
            # it again after the restart (at least once), never not at all.
            failures = [
                failed_recipient(o.address, o.reply, self.upstream.name, expired=False)
                for o in bounced
            ]
            await self.notify_sender(record, failures, content, expired=False)
        await self._record(record.id, outcomes, state, next_attempt)
        self._log_outcomes(record, outcomes, state, next_attempt, now, elapsed)

    async def _record(
        self,
        message_id: str,
        outcomes: Sequence[RecipientOutcome],
        state: MessageState,
        next_attempt: float | None,
    ) -> None:
        """Record what the upstream said. While the store fails (a full disk, a lock held
        past its busy timeout) this tries again, rather than deliver again later: the
        upstream has answered, and a second copy is only for a crash to cause."""
        while True:
            try:
                await self.store.record_attempt(message_id, outcomes, state, next_attempt)
                return
            except Exception as exc:
                if self._stopping:
                    raise
                log.error("delivery.record_failed", id=message_id, error=type(exc).__name__)
                await asyncio.sleep(retry_delay(self.config, 1))

    async def _expire(self, record: MessageRecord, pending: Sequence[str], now: float) -> None:
        last = {r.address: r.last_reply for r in record.recipients}
        outcomes = [
            RecipientOutcome(a, RecipientState.EXPIRED, last.get(a) or "no reply") for a in pending
        ]
        content = await self.store.content(record.id)
        failures = [failed_recipient(o.address, o.reply, None, expired=True) for o in outcomes]
        # Stored first, as for a bounce: a crash before the record sends it again.
        await self.notify_sender(record, failures, content, expired=True)
        await self._record(record.id, outcomes, MessageState.EXPIRED, None)
        if self.metrics is not None:
            told = {r.address: r.instructions for r in record.recipients}
            for outcome in outcomes:
                instructions = told.get(outcome.address, Instructions())
                route = self._route_label(instructions, self._hop(instructions)[0])
                self.metrics.delivered(route, [outcome], None)
        log.warning(
            "message.expired",
            id=record.id,
            recipients=len(pending),
            domains=_domains(pending),
            attempts=record.attempts,
        )

    async def notify_sender(
        self,
        record: MessageRecord,
        failures: Sequence[FailedRecipient],
        original: bytes,
        *,
        expired: bool,
    ) -> None:
        """Queue a DSN to the sender; never to the null sender, never about our own notices."""
        if not record.envelope.sender or record.origin is Origin.NOTICE:
            return
        notice = build_dsn(
            reporting_mta=self.reporting_mta,
            postmaster=self.config.postmaster,
            original_sender=record.envelope.sender,
            queue_id=record.id,
            arrival=record.envelope.received_at,
            failures=failures,
            original=original,
            expired=expired,
        )
        await self.queue_notice(record.envelope.sender, notice, smtputf8=record.envelope.smtputf8)

    async def queue_notice(self, recipient: str, notice: bytes, *, smtputf8: bool) -> str:
        """Store and queue a message smtpguard wrote itself, from the null sender."""
        notice_id = await store_notice(
            self.store,
            recipient,
            notice,
            reporting_mta=self.reporting_mta,
            lifetime=self.config.lifetime,
            smtputf8=smtputf8,
        )
        self.submit(Job(notice_id, content=notice))
        return notice_id

    def _log_outcomes(
        self,
        record: MessageRecord,
        outcomes: Sequence[RecipientOutcome],
        state: MessageState,
        next_attempt: float | None,
        now: float,
        elapsed: float,
    ) -> None:
        by_state: dict[RecipientState, list[RecipientOutcome]] = {}
        for outcome in outcomes:
            by_state.setdefault(outcome.state, []).append(outcome)
        for rstate, event, level in (
            (RecipientState.DELIVERED, "message.delivered", logging.INFO),
            (RecipientState.DEFERRED, "message.deferred", logging.WARNING),
            (RecipientState.BOUNCED, "message.bounced", logging.WARNING),
            (RecipientState.HELD, "message.held_for_tls", logging.WARNING),
        ):
            group = by_state.get(rstate)
            if not group or not log.is_enabled_for(level):
                continue
            fields: dict[str, object] = {
                "id": record.id,
                "client": record.envelope.client_address,
                "recipients": len(group),
                "domains": _domains([o.address for o in group]),
                "reply": reply_code(group[0].reply),
                "attempt": record.attempts + 1,
                "size": record.size,
                "seconds": round(elapsed, 3),
                "origin": record.origin.value,
            }
            if rstate is RecipientState.DEFERRED and next_attempt is not None:
                fields["retry_in"] = round(next_attempt - now, 1)
            log.log(level, event, **fields)


def _domains(addresses: Sequence[str]) -> list[str]:
    return sorted({a.rpartition("@")[2].lower() for a in addresses})
