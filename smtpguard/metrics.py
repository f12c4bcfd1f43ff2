"""Prometheus metrics and a health check, served over HTTP on the relay's own loop.

Council IT alert on the relay as on any mail server: mail in, verdicts, queue
depth, holds waiting for reviewers, deliveries, and whether it can reach its
store and its upstream. Each RelayService has its own `CollectorRegistry`, so
tests and several relays in one process never share a counter.

Label values are only names the council configured or smtpguard defines:
actions, rules, detectors, states, routes, reply classes. Never an address,
a subject, a file name or anything else from a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from smtpguard.config.model import UpstreamConfig
from smtpguard.decide import Action, RecipientVerdict, Verdict
from smtpguard.spool import MessageState, QueueCounts, RecipientOutcome, RecipientState, Store

log = structlog.get_logger("smtpguard.metrics")

# Scans are milliseconds for a letter and up to the parse timeout for a hostile PDF;
# upstream transactions are milliseconds on a LAN and up to the upstream timeout.
SCAN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Holds are read oldest first; past this many the rest are counted, not read.
HOLDS_READ_LIMIT = 1000
# How often the holds are read from the store (queue depth comes with every pressure check).
HOLDS_REFRESH_SECONDS = 5.0

_OUTCOMES = {
    RecipientState.DELIVERED: "delivered",
    RecipientState.DEFERRED: "deferred",
    RecipientState.BOUNCED: "bounced",
    RecipientState.HELD: "held",
    RecipientState.EXPIRED: "expired",
}
_QUEUE_STATES = tuple(s for s in MessageState if not s.finished)


REPLY_CLASSES = ("2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True)
class Tally:
    """An accepting process's counts so far: the reading process serves them."""

    received: int = 0
    paced: int = 0
    replies: Mapping[str, int] = field(default_factory=dict)
    sessions: int = 0


def verdict_label(verdict: RecipientVerdict) -> str:
    """One action per recipient: the winning action, or for a `pass`, the delivery
    instruction that rides along with it (route, then require_tls, then tag)."""
    if verdict.action is not Action.PASS:
        return verdict.action.value
    if verdict.route:
        return Action.ROUTE.value
    if verdict.require_tls:
        return Action.REQUIRE_TLS.value
    if verdict.tag:
        return Action.TAG.value
    return Action.PASS.value


