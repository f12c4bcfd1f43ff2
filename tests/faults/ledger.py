"""The ledger behind the fault tests: what the relay promised, against what happened.

Every message the load generator sends carries a unique token (in its
Message-ID and in a body line). The ledger records the relay's answer to each
one: 250 with a queue id, 4xx, 5xx, or a connection that broke. The sink
records every copy and every notice that reaches it, by token, and which
relay run delivered it. At the end, with the relay stopped, the store (the
SQLite file in the data folder or, for a relay on PostgreSQL, the test's
database: `Runs.backend`) says what became of each queue id. `settle` then
holds the relay to its word:

- every 250'd message is delivered (a copy at the sink, DELIVERED in the
  store), held (HELD, its bytes still in the store, nothing at the sink), or
  bounced (BOUNCED or, refused by the policy, REJECTED; a DSN to the sender
  at the sink, no copy);
- nothing arrives that was never sent, and nothing arrives twice, except in
  the documented at-least-once window: the upstream accepted a copy and the
  relay never recorded it (killed before its commit, a store write that
  failed, or a connection that timed out while the upstream was still
  answering). Each duplicate must be explained by one of those, and they are
  counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import re
import signal
import smtplib
import socket
import sqlite3
import time
import weakref
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP

from smtpguard.spool import UNFINISHED, MessageState, RecipientState, Store, open_store
from tests.conftest import write_config
from tests.processes import (
    RECIPIENT,
    SENDER,
    RelayLauncher,
    RelayProcess,
    Reply,
    ReservedSink,
    is_running,
    send_message,
    serving_processes,
)
from tests.sink import Captured, CaptureHandler

TOKEN = re.compile(rb"ledger-[0-9a-f]{16}")
_RECEIVED_ID = re.compile(rb"\(smtpguard\) with [A-Z0-9]+ id ([0-9A-F]+);")

HOLD_WORD = "HOLDME"
REJECT_WORD = "REJECTME"
# The sink refuses this recipient permanently at RCPT: its messages must bounce.
REFUSED_RECIPIENT = "nobody@refused.example.org"

HOLD_POLICY = f"""
rules:
  - name: hold-marked
    description: the subject asks for a hold
    when: {{subject: {{matches: {HOLD_WORD}}}}}
    action: quarantine
    severity: high
  - name: refuse-marked
    description: the subject asks for a refusal
    when: {{subject: {{matches: {REJECT_WORD}}}}}
    action: reject
    severity: critical
"""

# What every fault test runs with; a test changes what its fault needs.
FAULT_CONFIG: dict[str, dict[str, Any]] = {
    "server": {"drain_timeout": "3s"},
    "upstream": {"timeout": "5s"},
    "delivery": {"retry_initial": "200ms", "retry_max": "1s", "poll_interval": "100ms"},
    "store": {"min_free_disk": "1MB"},
    "parse": {"workers": 1},
    "policy": {"file": "policy.yaml"},
    "logging": {"level": "info", "format": "json"},
}

# Log events that mean the relay hit trouble it survived; counted in the report.
TROUBLE_EVENTS = (
    "message.store_failed",
    "store.index_failed",
    "delivery.failed",
    "delivery.record_failed",
    "queue.poll_failed",
    "pressure.check_failed",
    "scan.failed",
    "session.error",
    "notice.failed",
)


def write_fault_config(tmp_path: Path, changes: dict[str, dict[str, Any]] | None = None) -> Path:
    """The relay's config in `tmp_path`, with the hold policy beside it."""
    (tmp_path / "policy.yaml").write_text(HOLD_POLICY, encoding="utf-8")
    sections = {name: dict(values) for name, values in FAULT_CONFIG.items()}
    for name, values in (changes or {}).items():
        sections.setdefault(name, {}).update(values)
    return write_config(tmp_path, sections)


# -- messages and answers -------------------------------------------------------


class Kind(enum.StrEnum):
    NORMAL = "normal"  # must be delivered (or bounced, if the sink refused it for good)
    HOLD = "hold"  # the policy quarantines it: must stay held
    REJECT = "reject"  # the policy refuses it: after the 250, a bounce to the sender
    BOUNCE = "bounce"  # to the recipient the sink refuses: must bounce


