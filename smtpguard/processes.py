"""Several relay processes sharing one listening socket (`server.processes`).

One event loop uses one core; with `processes: N` the relay runs N copies of
itself that accept from the same socket, for machines with cores to spare
(on a 2-core machine that also runs the mail server, it does not pay: see
README "Using every core"). The parent binds the socket (port 0 works: every process gets
the port the parent got), starts process 0, which alone recovers the store
(claims left by a crash, messages never scanned) and runs the review clock,
then the others, and tells systemd it is ready once all of them are.

With `server.reading_process` the work is split instead: process 0 does not
listen, it reads, decides and delivers, and alone writes the database; the
others only accept, write each message's spool file and hand it to process 0
over a socket pair the parent made for each (smtpguard/handoff.py). The parent
stops the accepting processes first, so that what they take in while draining
is still read.

A process that dies takes the others down with it and the whole set starts
again, so recovery always runs with no other process touching the store: the
single-owner rule the SQLite store's recovery depends on. The children die
with the parent (PR_SET_PDEATHSIG), so `kill -9` of the relay behaves like
`kill -9` of a single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from smtpguard.config import Config, Overrides

log = structlog.get_logger("smtpguard.processes")

ROLE_ENV = "SMTPGUARD_PROCESS"
_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT = 300.0  # hashing large exports and compiling detectors happens before ready
_STOP_MARGIN = 15.0  # past drain_timeout, before a process that will not stop is killed
_RESTART_PAUSE = 1.0
_RESTARTS_ALLOWED = 5  # within _RESTART_WINDOW; more means it cannot run: exit, systemd decides
_RESTART_WINDOW = 60.0


Work = Literal["all", "reading", "accepting"]


@dataclass(frozen=True)
class ProcessRole:
    """Which share of the relay's work this process does."""

    index: int = 0
    count: int = 1
    listen_fd: int | None = None  # the listening socket, inherited from the parent
    ready_fd: int | None = None  # "host port" is written here once the process serves
    parent: int | None = None
    # "all": accepts, reads and delivers; with server.reading_process, process 0 is
    # "reading" (no listener) and the others "accepting" (store and answer only).
    work: Work = "all"
    handoff_fds: tuple[int, ...] = ()  # to each accepting process, or to the reading one

    @property
    def first(self) -> bool:
        """Process 0 recovers the store at start and runs the review clock."""
        return self.index == 0

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, value: str) -> ProcessRole:
        fields = json.loads(value)
        fields["handoff_fds"] = tuple(fields.get("handoff_fds", ()))
        return cls(**fields)

    @property
    def reads(self) -> bool:
        return self.work != "accepting"

    def listening_socket(self) -> socket.socket | None:
        return None if self.listen_fd is None else socket.socket(fileno=self.listen_fd)

    def report_ready(self, address: tuple[str, int]) -> None:
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, f"{address[0]} {address[1]}\n".encode())
            os.close(self.ready_fd)


def role_from_environment() -> ProcessRole:
    """This process's role: the default (the only process) unless a parent started it."""
    value = os.environ.pop(ROLE_ENV, None)
    if not value:
        return ProcessRole()
    role = ProcessRole.decode(value)
    _die_with_parent(role.parent)
    return role


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL when the parent goes, as if the whole relay had been killed."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died before the line above took effect


