"""Load generator: N concurrent SMTP clients, each with one persistent connection.

Runs in its own process on its own event loop (uvloop when importable). Each
client task sends one message after another over its own connection
(reconnecting after a connection error) and records, per message, the time
from MAIL FROM to the 250 reply after DATA (MAIL, RCPT, DATA, one command at
a time as aiosmtplib's `sendmail` does; the connection and EHLO are set up
beforehand and not timed).

The client is a small one over asyncio streams, not aiosmtplib: it sends each
template's bytes with their dot-stuffing done once (`WireTemplate`), where
aiosmtplib normalises line endings and stuffs dots in Python on every send
(about 28 ms of CPU for a 2 MB message on the benchmark machine), which made
the load generator, not the relay, the limit for office mail.
The scenario is any name `messages.mix()` knows: message ``n`` of a phase is
``mix.pick(n)`` with its own envelope, and accepted messages are also counted
per template (``accepted_by``), so a harness knows how many a DLP relay holds.

Two phases: a warm-up (not measured) and the measured phase, which runs either
for a fixed duration or for a fixed total number of messages. All clients
finish their message in flight before a phase ends, so the measured phase
starts with nothing in flight and its wall time ends at the last reply.

Under the harness the phases are reported over a pipe and the measured phase
waits for the harness's "go" (so it can let the relay drain the warm-up).
By hand: ``python bench/loadgen.py --target 127.0.0.1:PORT`` prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

from messages import MessageMix, MessageTemplate, mix

CLIENT_HOSTNAME = "loadgen.bench.test"
MAX_MESSAGES_HARD_CAP = 5_000_000  # every send loop is bounded in count as well as time
RECONNECT_BACKOFF_MAX = 1.0


@dataclass(frozen=True)
class LoadConfig:
    host: str
    port: int
    scenario: str = "plain"
    concurrency: int = 1
    duration: float = 10.0
    messages: int | None = None  # when set, send this many instead of running for `duration`
    warmup: float = 2.0
    timeout: float = 60.0  # per SMTP command
    max_errors: int = 10_000  # give up the phase after this many errors
    max_phase_seconds: float = 600.0  # hard bound for a count-based phase


@dataclass
class PhaseResult:
    name: str
    accepted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0  # time.monotonic() (CLOCK_MONOTONIC: comparable across processes)
    ended_at: float = 0.0
    wall_s: float = 0.0
    rate: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0  # CPU time of the load generator during the phase
    accepted_by: dict[str, int] = field(default_factory=dict)  # per template name


@dataclass
class LoadResult:
    scenario: str
    message_bytes: int
    concurrency: int
    connected: int
    warmup: PhaseResult
    measured: PhaseResult
    connect_errors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarise(latencies: list[float]) -> dict[str, float]:
    values = sorted(latencies)
    if not values:
        return {}
    return {
        "p50": percentile(values, 50) * 1000,
        "p90": percentile(values, 90) * 1000,
        "p99": percentile(values, 99) * 1000,
        "max": values[-1] * 1000,
        "mean": sum(values) / len(values) * 1000,
    }


class SMTPReplyError(Exception):
    """The server refused a command: ``step`` is the command, ``code`` its reply code."""

    def __init__(self, step: str, code: int) -> None:
        super().__init__(f"{step} refused with {code}")
        self.step = step
        self.code = code


def _error_key(exc: BaseException) -> str:
    if isinstance(exc, SMTPReplyError):
        return f"{exc.step}:{exc.code}"
    return type(exc).__name__


_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")


class WireTemplate:
    """A template's bytes as they go on the wire: CRLF line ends, leading dots doubled.

    Prepared once per template; a message is the head, its unique id and the
    tail, then the end-of-data marker. The id sits inside the Message-ID line,
    so the tail never starts a line and its first byte is not stuffed.
    """

    def __init__(self, template: MessageTemplate) -> None:
        head = _LINE_END.sub(b"\r\n", template.head)
        tail = _LINE_END.sub(b"\r\n", template.tail)
        if not tail.endswith(b"\r\n"):
            tail += b"\r\n"
        self.head = (b"." if head.startswith(b".") else b"") + head.replace(b"\r\n.", b"\r\n..")
        self.tail = tail.replace(b"\r\n.", b"\r\n..")
        self.mail = f"MAIL FROM:<{template.sender}>\r\n".encode()
        self.rcpts = [f"RCPT TO:<{r}>\r\n".encode() for r in template.recipients]

    def pieces(self, n: int, tag: str) -> list[bytes]:
        return [self.head, f"{tag}-{n:010d}".encode(), self.tail, b".\r\n"]


class Client:
    """One persistent SMTP connection that reconnects after connection errors."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.backoff = 0.05

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def ensure_connected(self) -> None:
        if self.connected:
            return
        self.close()
        try:
            async with asyncio.timeout(self.cfg.timeout):
                self.reader, self.writer = await asyncio.open_connection(
                    self.cfg.host, self.cfg.port
                )
                await self._expect("greeting", 220)
                await self._command("EHLO", f"EHLO {CLIENT_HOSTNAME}\r\n".encode(), 250)
        except BaseException:
            self.close()  # a session refused at its greeting or EHLO is not connected
            raise
        self.backoff = 0.05

    async def _reply(self) -> int:
        """Read one reply, however many lines; its code."""
        assert self.reader is not None
        while True:
            line = await self.reader.readline()
            if len(line) < 4 or not line[:3].isdigit():
                raise ConnectionResetError("connection closed or reply malformed")
            if line[3:4] != b"-":
                return int(line[:3])

    async def _expect(self, step: str, *codes: int) -> None:
        code = await self._reply()
        if code not in codes:
            raise SMTPReplyError(step, code)

    async def _command(self, step: str, line: bytes, *codes: int) -> None:
        assert self.writer is not None
        self.writer.write(line)
        await self._expect(step, *codes)

    async def sendmail(self, wire: WireTemplate, n: int, tag: str) -> None:
        """One transaction; a refusal other than 421 leaves the session reset and usable."""
        try:
            async with asyncio.timeout(self.cfg.timeout):
                await self._command("MAIL", wire.mail, 250)
                for rcpt in wire.rcpts:
                    await self._command("RCPT", rcpt, 250, 251)
                await self._command("DATA", b"DATA\r\n", 354)
                assert self.writer is not None
                self.writer.writelines(wire.pieces(n, tag))
                await self.writer.drain()
                await self._expect("end of data", 250)
        except SMTPReplyError as exc:
            if exc.code == 421:
                self.close()
            else:
                await self._reset()
            raise

    async def _reset(self) -> None:
        try:
            async with asyncio.timeout(self.cfg.timeout):
                await self._command("RSET", b"RSET\r\n", 250)
        except (SMTPReplyError, OSError, TimeoutError):
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def quit(self) -> None:
        if self.connected:
            with contextlib.suppress(SMTPReplyError, OSError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._command("QUIT", b"QUIT\r\n", 221)
        self.close()

    async def pause_after_error(self) -> None:
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, RECONNECT_BACKOFF_MAX)