class Answer(enum.StrEnum):
    ACCEPTED = "250"
    TEMPFAIL = "4xx"
    PERMFAIL = "5xx"
    DROPPED = "dropped"  # the session broke before the DATA reply was read
    UNREACHABLE = "unreachable"  # connection refused: nothing was sent


@dataclass(frozen=True)
class Draft:
    token: str
    kind: Kind
    content: bytes
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    answer: Answer
    code: int = 0
    stage: str = ""
    queue_id: str | None = None
    error: str = ""
    at: float = field(default_factory=time.monotonic)  # when the answer came
    took: float = 0.0  # seconds from connecting to the answer


def ledger_message(token: str, kind: Kind, size: int) -> bytes:
    """A plain-text message that names its token twice and needs dot-stuffing."""
    word = {Kind.HOLD: f" {HOLD_WORD}", Kind.REJECT: f" {REJECT_WORD}"}.get(kind, "")
    subject = f"ledger {token}{word}"
    recipient = REFUSED_RECIPIENT if kind is Kind.BOUNCE else RECIPIENT
    head = (
        f"From: Case Worker <{SENDER}>\r\n"
        f"To: <{recipient}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <{token}@ledger.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        f"Ledger token: {token}\r\n"
        ".a line that starts with a dot\r\n"
    ).encode("ascii")
    line = b"the quick brown fox jumps over the lazy dog, again and again and again\r\n"
    filler = line * max(0, (size - len(head)) // len(line))
    return head + filler + b"-- \r\nend\r\n"


def transact(port: int, draft: Draft) -> Outcome:
    """One SMTP transaction (blocking): the relay's answer, or how the session broke."""
    started = time.monotonic()
    outcome = _transact(port, draft)
    return replace(outcome, took=outcome.at - started)


def _transact(port: int, draft: Draft) -> Outcome:
    replies: list[Reply] = []
    try:
        reply = send_message(
            port, draft.content, recipients=draft.recipients, after_data=replies.append
        )
    except ConnectionRefusedError:
        return Outcome(Answer.UNREACHABLE, error="ConnectionRefusedError")
    except smtplib.SMTPResponseException as exc:
        if replies:  # the DATA reply was in; only QUIT went wrong
            reply = replies[0]
        else:
            return _coded(exc.smtp_code, "SESSION", None)
    except (OSError, smtplib.SMTPException) as exc:
        if not replies:
            return Outcome(Answer.DROPPED, error=type(exc).__name__)
        reply = replies[0]
    queue_id = reply.queue_id if reply.code == 250 else None
    return _coded(reply.code, reply.stage, queue_id)


def _coded(code: int, stage: str, queue_id: str | None) -> Outcome:
    if code == 250:
        return Outcome(Answer.ACCEPTED, code, stage, queue_id)
    if 400 <= code < 500:
        return Outcome(Answer.TEMPFAIL, code, stage)
    return Outcome(Answer.PERMFAIL, code, stage)


@dataclass(frozen=True)
class Sent:
    draft: Draft
    outcome: Outcome


class Ledger:
    """Writes the messages and keeps the relay's answer to each."""

    def __init__(
        self,
        seed: int,
        *,
        hold_share: float = 0.03,
        bounce_share: float = 0.03,
        reject_share: float = 0.02,
        sizes: tuple[int, int] = (800, 6000),
        large_share: float = 0.05,
        large_size: int = 20_000,
    ) -> None:
        self.rng = random.Random(seed)
        self.hold_share = hold_share
        self.bounce_share = bounce_share
        self.reject_share = reject_share
        self.sizes = sizes
        self.large_share = large_share
        self.large_size = large_size
        self.drafts: dict[str, Draft] = {}
        self.sent: list[Sent] = []
        self.unreachable = 0

    def draft(self) -> Draft:
        token = f"ledger-{len(self.drafts):06x}{self.rng.getrandbits(40):010x}"
        roll = self.rng.random()
        if roll < self.hold_share:
            kind = Kind.HOLD
        elif roll < self.hold_share + self.bounce_share:
            kind = Kind.BOUNCE
        elif roll < self.hold_share + self.bounce_share + self.reject_share:
            kind = Kind.REJECT
        else:
            kind = Kind.NORMAL
        if self.rng.random() < self.large_share:
            size = self.large_size  # read by a parse worker, not on the relay's loop
        else:
            size = self.rng.randint(*self.sizes)
        recipient = REFUSED_RECIPIENT if kind is Kind.BOUNCE else RECIPIENT
        draft = Draft(token, kind, ledger_message(token, kind, size), (recipient,))
        self.drafts[token] = draft
        return draft

    def record(self, draft: Draft, outcome: Outcome) -> None:
        if outcome.answer is Answer.UNREACHABLE:
            self.unreachable += 1  # never transmitted: not a message the relay saw
            del self.drafts[draft.token]
            return
        self.sent.append(Sent(draft, outcome))

    def answered(self, *answers: Answer) -> list[Sent]:
        return [s for s in self.sent if s.outcome.answer in answers]

    def accepted(self) -> dict[str, Sent]:
        return {s.draft.token: s for s in self.answered(Answer.ACCEPTED)}

    def counts(self) -> Counter[str]:
        return Counter(s.outcome.answer.value for s in self.sent)


class Load:
    """Senders that keep sending fresh messages to wherever the relay listens now."""

    def __init__(
        self,
        ledger: Ledger,
        port: Callable[[], int | None],
        *,
        senders: int = 4,
        limit: int = 1000,
        pause: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self.port = port
        self.senders = senders
        self.limit = limit
        self.pause = pause
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=senders, thread_name_prefix="ledger-load")
        self.progress = asyncio.Event()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._sender()) for _ in range(self.senders)]

    async def _sender(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set() and len(self.ledger.sent) < self.limit:
            port = self.port()
            if port is None:
                await asyncio.sleep(0.05)
                continue
            draft = self.ledger.draft()
            outcome = await loop.run_in_executor(self._pool, transact, port, draft)
            self.ledger.record(draft, outcome)
            self.progress.set()
            if outcome.answer is not Answer.ACCEPTED:
                await asyncio.sleep(0.05)  # the client was told to come back later
            elif self.pause:
                await asyncio.sleep(self.pause)

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `condition` holds, while the senders go on; fails if they stop first."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    for task in self._tasks:
                        if task.done():
                            task.result()  # a sender's own failure, raised here
                            raise AssertionError(f"the senders stopped before {what}")
                    self.progress.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await self.progress.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    async def stop(self) -> None:
        self._stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*self._tasks)
        self._pool.shutdown(wait=True)