class RelayMetrics:
    """Every metric of one relay, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_received = Counter(
            "smtpguard_messages_received",
            "Messages accepted (stored and answered 250), by server mode.",
            ["mode"],
            registry=r,
        )
        self.verdicts = Counter(
            "smtpguard_verdicts",
            "Verdicts per recipient, by action.",
            ["action"],
            registry=r,
        )
        self.rules_fired = Counter(
            "smtpguard_rules_fired",
            "Messages on which a policy rule fired (once per message), by rule name.",
            ["rule"],
            registry=r,
        )
        self.findings = Counter(
            "smtpguard_findings",
            "Findings in scanned messages (occurrences, never values), by detector.",
            ["detector"],
            registry=r,
        )
        self.scan_failures = Counter(
            "smtpguard_scan_failures",
            "Scans that failed and will be retried (the message is never sent unscanned).",
            registry=r,
        )
        self.flow_delays = Counter(
            "smtpguard_flow_delays",
            "New messages made to wait because reading was behind"
            " (server.max_unread_wait, server.max_unscanned).",
            registry=r,
        )
        self.scan_seconds = Histogram(
            "smtpguard_scan_seconds",
            "Time to parse, detect and decide one message.",
            buckets=SCAN_BUCKETS,
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "smtpguard_delivery_seconds",
            "Time of one transaction with the next hop, by route (`upstream` or a route name).",
            ["route"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "smtpguard_deliveries",
            "Delivery outcomes per recipient copy, by outcome and route.",
            ["outcome", "route"],
            registry=r,
        )
        self.queue_messages = Gauge(
            "smtpguard_queue_messages",
            "Unfinished messages in the store, by state.",
            ["state"],
            registry=r,
        )
        self.holds_awaiting_review = Gauge(
            "smtpguard_holds_awaiting_review",
            "Messages with at least one copy held for a reviewer.",
            registry=r,
        )
        self.oldest_hold_age = Gauge(
            "smtpguard_oldest_hold_age_seconds",
            "Age of the oldest message held for a reviewer (0 when none).",
            registry=r,
        )
        self.free_disk = Gauge(
            "smtpguard_store_free_disk_bytes",
            "Free disk space where message bytes are kept.",
            registry=r,
        )
        self.sessions_open = Gauge(
            "smtpguard_smtp_sessions_open",
            "SMTP sessions open on the listener.",
            registry=r,
        )
        self.smtp_replies = Counter(
            "smtpguard_smtp_replies",
            "Replies the listener sent, by code class (2xx, 3xx, 4xx, 5xx).",
            ["class"],
            registry=r,
        )
        ProcessCollector(registry=r)
        for state in _QUEUE_STATES:
            self.queue_messages.labels(state.value).set(0)
        # Series that alerts take a rate of exist from the start, at 0.
        for code_class in REPLY_CLASSES:
            self.smtp_replies.labels(code_class)
        for action in Action:
            self.verdicts.labels(action.value)
        for outcome in _OUTCOMES.values():
            self.deliveries.labels(outcome, "upstream")
        self._holds_read_at = float("-inf")
        self._tallies: dict[int, Tally] = {}  # by accepting process (server.reading_process)

    # -- events ---------------------------------------------------------------

    def received(self, mode: str) -> None:
        self.messages_received.labels(mode).inc()

    def scanned(self, seconds: float, verdict: Verdict, findings: Mapping[str, int]) -> None:
        """One message's scan: its time, each recipient's verdict, the rules and findings."""
        self.scan_seconds.observe(seconds)
        for recipient in verdict.recipients.values():
            self.verdicts.labels(verdict_label(recipient)).inc()
        for rule in {rule for v in verdict.recipients.values() for rule in v.rules}:
            self.rules_fired.labels(rule).inc()
        for detector, count in findings.items():
            self.findings.labels(detector).inc(count)

    def paced(self) -> None:
        self.flow_delays.inc()

    def scan_failed(self) -> None:
        self.scan_failures.inc()

    def delivered(
        self, route: str, outcomes: Sequence[RecipientOutcome], seconds: float | None
    ) -> None:
        """One transaction's outcomes; `seconds` is None when no transaction took place."""
        if seconds is not None:
            self.delivery_seconds.labels(route).observe(seconds)
        for outcome in outcomes:
            label = _OUTCOMES.get(outcome.state)
            if label is not None:
                self.deliveries.labels(label, route).inc()

    def replied(self, reply: str) -> None:
        """An SMTP reply sent by the listener (called with the reply line)."""
        first = reply[:1]
        if first in ("2", "3", "4", "5"):
            self.smtp_replies.labels(first + "xx").inc()

    def watch_sessions(self, sessions: Collection[object]) -> None:
        """The open-session gauge reads the listener's live set at scrape time."""
        self.sessions_open.set_function(lambda: float(len(sessions)))

    # -- split between processes (server.reading_process) ------------------------

    def tally(self) -> Tally:
        """In an accepting process: what it counted so far, for the reading process."""
        value = self.registry.get_sample_value
        return Tally(
            received=int(value("smtpguard_messages_received_total", {"mode": "after-queue"}) or 0),
            paced=int(value("smtpguard_flow_delays_total") or 0),
            replies={
                c: int(value("smtpguard_smtp_replies_total", {"class": c}) or 0)
                for c in REPLY_CLASSES
            },
            sessions=int(value("smtpguard_smtp_sessions_open") or 0),
        )

    def count_accepting_processes(self) -> None:
        """In the reading process: sessions are those the accepting processes last said."""
        self.sessions_open.set_function(
            lambda: float(sum(t.sessions for t in self._tallies.values()))
        )

    def add_tally(self, process: int, tally: Tally) -> None:
        """In the reading process: an accepting process's totals; what is new is counted."""
        last = self._tallies.get(process, Tally())
        self.messages_received.labels("after-queue").inc(max(0, tally.received - last.received))
        self.flow_delays.inc(max(0, tally.paced - last.paced))
        for code_class in REPLY_CLASSES:
            new = tally.replies.get(code_class, 0) - last.replies.get(code_class, 0)
            self.smtp_replies.labels(code_class).inc(max(0, new))
        self._tallies[process] = tally

    # -- from the store ---------------------------------------------------------

    async def refresh(self, store: Store, counts: QueueCounts, free_disk: int) -> None:
        """Queue depth from counts the relay already read; the holds every few seconds.

        Called from the relay's pressure check, so the store sees no extra query
        for the queue depth. Errors are logged: a gauge is never worth a crash.
        """
        for state in _QUEUE_STATES:
            self.queue_messages.labels(state.value).set(counts.by_state.get(state, 0))
        self.free_disk.set(free_disk)
        now = time.monotonic()
        if now - self._holds_read_at < HOLDS_REFRESH_SECONDS:
            return
        self._holds_read_at = now
        try:
            awaiting, oldest = await held_for_review(store, counts.by_state.get(MessageState.HELD))
        except Exception as exc:
            log.error("metrics.holds_failed", error=type(exc).__name__)
            return
        self.holds_awaiting_review.set(awaiting)
        self.oldest_hold_age.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def held_for_review(
    store: Store, held_messages: int | None = None, limit: int = HOLDS_READ_LIMIT
) -> tuple[int, float | None]:
    """How many messages have a copy held for a reviewer, and when the oldest arrived.

    HELD messages also include copies that only wait out a delay; those are not
    counted. With `held_messages` (from `store.counts()`) a store without holds
    costs no read, and past `limit` the unread rest are counted as holds.
    """
    if held_messages == 0:
        return 0, None
    records = await store.messages((MessageState.HELD,), limit=limit)
    holding = [r for r in records if any(p.state is RecipientState.HELD for p in r.recipients)]
    awaiting = len(holding)
    if held_messages is not None and len(records) >= limit:
        awaiting += max(0, held_messages - len(records))
    oldest = min((r.envelope.received_at for r in holding), default=None)
    return awaiting, oldest


