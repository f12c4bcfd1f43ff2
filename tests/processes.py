"""Running smtpguard as a real process: spawn, read its JSON log, signal, kill.

The relay under test is started exactly as an administrator starts it
(`python -m smtpguard serve ...`), so signals, exit codes, stderr logging and
the on-disk store are the real ones. Everything here is bounded in time and
every process a `RelayLauncher` starts is SIGKILLed at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from tests.sink import CaptureSink

START_TIMEOUT = 15.0
EVENT_TIMEOUT = 10.0
CLI_TIMEOUT = 30.0
SMTP_TIMEOUT = 10.0

SENDER = "case.worker@northshire.gov.uk"
RECIPIENT = "partner@agency.example.org"

_QUEUED_AS = re.compile(r"queued as ([0-9A-F]+)")
_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>\r\n]+>)\r$", re.MULTILINE | re.IGNORECASE)


def child_environment() -> dict[str, str]:
    """The test's environment minus anything that would make the relay talk to systemd."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "SMTPGUARD_CONFIG")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- the relay process --------------------------------------------------------


@dataclass
class RelayProcess:
    """One `smtpguard serve` process and everything it has logged so far."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    host: str = ""
    port: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None
    _eof: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        try:
            while line := await stream.readline():
                text = line.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(text)
                with contextlib.suppress(ValueError):
                    event = json.loads(text)
                    if isinstance(event, dict):
                        self.events.append(event)
                self._changed.set()
        finally:
            self._eof = True
            self._changed.set()

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def named(self, name: str, *, after: int = 0) -> list[dict[str, Any]]:
        """Events called `name`, from position `after` of the event list on."""
        return [e for e in self.events[after:] if e.get("event") == name]

    async def wait_for_event(
        self,
        name: str,
        *,
        after: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda event: True,
        timeout: float = EVENT_TIMEOUT,
    ) -> dict[str, Any]:
        """The first matching event at or after position `after`; fails on timeout or exit."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    for event in self.events[after:]:
                        if event.get("event") == name and where(event):
                            return event
                    if self._eof:
                        raise AssertionError(
                            f"relay log ended without {name!r}:\n{self.log_text()}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {name!r} in the relay log within {timeout}s:\n{self.log_text()}"
            ) from None

    def send_signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    async def wait_exit(self, timeout: float) -> int:
        """Exit status once the process is gone and its log is fully read."""
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            if self._reader is not None:
                await self._reader
        return code

    async def kill(self) -> None:
        """SIGKILL (if still running) and reap; safe to call more than once."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(TimeoutError):
            await self.wait_exit(timeout=10)
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class RelayLauncher:
    """Starts relay processes for one test and kills every one of them at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[RelayProcess] = []

    async def start(
        self,
        config: Path,
        data_dir: Path,
        upstream_port: int,
        *,
        umask: int = 0o022,
        env: dict[str, str] | None = None,
        wait_until_serving: bool = True,
    ) -> RelayProcess:
        """Start `smtpguard serve` and wait for `relay.listening`.

        With `wait_until_serving`, also wait for one SMTP greeting: the relay's
        loop has then run past its start-up, signal handlers included, so a
        test's SIGTERM/SIGHUP is handled rather than fatal. (The relay logs
        relay.listening before it installs its handlers: EARLY_SIGNAL_BUG in
        test_process.py.)
        """
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "smtpguard",
            "serve",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            "--data-dir",
            str(data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.workdir,
            env=child_environment() | (env or {}),
            umask=umask,
        )
        relay = RelayProcess(process)
        self.started.append(relay)
        relay.start_reading()
        listening = await relay.wait_for_event("relay.listening", timeout=START_TIMEOUT)
        relay.host = str(listening["host"])
        relay.port = int(listening["port"])
        if wait_until_serving:
            session = await RawSession.connect(relay.port)
            try:
                code, text = await session.reply()
                assert code == 220, f"relay greeted with {code} {text!r}"
                await session.command("QUIT")
            finally:
                await session.close()
        return relay

    async def kill_all(self) -> None:
        for relay in self.started:
            await relay.kill()
        self.started.clear()


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