# -- the upstream -------------------------------------------------------------------


class Fault(enum.StrEnum):
    TEMPFAIL = "4xx"  # 451 at RCPT or at the end of DATA
    PERMFAIL = "5xx"  # 554 at the end of DATA: the message must bounce
    DROP = "drop"  # the connection is cut at the end of DATA, before any reply
    STALL = "stall"  # no reply until the relay's timeout has passed; nothing kept
    LATE = "late"  # kept, but the 250 comes after the relay's timeout (at-least-once)


@dataclass
class FaultPlan:
    """Which fault, if any, the sink plays at each RCPT and DATA (seeded)."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    rcpt: dict[Fault, float] = field(default_factory=dict)
    data: dict[Fault, float] = field(default_factory=dict)
    stall: float = 0.0  # how long a STALL or LATE answer takes

    def pick(self, table: dict[Fault, float], notice: bool) -> Fault | None:
        roll = self.rng.random()
        for fault, share in table.items():
            if roll < share:
                # A notice refused for good would be dropped unseen (a bounce about a
                # bounce is never sent), and a late one would be a second notice: notices
                # only get the faults that must be retried.
                if notice and fault not in (Fault.TEMPFAIL, Fault.DROP):
                    return None
                return fault
            roll -= share
        return None


@dataclass
class Arrival:
    """One copy the sink kept."""

    token: str | None
    notice: bool  # from the null sender: a DSN or a hold notice
    dsn: bool
    queue_id: str | None  # of the relayed message (its Received header); None for notices
    run: int  # which relay run delivered it
    late: bool


def _null_sender(address: str | None) -> bool:
    return address in (None, "", "<>")


def token_of(content: bytes) -> str | None:
    match = TOKEN.search(content)
    return match.group(0).decode() if match else None


@dataclass
class LedgerHandler(CaptureHandler):
    plan: FaultPlan = field(default_factory=FaultPlan)
    run: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    late: Counter[str] = field(default_factory=Counter)  # token -> late acceptances
    refused: set[str] = field(default_factory=set)  # tokens the sink refused for good
    refusals: Counter[int] = field(default_factory=Counter)  # relay run -> 5xx given to it
    injected: Counter[str] = field(default_factory=Counter)
    # Called as a copy is kept, before the 250 goes back (a test may kill the relay there),
    # and as the refused recipient gets its 550.
    on_keep: Callable[[Arrival], None] | None = None
    on_refuse: Callable[[], None] | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address == REFUSED_RECIPIENT:
            self.refusals[self.run] += 1
            if self.on_refuse is not None:
                self.on_refuse()
            return "550 5.1.1 No such user here"
        fault = self.plan.pick(self.plan.rcpt, notice=_null_sender(envelope.mail_from))
        if fault is not None:
            self.injected[f"rcpt-{fault.value}"] += 1
        if fault is Fault.TEMPFAIL:
            return "451 4.3.0 Sink says try again later"
        if fault in (Fault.STALL, Fault.LATE):
            await asyncio.sleep(self.plan.stall)  # cancelled when the relay gives up
            return "451 4.4.2 Too slow"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content
        notice = _null_sender(envelope.mail_from)
        fault = self.plan.pick(self.plan.data, notice=notice)
        if fault is not None:
            self.injected[f"data-{fault.value}"] += 1
        token = token_of(content)
        if fault is Fault.TEMPFAIL:
            return "451 4.3.0 Sink says try again later"
        if fault is Fault.PERMFAIL:
            if token is not None:
                self.refused.add(token)
            self.refusals[self.run] += 1
            return "554 5.7.1 Sink refuses this message"
        if fault is Fault.DROP:
            server.transport.abort()
            await asyncio.sleep(3600)  # connection_lost cancels this handler
        message = Captured(
            envelope.mail_from, list(envelope.rcpt_tos), content, list(envelope.mail_options)
        )
        if fault is Fault.STALL:
            await asyncio.sleep(self.plan.stall)  # cancelled when the relay gives up
            return "451 4.4.2 Too slow"
        if fault is Fault.LATE:
            # Kept whatever the relay does meanwhile: a task of its own, as a real MTA
            # that has committed the message before it answers.
            asyncio.get_running_loop().call_later(
                self.plan.stall, self._keep, message, token, notice, True
            )
            await asyncio.sleep(self.plan.stall)
            return "250 2.0.0 Captured, late"
        self._keep(message, token, notice, False)
        return "250 2.0.0 Captured"

    def _keep(self, message: Captured, token: str | None, notice: bool, late: bool) -> None:
        found = _RECEIVED_ID.search(message.content[:600]) if not notice else None
        arrival = Arrival(
            token=token,
            notice=notice,
            dsn=notice and b"message/delivery-status" in message.content,
            queue_id=found.group(1).decode() if found else None,
            run=self.run,
            late=late,
        )
        if late and token is not None:
            self.late[token] += 1
        self.messages.append(message)
        self.arrivals.append(arrival)
        self.arrived.set()
        if self.on_keep is not None:
            self.on_keep(arrival)


class LedgerSink(ReservedSink):
    """The capture sink on a reserved port that can also go down and come back."""

    handler: LedgerHandler

    def __init__(self, plan: FaultPlan | None = None) -> None:
        super().__init__()
        # The port again, with SO_REUSEADDR (as every socket accepted on it will have), so
        # that it can listen there again while closed connections linger in TIME_WAIT.
        assert self._socket is not None
        self._socket.close()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", self.port))
        self.handler = LedgerHandler(plan=plan or FaultPlan())
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.downs = 0
        self.up = False

    def _session(self) -> SMTP:
        protocol = SMTP(self.handler, enable_SMTPUTF8=True, hostname="sink.test")
        self._sessions.add(protocol)
        return protocol

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self._socket is not None:
            self._server = await loop.create_server(self._session, sock=self._socket)
            self._socket = None
        else:
            self._server = await loop.create_server(
                self._session, host="127.0.0.1", port=self.port, reuse_address=True
            )
        self.up = True

    async def go_down(self) -> None:
        """Refuse new connections and close the open ones (replies already sent get out)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for protocol in list(self._sessions):
            if protocol.transport is not None:
                protocol.transport.close()
        self.downs += 1
        self.up = False

    async def stop(self) -> None:
        await super().stop()
        for protocol in list(self._sessions):
            if protocol.transport is not None:
                protocol.transport.abort()