# -- health ---------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    ok: bool
    problems: tuple[str, ...]


class HealthCheck:
    """Can the relay do its job: does the store answer, does the upstream take a connection?

    The result is kept for `ttl` seconds, so a load balancer polling every second
    costs one store query and one TCP connection per `ttl`, not per poll.
    """

    def __init__(
        self,
        store: Store,
        upstream: Callable[[], UpstreamConfig],
        *,
        ttl: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self.store = store
        self.upstream = upstream  # a callable: a reload may replace the upstream
        self.ttl = ttl
        self.timeout = timeout
        self._cached: tuple[float, Health] | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> Health:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
            found = await asyncio.gather(self._check_store(), self._check_upstream())
            problems = tuple(p for p in found if p is not None)
            health = Health(not problems, problems)
            self._cached = (time.monotonic(), health)
            if problems:
                log.warning("health.failed", problems=list(problems))
            return health

    async def _check_store(self) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.store.counts()
        except TimeoutError:
            return f"store: no answer within {self.timeout:g}s"
        except Exception as exc:
            return f"store: {type(exc).__name__}"
        return None

    async def _check_upstream(self) -> str | None:
        config = self.upstream()
        where = f"upstream {config.host}:{config.port}"
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(config.host, config.port)
        except TimeoutError:
            return f"{where}: no connection within {self.timeout:g}s"
        except socket.gaierror:
            return f"{where}: host name not resolved"
        except OSError as exc:
            # asyncio's own text repeats the address; the errno's words say it plainly.
            return f"{where}: {os.strerror(exc.errno) if exc.errno else type(exc).__name__}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None


# -- HTTP -------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REQUEST_SECONDS = 5.0


class MetricsServer:
    """A minimal HTTP/1.0-style server: GET or HEAD of /metrics and /healthz, then close.

    Prometheus needs no more, and a web framework would be more code to trust
    on a relay that carries case data.
    """

    def __init__(self, metrics: RelayMetrics, health: HealthCheck) -> None:
        self.metrics = metrics
        self.health = health
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Binds now (port 0 picks a free port); returns the address bound."""
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                async with asyncio.timeout(_REQUEST_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            status, content_type, body, head_only = await self._respond(head)
            reason = _REASONS.get(status, "Service Unavailable")
            lines = [
                f"HTTP/1.1 {status} {reason}",
                f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}",
                "Cache-Control: no-store",
                "Connection: close",
            ]
            if status == 405:
                lines.append("Allow: GET, HEAD")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
            if not head_only:
                writer.write(body)
            async with asyncio.timeout(_REQUEST_SECONDS):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        except Exception as exc:
            log.error("metrics.request_failed", error=type(exc).__name__)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes, bool]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        text = "text/plain; charset=utf-8"
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n", False
        head_only = method == "HEAD"
        if target == "/metrics":
            # Collecting reads /proc and takes the metrics' locks: off the loop.
            body = await asyncio.to_thread(self.metrics.exposition)
            return 200, CONTENT_TYPE_LATEST, body, head_only
        if target == "/healthz":
            health = await self.health.check()
            if health.ok:
                return 200, text, b"ok\n", head_only
            return 503, text, "".join(f"{p}\n" for p in health.problems).encode(), head_only
        return 404, text, b"not found: try /metrics or /healthz\n", False