class Phase:
    """Shared state of one phase: tickets, deadline, counts, latencies."""

    def __init__(self, name: str, cfg: LoadConfig, duration: float, count: int | None) -> None:
        self.name = name
        self.cfg = cfg
        self.count = min(count, MAX_MESSAGES_HARD_CAP) if count is not None else None
        self.duration = duration if count is None else cfg.max_phase_seconds
        self.issued = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.accepted_by: Counter[str] = Counter()
        self.deadline = 0.0

    def start(self) -> None:
        self.deadline = time.monotonic() + self.duration

    def take_ticket(self) -> int | None:
        """Next message number, or None when the phase is over."""
        limit = self.count if self.count is not None else MAX_MESSAGES_HARD_CAP
        if self.issued >= limit or time.monotonic() >= self.deadline:
            return None
        if sum(self.errors.values()) >= self.cfg.max_errors:
            return None
        self.issued += 1
        return self.issued


async def client_loop(
    client: Client, phase: Phase, mx: MessageMix, wires: dict[str, WireTemplate], tag: str
) -> None:
    """Send messages until the phase is over; bounded by tickets and the deadline."""
    perf = time.perf_counter
    while (n := phase.take_ticket()) is not None:
        try:
            await client.ensure_connected()
        except (SMTPReplyError, OSError, TimeoutError) as exc:
            phase.errors["connect:" + _error_key(exc)] += 1
            client.close()
            await client.pause_after_error()
            continue
        tmpl = mx.pick(n)
        t0 = perf()
        try:
            await client.sendmail(wires[tmpl.name], n, tag)
        except (SMTPReplyError, OSError, TimeoutError) as exc:
            phase.errors[_error_key(exc)] += 1
            if not isinstance(exc, SMTPReplyError):
                client.close()
            await client.pause_after_error()
        else:
            phase.latencies.append(perf() - t0)
            phase.accepted_by[tmpl.name] += 1