# -- the relay's runs ---------------------------------------------------------------


class Runs:
    """The relay processes of one test, one after another on one data folder.

    With `dsn` the relay keeps its store in that PostgreSQL database (the config
    says `store.backend: postgresql` and the same DSN); otherwise in the SQLite
    file in `data_dir`.
    """

    def __init__(
        self,
        launcher: RelayLauncher,
        config: Path,
        data_dir: Path,
        sink: LedgerSink,
        *,
        processes: int = 1,
        dsn: str | None = None,
    ) -> None:
        self.launcher = launcher
        self.config = config
        self.data_dir = data_dir
        self.sink = sink
        self.processes = processes  # the config's server.processes
        self.dsn = dsn
        self.backend = "postgresql" if dsn else "sqlite"
        self.runs: list[RelayProcess] = []
        self.ends: list[str] = []  # how each finished run ended: "SIGKILL" or "SIGTERM"
        self.current: RelayProcess | None = None
        self._children: list[int] = []  # the running parent's relay processes

    def port(self) -> int | None:
        relay = self.current
        return relay.port if relay is not None and relay.returncode is None else None

    async def start(self) -> RelayProcess:
        assert self.current is None, "a relay is running already"
        self.sink.handler.run = len(self.runs)  # its deliveries start before it listens
        relay = await self.launcher.start(self.config, self.data_dir, self.sink.port)
        if self.processes > 1:
            self._children = await serving_processes(relay, self.processes)
        self.runs.append(relay)
        self.current = relay
        return relay

    async def kill(self, *, signalled: bool = False) -> None:
        """SIGKILL the running relay (unless `signalled`: something else has) and reap it."""
        relay = self.current
        assert relay is not None, "no relay is running"
        if not signalled:
            self._running().send_signal(signal.SIGKILL)
        code = await relay.wait_exit(timeout=10)
        assert code == -signal.SIGKILL, (code, relay.log_text()[-3000:])
        # Gone with their parent: nothing of this run may still deliver during the next.
        outlived = [pid for pid in self._children if is_running(pid)]
        assert outlived == [], f"relay processes {outlived} outlived their killed parent"
        self.ends.append("SIGKILL")
        self.current = None

    async def stop(self) -> None:
        relay = self._running()
        relay.send_signal(signal.SIGTERM)
        code = await relay.wait_exit(timeout=30)
        assert code == 0, (code, relay.log_text()[-3000:])
        self.ends.append("SIGTERM")
        self.current = None

    def _running(self) -> RelayProcess:
        relay = self.current
        assert relay is not None, "no relay is running"
        assert relay.returncode is None, f"the relay died ({relay.returncode}):\n" + "\n".join(
            relay.lines[-40:]
        )
        return relay

    @property
    def kills(self) -> int:
        return self.ends.count("SIGKILL")

    def store(self) -> Store:
        """The relay's store, through the project's own API (open it, close it after).

        For reading only: with PostgreSQL its lease owner is this test process, and
        nothing here calls `recover`.
        """
        return open_store(self.backend, self.data_dir, dsn=self.dsn)

    async def states(self) -> dict[str, str]:
        """Every message's state, read while the relay runs."""
        if self.dsn is None:
            return await asyncio.to_thread(read_states, self.data_dir)
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT id, state FROM messages")
        finally:
            await conn.close()
        return {str(row["id"]): str(row["state"]) for row in rows}

    def trouble(self) -> Counter[str]:
        return Counter(
            e["event"] for relay in self.runs for e in relay.events if e["event"] in TROUBLE_EVENTS
        )

    def tracebacks(self) -> list[str]:
        return [
            f"run {n}: {line}"
            for n, relay in enumerate(self.runs)
            for line in relay.lines
            if "Traceback" in line
        ]