async def run_smtpguard(*args: str, cwd: Path, timeout: float = CLI_TIMEOUT) -> CommandResult:
    """Run one `smtpguard` command to completion without blocking the test's loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smtpguard",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=child_environment(),
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"smtpguard {' '.join(args)} did not finish in {timeout}s") from None
    assert process.returncode is not None
    return CommandResult(process.returncode, stdout.decode(), stderr.decode())


# -- the upstream -------------------------------------------------------------


class ReservedSink(CaptureSink):
    """A capture sink whose port is fixed before it listens.

    Until `open()` the port is bound but not listening, so the relay's
    connections are refused (the upstream is down); `open()` starts listening
    on the very same socket, so no other process can take the port between
    "down" and "up".
    """

    def __init__(self) -> None:
        super().__init__()
        self._socket: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])

    async def open(self) -> None:
        assert self._socket is not None, "sink already opened"
        loop = asyncio.get_running_loop()
        handler = self.handler
        self._server = await loop.create_server(
            lambda: SMTP(handler, enable_SMTPUTF8=True, hostname="sink.test"), sock=self._socket
        )
        self._socket = None

    async def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        await super().stop()

    def message_ids(self) -> list[bytes]:
        """Message-ID header of everything captured, in arrival order (duplicates kept)."""
        return [message_id(m.content) for m in self.handler.messages]


async def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def wait_for_ids(sink: ReservedSink, wanted: set[bytes], timeout: float) -> None:
    await wait_until(
        lambda: wanted <= set(sink.message_ids()),
        timeout=timeout,
        what=f"{len(wanted)} message(s) at the sink (have {len(sink.handler.messages)})",
    )


def drain_datagrams(sock: socket.socket) -> list[bytes]:
    """Everything queued on a non-blocking datagram socket."""
    received = []
    with contextlib.suppress(BlockingIOError):
        while True:
            received.append(sock.recv(4096))
    return received


# -- a relay of several processes (server.processes) ---------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (the state) on; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


_DEAD = ("Z", "X")


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a dead child nobody has reaped yet)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in _DEAD


def child_pids(pid: int) -> list[int]:
    """The children of `pid` that are running, oldest first."""
    children: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children.update(int(child) for child in path.read_text().split())
    started = []
    for child in children:
        fields = _stat_fields(child)
        if fields is not None and fields[0] not in _DEAD:
            started.append((int(fields[19]), child))  # field 22: start time, in clock ticks
    return [child for _, child in sorted(started)]


def descendants(pid: int) -> list[int]:
    """Every running process below `pid` (children, their children, ...)."""
    found = []
    for child in child_pids(pid):
        found += [child, *descendants(child)]
    return found


async def serving_processes(relay: RelayProcess, count: int) -> list[int]:
    """Once a relay with `server.processes: count` reports all of them serving
    (relay.processes_started): their pids, process 0 first (it is started first)."""
    await relay.wait_for_event("relay.processes_started", timeout=START_TIMEOUT)
    children = child_pids(relay.pid)
    assert len(children) == count, (children, relay.log_text())
    return children


# -- messages and the SMTP client side ------------------------------------------


def make_message(subject: str, *, size: int = 0) -> bytes:
    """A message with CRLF endings and lines that need dot-stuffing, padded to `size` bytes."""
    head = (
        f"From: Case Worker <{SENDER}>\r\n"
        f"To: Partner <{RECIPIENT}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: {make_msgid(domain='client.test')}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "Please find the notes below.\r\n"
        ".a line that starts with a dot\r\n"
        "..\r\n"
        ".\r\n"
        " leading space, trailing space \r\n"
        "\r\n"
    ).encode("ascii")
    tail = b"-- \r\nend of message\r\n"
    filler = b""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n"
    while len(head) + len(filler) + len(tail) < size:
        filler += line
    return head + filler + tail


def message_id(content: bytes) -> bytes:
    match = _MESSAGE_ID.search(content)
    assert match is not None, "message has no Message-ID header"
    return match.group(1)


def split_received(content: bytes) -> tuple[bytes, bytes]:
    """(smtpguard's Received: header, everything after it) of a relayed message."""
    assert content.startswith(b"Received: "), content[:80]
    end = 0
    while True:
        end = content.index(b"\r\n", end) + 2
        if content[end : end + 1] not in (b" ", b"\t"):
            return content[:end], content[end:]


@dataclass(frozen=True)
class Reply:
    """The reply that ended an SMTP transaction (the DATA reply, or the refusal)."""

    code: int
    text: str
    stage: str

    @property
    def queue_id(self) -> str:
        match = _QUEUED_AS.search(self.text)
        assert match is not None, f"no queue id in {self.code} {self.text!r}"
        return match.group(1)


def send_message(
    port: int,
    content: bytes,
    *,
    recipients: Sequence[str] = (RECIPIENT,),
    declare_size: bool = False,
    after_data: Callable[[Reply], None] | None = None,
) -> Reply:
    """One transaction with smtplib (blocking: run it with asyncio.to_thread).

    `after_data` runs as soon as the DATA reply is in, before QUIT: the moment
    a crash test kills the relay.
    """
    with smtplib.SMTP(
        "127.0.0.1", port, local_hostname="client.test", timeout=SMTP_TIMEOUT
    ) as client:
        client.ehlo()
        options = [f"SIZE={len(content)}"] if declare_size else []
        code, text = client.mail(SENDER, options)
        if code != 250:
            return Reply(code, text.decode(), "MAIL")
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            if code not in (250, 251):
                return Reply(code, text.decode(), "RCPT")
        code, text = client.data(content)
        reply = Reply(code, text.decode(), "DATA")
        if after_data is not None:
            after_data(reply)
        return reply


@dataclass
class Flow:
    """What clients sent to a relay that was killed under them."""

    attempted: set[bytes] = field(default_factory=set)  # Message-IDs
    acknowledged: dict[bytes, str] = field(default_factory=dict)  # Message-ID -> queue id
    unexpected: list[Reply] = field(default_factory=list)  # neither 250 nor a broken session


async def send_until_killed(
    port: int, kill: Callable[[], Awaitable[None]], *, senders: int, enough: int
) -> Flow:
    """`senders` clients send 4 KB messages, a session each, until `enough` are
    acknowledged; then `kill` takes the relay down, and each client stops at its
    first session that fails."""
    flow = Flow()
    plenty = asyncio.Event()

    async def keep_sending(worker: int) -> None:
        for number in range(1000):
            content = make_message(f"flow {worker}/{number}", size=4_000)
            flow.attempted.add(message_id(content))
            try:
                reply = await asyncio.to_thread(send_message, port, content)
            except (OSError, smtplib.SMTPException):
                return  # the relay is gone: this one was never acknowledged
            if reply.code != 250:
                flow.unexpected.append(reply)
                return
            flow.acknowledged[message_id(content)] = reply.queue_id
            if len(flow.acknowledged) >= enough:
                plenty.set()

    tasks = [asyncio.create_task(keep_sending(worker)) for worker in range(senders)]
    try:
        async with asyncio.timeout(30):
            await plenty.wait()
        await kill()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return flow


def ehlo_size(port: int) -> str:
    """The SIZE the relay advertises in EHLO (blocking)."""
    with smtplib.SMTP(
        "127.0.0.1", port, local_hostname="client.test", timeout=SMTP_TIMEOUT
    ) as client:
        client.ehlo()
        return client.esmtp_features.get("size", "")


class RawSession:
    """A hand-driven SMTP client, for stopping half-way through a message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawSession:
        async with asyncio.timeout(SMTP_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply; (0, "") if the server closed the connection."""
        text: list[str] = []
        async with asyncio.timeout(SMTP_TIMEOUT):
            while True:
                line = await self.reader.readline()
                if not line:
                    return 0, "\n".join(text)
                decoded = line.decode("utf-8", "replace").rstrip("\r\n")
                text.append(decoded[4:])
                if decoded[3:4] != "-":
                    return int(decoded[:3]), "\n".join(text)

    async def command(self, line: str) -> tuple[int, str]:
        await self.send(line.encode("ascii") + b"\r\n")
        return await self.reply()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(SMTP_TIMEOUT):
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()


def dot_stuff(content: bytes) -> bytes:
    """What goes on the wire for `content` between DATA and the final dot (RFC 5321 4.5.2)."""
    stuffed = b"." + content if content.startswith(b".") else content
    return stuffed.replace(b"\r\n.", b"\r\n..")


async def refuses_new_sessions(port: int) -> tuple[bool, str]:
    """Whether a new client is turned away: connection refused/reset/closed, or a 421."""
    try:
        session = await RawSession.connect(port)
    except OSError as exc:
        return True, f"connect failed: {type(exc).__name__}"
    try:
        code, text = await session.reply()
    except OSError as exc:
        return True, f"connection dropped: {type(exc).__name__}"
    finally:
        await session.close()
    if code == 0:
        return True, "closed without a greeting"
    return code == 421, f"{code} {text}"


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