def bind_listener(host: str, port: int) -> socket.socket:
    """Bound, not listening: process 0 listens when it starts serving, so that, as with
    one process, nothing connects (a health check included) before the relay is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


@dataclass
class _Child:
    index: int
    process: asyncio.subprocess.Process
    ready: asyncio.Future[tuple[str, int] | None]


class Supervisor:
    """The parent of `server.processes` relay processes: starts, watches, signals them."""

    def __init__(self, config_path: Path, overrides: Overrides, config: Config) -> None:
        self.config_path = config_path
        self.overrides = overrides
        self.config = config
        self.reading_process = config.server.reading_process
        self.count = config.server.processes + int(self.reading_process)
        self._children: list[_Child] = []
        # With a reading process: a socket pair to each accepting process, made anew for
        # each set (the reading process's ends, the accepting processes' ends).
        self._handoff: list[tuple[socket.socket, socket.socket]] = []
        self._stop = asyncio.Event()
        self._restarts: list[float] = []

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "smtpguard", "serve", "--config", str(self.config_path)]
        for flag, value in (
            ("--listen", self.overrides.listen),
            ("--upstream", self.overrides.upstream),
            ("--data-dir", self.overrides.data_dir),
            ("--mode", self.overrides.mode),
        ):
            if value is not None:
                command += [flag, str(value)]
        return command

    def _work_of(self, index: int) -> tuple[Work, tuple[int, ...]]:
        if not self.reading_process:
            return "all", ()
        if index == 0:
            return "reading", tuple(ours.fileno() for ours, _ in self._handoff)
        return "accepting", (self._handoff[index - 1][1].fileno(),)

    async def _spawn(self, index: int, sock: socket.socket) -> _Child:
        read_end, write_end = os.pipe()
        work, handoff_fds = self._work_of(index)
        role = ProcessRole(
            index, self.count, sock.fileno(), write_end, os.getpid(), work, handoff_fds
        )
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env[ROLE_ENV] = role.encode()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(), env=env, pass_fds=(sock.fileno(), write_end, *handoff_fds)
            )
        finally:
            os.close(write_end)
        loop = asyncio.get_running_loop()
        ready = loop.run_in_executor(None, _read_ready, read_end)
        return _Child(index, process, ready)

    async def _start_one(self, index: int, sock: socket.socket) -> tuple[str, int] | None:
        child = await self._spawn(index, sock)
        self._children.append(child)
        exited = asyncio.ensure_future(child.process.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        waits: set[asyncio.Future[Any]] = {child.ready, exited, stop}
        done, _ = await asyncio.wait(
            waits, timeout=_READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        exited.cancel()
        stop.cancel()
        if child.ready in done and child.ready.result() is not None:
            return child.ready.result()
        if not self._stop.is_set():
            log.error(
                "relay.process_failed_to_start", process=index, exit_code=child.process.returncode
            )
        return None

    async def _start_all(self, sock: socket.socket) -> tuple[str, int] | None:
        """Process 0 first: it recovers the store while no other process can touch it."""
        if self.reading_process:
            self._handoff = [socket.socketpair() for _ in range(self.count - 1)]
        try:
            address = None
            for index in range(self.count):
                started = await self._start_one(index, sock)
                if started is None or self._stop.is_set():
                    return None
                address = address or started
            return address
        finally:
            # The children hold their ends: when one dies, the other end sees it closed.
            for pair in self._handoff:
                for end in pair:
                    end.close()
            self._handoff = []

    async def _stop_all(self) -> None:
        if self.reading_process:
            # The accepting processes first: what they keep while draining is handed to
            # a reading process still there to read it.
            await self._stop_children([c for c in self._children if c.index > 0])
        await self._stop_children(self._children)
        for child in self._children:
            child.ready.cancel()
        self._children = []

    async def _stop_children(self, children: list[_Child]) -> None:
        running = [c.process for c in children if c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            _, late = await asyncio.wait(
                {asyncio.ensure_future(p.wait()) for p in running},
                timeout=self.config.server.drain_timeout + _STOP_MARGIN,
            )
            for process in running:
                if process.returncode is None:
                    log.error("relay.process_killed", pid=process.pid, reason="did not stop")
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late)

    async def _first_exit(self) -> _Child | None:
        """The first process to exit, or None when a stop was asked for."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self._children}
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({stop, *waits}, return_when=asyncio.FIRST_COMPLETED)
        for future in (stop, *waits):
            future.cancel()
        if stop in done:
            return None
        return next(waits[f] for f in done if f in waits)

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < _RESTART_WINDOW] + [now]
        return len(self._restarts) <= _RESTARTS_ALLOWED

    def request_stop(self) -> None:
        self._stop.set()

    def forward(self, signum: int) -> None:
        for child in self._children:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signum)

    async def run(self, on_ready: Callable[[tuple[str, int]], None] | None = None) -> int:
        listen = self.config.server.listen
        sock = bind_listener(listen.host, listen.port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.forward, signal.SIGHUP)
        announced = False
        try:
            while True:
                outcome = await self._run_set(sock, on_ready, announced)
                if outcome is not None:
                    return outcome
                announced = True
                if not self._may_restart():
                    log.error("relay.giving_up", restarts=len(self._restarts))
                    return 1
                await asyncio.sleep(_RESTART_PAUSE)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            sock.close()

    async def _run_set(
        self,
        sock: socket.socket,
        on_ready: Callable[[tuple[str, int]], None] | None,
        announced: bool,
    ) -> int | None:
        """One set of processes, from start to stop; None when it has to start again."""
        from smtpguard.relay import notify_systemd

        address = await self._start_all(sock)
        if address is None:
            await self._stop_all()
            return 0 if self._stop.is_set() else 1
        if not announced:
            log.info(
                "relay.processes_started", processes=self.count, host=address[0], port=address[1]
            )
            notify_systemd("READY=1")
            if on_ready is not None:
                on_ready(address)
        died = await self._first_exit()
        if died is None or died.process.returncode == 0:
            # Asked to stop, or a process was (Ctrl-C reaches the whole group).
            notify_systemd("STOPPING=1")
            await self._stop_all()
            log.info("relay.processes_stopped", processes=self.count)
            return 0
        log.error(
            "relay.process_died",
            process=died.index,
            exit_code=died.process.returncode,
            action="restarting every process, so that the store is recovered",
        )
        await self._stop_all()
        return None


def _read_ready(fd: int) -> tuple[str, int] | None:
    """Blocks (in a thread) until the child reports "host port", or exits without it."""
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = os.read(fd, 256)
            if not chunk:
                return None
            data += chunk
    finally:
        os.close(fd)
    host, port = data.decode().split()
    return host, int(port)