# -- draining and settling -------------------------------------------------------------

_UNFINISHED = {s.value for s in UNFINISHED}
_ENDED = {
    MessageState.DELIVERED.value,
    MessageState.BOUNCED.value,
    MessageState.HELD.value,
    MessageState.REJECTED.value,
}
_BOUNCED = {MessageState.BOUNCED.value, MessageState.REJECTED.value}


def read_states(data_dir: Path) -> dict[str, str]:
    """Every message's state in the SQLite file, read-only, while the relay runs."""
    uri = f"{(data_dir / 'smtpguard.db').as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=15)) as db:
        return dict(db.execute("SELECT id, state FROM messages").fetchall())


def _waiting_for(ledger: Ledger, sink: LedgerSink, states: dict[str, str]) -> list[str]:
    why = []
    dsns = {a.token for a in sink.handler.arrivals if a.dsn}
    for token, sent in ledger.accepted().items():
        state = states.get(sent.outcome.queue_id or "")
        if state not in _ENDED:
            why.append(f"{token} ({sent.outcome.queue_id}) is {state}")
        elif state in _BOUNCED and token not in dsns:
            why.append(f"{token} ({sent.outcome.queue_id}) {state}, {_NO_DSN}")
    why += [f"{qid} is {state}" for qid, state in states.items() if state in _UNFINISHED]
    return why