async def run_phase(clients: list[Client], phase: Phase, mx: MessageMix, tag: str) -> PhaseResult:
    wires = {t.name: WireTemplate(t) for t in mx.templates}
    assert len(wires) == len(mx.templates), "template names must be unique"
    cpu0 = time.process_time()
    phase.start()
    started = time.monotonic()
    await asyncio.gather(*(client_loop(c, phase, mx, wires, tag) for c in clients))
    ended = time.monotonic()
    wall = ended - started
    accepted = len(phase.latencies)
    return PhaseResult(
        name=phase.name,
        accepted=accepted,
        errors=dict(phase.errors),
        started_at=started,
        ended_at=ended,
        wall_s=wall,
        rate=accepted / wall if wall > 0 else 0.0,
        latency_ms=summarise(phase.latencies),
        cpu_s=time.process_time() - cpu0,
        accepted_by=dict(phase.accepted_by),
    )


Notify = Callable[[str, Any], None]
WaitGo = Callable[[], Awaitable[None]]


async def run_load(
    cfg: LoadConfig, notify: Notify | None = None, wait_go: WaitGo | None = None
) -> LoadResult:
    """Connect the clients, run the warm-up, then the measured phase."""
    mx = mix(cfg.scenario)
    clients = [Client(cfg) for _ in range(cfg.concurrency)]
    connect_errors: Counter[str] = Counter()
    results = await asyncio.gather(*(c.ensure_connected() for c in clients), return_exceptions=True)
    for res in results:
        if isinstance(res, BaseException):
            connect_errors[_error_key(res)] += 1
    connected = sum(1 for c in clients if c.connected)
    tag = f"c{cfg.concurrency}-{int(time.time())}"
    try:
        warm = Phase("warmup", cfg, cfg.warmup, None)
        warm_result = await run_phase(clients, warm, mx, tag + "-w")
        if notify:
            notify("warmup_done", asdict(warm_result))
        if wait_go:
            await wait_go()
        measured = Phase("measured", cfg, cfg.duration, cfg.messages)
        if notify:
            notify("measure_start", time.monotonic())
        measured_result = await run_phase(clients, measured, mx, tag + "-m")
        if notify:
            notify("measure_end", time.monotonic())
    finally:
        await asyncio.gather(*(c.quit() for c in clients))
    return LoadResult(
        scenario=cfg.scenario,
        message_bytes=mx.size,
        concurrency=cfg.concurrency,
        connected=connected,
        warmup=warm_result,
        measured=measured_result,
        connect_errors=dict(connect_errors),
    )


def run_loop(coro: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    """Run ``coro`` on uvloop when importable, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def child_main(cfg: LoadConfig, conn: Any) -> None:
    """Entry point of the load generator process started by the harness.

    Sends ("warmup_done", PhaseResult dict), ("measure_start", t),
    ("measure_end", t), then ("result", LoadResult dict) or ("error", text);
    waits for "go" (at most 120 s) between the warm-up and the measured phase.
    """

    def notify(kind: str, value: Any) -> None:
        conn.send((kind, value))

    async def wait_go() -> None:
        ready = await asyncio.to_thread(conn.poll, 120.0)
        if ready:
            conn.recv()

    try:
        result = run_loop(run_load(cfg, notify, wait_go))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        conn.send(("result", result.to_json()))
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SMTP load generator (prints JSON).")
    parser.add_argument("--target", required=True, help="HOST:PORT of the relay")
    parser.add_argument("--scenario", default="plain")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    host, _, port = str(args.target).rpartition(":")
    cfg = LoadConfig(
        host=host.strip("[]"),
        port=int(port),
        scenario=args.scenario,
        concurrency=args.concurrency,
        duration=args.duration,
        messages=args.messages,
        warmup=args.warmup,
    )
    result = run_loop(run_load(cfg))
    print(json.dumps(result.to_json(), indent=2))
    return 0 if result.measured.accepted else 1


if __name__ == "__main__":
    sys.exit(main())