_NO_DSN = "no DSN yet"


async def drain(ledger: Ledger, sink: LedgerSink, runs: Runs, timeout: float) -> None:
    """Until every 250'd message has ended and nothing else is unfinished (twice in a row,
    past the half second an accepted message's row may wait).

    A DSN still missing when nothing at all is left to do for a few seconds will
    never come: that is for `settle` to report, not for this to wait out.
    """
    quiet = idle = 0
    why: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while quiet < 2 and idle < 5:
                await asyncio.sleep(0.6)
                states = await runs.states()
                why = _waiting_for(ledger, sink, states)
                quiet = 0 if why else quiet + 1
                idle = idle + 1 if why and all(_NO_DSN in w for w in why) else 0
    except TimeoutError:
        raise AssertionError(
            f"not drained after {timeout}s: {len(why)} waiting, e.g. {why[:10]};"
            f" relay trouble: {dict(runs.trouble())}"
        ) from None


@dataclass
class Report:
    fault: str
    answers: Counter[str] = field(default_factory=Counter)
    unreachable: int = 0
    delivered: int = 0
    held: int = 0
    bounced: int = 0
    rejected: int = 0  # refused by policy after the 250: bounced without the content
    lost: int = 0
    duplicated: int = 0  # extra copies (relayed mail and notices)
    late_explained: int = 0  # duplicates of a copy the sink kept after the relay's timeout
    kill_explained: int = 0  # duplicates of a copy delivered by a run killed before its commit
    kills: int = 0
    kills_in_flight: int = 0
    unanswered_arrived: int = 0  # not 250'd, delivered anyway (stored before the session broke)
    # Held messages whose sender was never told (the notice is stored after the hold is
    # recorded: a crash in between, or a full disk, costs the notice, not the message).
    hold_notices_missing: int = 0
    # Spool files left beside the finished messages; None with PostgreSQL (no spool files).
    spare_files: int | None = 0
    injected: Counter[str] = field(default_factory=Counter)
    trouble: Counter[str] = field(default_factory=Counter)
    extra: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.answers.values())

    @property
    def accepted(self) -> int:
        return self.answers[Answer.ACCEPTED.value]

    def line(self) -> str:
        answers = ", ".join(f"{k}={v}" for k, v in sorted(self.answers.items()))
        parts = [
            f"LEDGER {self.fault}: sent={self.sent} ({answers}; unreachable={self.unreachable})",
            f"delivered={self.delivered} held={self.held} bounced={self.bounced}"
            f" rejected={self.rejected}"
            f" lost={self.lost} duplicated={self.duplicated}"
            f" (late={self.late_explained} kill={self.kill_explained})",
            f"kills={self.kills} in_flight={self.kills_in_flight}",
            f"unanswered_arrived={self.unanswered_arrived}"
            f" spare_files={'n/a' if self.spare_files is None else self.spare_files}"
            f" hold_notices_missing={self.hold_notices_missing}",
        ]
        if self.injected:
            parts.append(f"injected={dict(sorted(self.injected.items()))}")
        if self.trouble:
            parts.append(f"trouble={dict(sorted(self.trouble.items()))}")
        if self.extra:
            parts.append(f"{self.extra}")
        return " | ".join(parts)


@dataclass(frozen=True)
class _RunLog:
    """What one relay run logged about the outcomes it committed."""

    delivered: set[str]  # relayed messages whose delivery it committed (logged after)
    notices: int  # notices whose delivery it committed
    bounced: int  # bounces it committed (logged after the commit)
    failed: set[str]  # messages whose attempt failed in the store (tried again)
    # Messages the policy held or refused: their notice or bounce is stored before the
    # verdict is recorded, and stored again if a kill makes the relay scan them again.
    verdicts: set[str]


def _run_log(relay: RelayProcess) -> _RunLog:
    delivered = relay.named("message.delivered")
    return _RunLog(
        delivered={e["id"] for e in delivered if e.get("origin") != "notice"},
        notices=sum(1 for e in delivered if e.get("origin") == "notice"),
        bounced=len(relay.named("message.bounced")),
        failed={e["id"] for e in relay.named("delivery.failed")},
        verdicts={e["id"] for e in relay.named("message.verdict")},
    )


async def settle(
    fault: str, ledger: Ledger, sink: LedgerSink, runs: Runs, *, in_flight_limit: int = 1
) -> Report:
    """Hold the final state (store, sink, relay logs) to the ledger; the relay is stopped.

    `in_flight_limit`: how many deliveries one run can have between the upstream's 250
    and its commit (the delivery workers, upstream.max_connections).
    """
    assert runs.current is None, "stop the relay before settling"
    handler = sink.handler
    report = Report(
        fault,
        answers=ledger.counts(),
        unreachable=ledger.unreachable,
        kills=runs.kills,
        injected=handler.injected + Counter(down=sink.downs),
        trouble=runs.trouble(),
    )
    problems = report.problems
    problems += runs.tracebacks()[:5]

    copies: dict[str, list[Arrival]] = {}
    dsns: Counter[str] = Counter()
    hold_notices: Counter[str] = Counter()
    for arrival in handler.arrivals:
        if arrival.token is None or arrival.token not in ledger.drafts:
            problems.append(f"the sink got something never sent: {arrival}")
        elif not arrival.notice:
            copies.setdefault(arrival.token, []).append(arrival)
        elif arrival.dsn:
            dsns[arrival.token] += 1
        else:
            hold_notices[arrival.token] += 1

    store = runs.store()
    await store.open()
    try:
        accepted = ledger.accepted()
        records = {t: await store.load(s.outcome.queue_id or "") for t, s in accepted.items()}
        unfinished = await store.messages(UNFINISHED)
        held_rows = await store.messages([MessageState.HELD])
        held_bytes = {row.id: await store.content(row.id) for row in held_rows}
    finally:
        await store.close()
    problems += [f"unfinished after draining: {r.id} {r.state}" for r in unfinished]

    for token, sent in accepted.items():
        kind = sent.draft.kind
        record = records[token]
        got = len(copies.get(token, ()))
        state = record.state if record is not None else None
        what = f"{token} ({kind}, {sent.outcome.queue_id}): store {state}, copies {got}"
        if record is None:
            ok = False
        elif kind is Kind.HOLD:
            ok = (
                state is MessageState.HELD
                and [r.state for r in record.recipients] == [RecipientState.HELD]
                and got == 0
                and token.encode() in held_bytes.get(record.id, b"")
            )
            report.held += ok
            report.hold_notices_missing += ok and not hold_notices[token]
        elif state is MessageState.DELIVERED:
            # A message the sink refused for good is bounced, never retried into delivery.
            ok = kind is Kind.NORMAL and got >= 1 and token not in handler.refused
            report.delivered += ok
        elif state is MessageState.BOUNCED:
            refused = kind is Kind.BOUNCE or token in handler.refused
            ok = refused and dsns[token] >= 1 and got <= handler.late[token]
            report.bounced += ok
            what += f", DSNs {dsns[token]}, refused by sink {refused}"
        elif state is MessageState.REJECTED:
            ok = kind is Kind.REJECT and dsns[token] >= 1 and got == 0
            report.rejected += ok
            what += f", DSNs {dsns[token]}"
        else:
            ok = False
        if not ok:
            report.lost += 1
            problems.append(f"not seen through: {what}")
    for row in held_rows:
        # A held message the client never got a 250 for (stored, then the session broke)
        # is fine, as long as it is one the policy holds.
        draft = ledger.drafts.get(token_of(held_bytes.get(row.id, b"")) or "")
        if draft is None or draft.kind is not Kind.HOLD:
            problems.append(f"held, but not a message the policy holds: {row.id}")

    for sent in ledger.answered(Answer.TEMPFAIL, Answer.PERMFAIL, Answer.DROPPED):
        report.unanswered_arrived += bool(copies.get(sent.draft.token))

    _count_duplicates(report, runs, copies, dsns, hold_notices, handler.late, in_flight_limit)
    if runs.backend != "sqlite":  # PostgreSQL keeps message bytes in the database, no files
        report.spare_files = None
    else:
        spool = runs.data_dir / "spool"
        held_files = {f"{r.id}.eml" for r in held_rows}
        report.spare_files = sum(
            1 for p in spool.iterdir() if p.name.endswith(".eml") and p.name not in held_files
        )
    return report


def _count_duplicates(
    report: Report,
    runs: Runs,
    copies: dict[str, list[Arrival]],
    dsns: Counter[str],
    hold_notices: Counter[str],
    late: Counter[str],
    in_flight_limit: int,
) -> None:
    """Every extra copy must be explained: kept late by the sink, or handed over by a run
    that was killed before it could record the outcome (a store that fails is waited
    for: the outcome is recorded, not the message sent again).

    Per run, "uncommitted" counts the outcomes the upstream gave that the run never
    recorded: copies kept (not late), 5xx refusals, and policy verdicts (holds, refusals)
    it had to reach again after a kill. Only a killed run may have any; with one delivery worker, at
    most one delivery outcome each.
    """
    logs = [_run_log(relay) for relay in runs.runs]
    killed = [end == "SIGKILL" for end in runs.ends] + [False] * (len(runs.runs) - len(runs.ends))
    handler = runs.sink.handler
    kept = [0] * len(runs.runs)
    notices = [0] * len(runs.runs)
    for arrival in handler.arrivals:
        if arrival.late:
            continue  # the relay had given up on it, and rightly recorded no delivery
        if arrival.notice:
            notices[arrival.run] += 1
        elif arrival.queue_id not in logs[arrival.run].delivered | logs[arrival.run].failed:
            kept[arrival.run] += 1
    later_verdicts = [
        set().union(*(later.verdicts for later in logs[n + 1 :])) for n in range(len(logs))
    ]
    uncommitted = []
    problems = report.problems
    for n, log in enumerate(logs):
        deliveries = kept[n] + max(0, handler.refusals[n] - log.bounced)
        redone = len(log.verdicts & later_verdicts[n])
        uncommitted.append(deliveries + max(0, notices[n] - log.notices) + redone)
        if not killed[n] and deliveries + redone and not log.failed:
            problems.append(f"run {n} was not killed but left {deliveries + redone} unrecorded")
        if killed[n] and kept[n] + max(0, handler.refusals[n] - log.bounced) > in_flight_limit:
            problems.append(f"run {n} had {deliveries} deliveries unrecorded at its kill")
    report.kills_in_flight = sum(1 for n, count in enumerate(uncommitted) if killed[n] and count)
    budget = sum(count for n, count in enumerate(uncommitted) if killed[n])

    # Relayed copies, token by token: the copy before each extra one must be late, or
    # from a run that never recorded it (killed, or its store failed and it tried again).
    for token, arrived in copies.items():
        extra = len(arrived) - 1
        if extra <= 0:
            continue
        report.duplicated += extra
        by_late = min(extra, late[token])
        report.late_explained += by_late
        unexplained = extra - by_late
        for arrival in arrived[:-1]:
            log = logs[arrival.run]
            unrecorded = not arrival.late and arrival.queue_id not in log.delivered
            if unexplained and unrecorded and killed[arrival.run]:
                report.kill_explained += 1
                unexplained -= 1
        if unexplained:
            runs_of = [a.run for a in arrived]
            problems.append(f"{token} arrived {len(arrived)} times (runs {runs_of}): unexplained")
    # Notices carry no queue id of their own: counted against what the killed runs left
    # unrecorded (a DSN is stored before its bounce is recorded, and sent again if the
    # bounce has to be made again).
    notice_extra = sum(n - 1 for n in (*dsns.values(), *hold_notices.values()) if n > 1)
    room = max(0, budget - report.kill_explained)
    report.duplicated += notice_extra
    report.kill_explained += min(notice_extra, room)
    if notice_extra > room:
        problems.append(f"{notice_extra} duplicate notice(s), only {room} explained by kills")


def integrity(data_dir: Path) -> str:
    """SQLite's `PRAGMA integrity_check` on the data folder's store file."""
    with contextlib.closing(sqlite3.connect(data_dir / "smtpguard.db")) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
