"""Capture sink: an SMTP server that accepts everything and only counts.

It stores nothing: each message adds one to a message counter and its size
(as sent, dot-stuffed) to a byte counter, and records the (system-wide
monotonic) time it arrived, then the sink answers 250. It runs on its own
event loop (uvloop when importable) in its own process, so it takes no CPU
from the load generator's process.

It is a small asyncio protocol rather than aiosmtpd because the harness must
not be what a benchmark measures: aiosmtpd reads DATA a line at a time in
Python (about 36 ms of CPU for a 2 MB message on the benchmark machine), which
capped every relay's office-mail rate, including the ceiling's. This one looks
only for the end-of-data marker, with `bytes.find`, and answers the commands a
relay sends (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), pipelined or not.

Two ways to use it:

* from the harness: ``start_sink()`` starts it in a child process bound to
  port 0 and returns a `SinkHandle` whose counters live in shared memory;
* by hand: ``python bench/sink.py --listen 127.0.0.1:0`` prints the port it
  bound and, on SIGINT/SIGTERM, the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast

R250_OK = b"250 2.0.0 OK: counted\r\n"
SINK_HOSTNAME = "sink.bench.test"

# Indices into the shared counter array.
MESSAGES, BYTES = 0, 1


class Counters(Protocol):
    """What the handler needs: somewhere to count one message of ``size`` bytes."""

    def add(self, size: int) -> None: ...


class LocalCounters:
    """Counters in this process (used when the sink is run by hand)."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.last_at = 0.0

    def add(self, size: int) -> None:
        self.messages += 1
        self.bytes += size
        self.last_at = time.monotonic()


class SharedCounters:
    """Counters in shared memory, written by the sink, read by the harness.

    Only the sink process writes; the harness reads. Aligned 64-bit words are
    read whole on the platforms we run on, so no lock is needed.
    """

    def __init__(self, ints: Any, last_at: Any) -> None:
        self._ints = ints
        self._last_at = last_at

    @classmethod
    def create(cls, ctx: Any) -> SharedCounters:
        return cls(ctx.RawArray("q", 2), ctx.RawValue("d", 0.0))

    def add(self, size: int) -> None:
        self._ints[MESSAGES] += 1
        self._ints[BYTES] += size
        self._last_at.value = time.monotonic()

    @property
    def messages(self) -> int:
        return int(self._ints[MESSAGES])

    @property
    def bytes(self) -> int:
        return int(self._ints[BYTES])

    @property
    def last_at(self) -> float:
        return float(self._last_at.value)


_EHLO = (
    f"250-{SINK_HOSTNAME}\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 HELP\r\n"
).encode()
_END_OF_DATA = b"\r\n.\r\n"
_MAX_COMMAND = 4096


class CountingSMTP(asyncio.Protocol):
    """One SMTP session: commands a line at a time, DATA scanned only for its end."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.pending = bytearray()  # command bytes not yet a whole line
        self.in_data = False
        self.recipients = 0
        self.data_size = 0
        self.data_tail = b""  # the last bytes of DATA so far, for a marker split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(f"220 {SINK_HOSTNAME} ESMTP counting sink\r\n".encode())

    def data_received(self, data: bytes) -> None:
        while data:
            if self.in_data:
                data = self._data(data)
            else:
                self.pending += data
                data = self._commands()

    def _data(self, chunk: bytes) -> bytes:
        """Take DATA bytes; return what follows the end-of-data marker (pipelined commands)."""
        seam = self.data_tail + chunk[:4]
        at = seam.find(_END_OF_DATA)
        if at >= 0:
            end = at + len(_END_OF_DATA) - len(self.data_tail)
        else:
            found = chunk.find(_END_OF_DATA)
            if found < 0:
                self.data_size += len(chunk)
                self.data_tail = chunk[-4:] if len(chunk) >= 4 else (self.data_tail + chunk)[-4:]
                return b""
            end = found + len(_END_OF_DATA)
        # The marker's leading CRLF ends the last line, which belongs to the message.
        size = max(self.data_size + end - 3, 0)
        self.in_data = False
        self.data_size = 0
        self.data_tail = b""
        self.recipients = 0
        self.counters.add(size)
        self._reply(R250_OK)
        return chunk[end:]

    def _commands(self) -> bytes:
        """Answer each whole command line; return bytes that are DATA content, if any."""
        while True:
            end = self.pending.find(b"\n")
            if end < 0:
                if len(self.pending) > _MAX_COMMAND:
                    self._reply(b"500 5.5.2 Line too long\r\n")
                    self.pending.clear()
                return b""
            line = bytes(self.pending[:end]).rstrip(b"\r")
            del self.pending[: end + 1]
            self._command(line)
            if self.in_data:
                rest = bytes(self.pending)
                self.pending.clear()
                return rest

    def _command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb == b"MAIL":
            self.recipients = 0
            self._reply(b"250 2.1.0 OK\r\n")
        elif verb == b"RCPT":
            self.recipients += 1
            self._reply(b"250 2.1.5 OK\r\n")
        elif verb == b"DATA":
            if not self.recipients:
                self._reply(b"503 5.5.1 Error: need RCPT command\r\n")
                return
            self.in_data = True
            # The CRLF that ended the DATA line starts the search: a message may be empty.
            self.data_tail = b"\r\n"
            self._reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"EHLO":
            self._reply(_EHLO)
        elif verb == b"HELO":
            self._reply(f"250 {SINK_HOSTNAME}\r\n".encode())
        elif verb in (b"RSET", b"NOOP"):
            if verb == b"RSET":
                self.recipients = 0
            self._reply(b"250 2.0.0 OK\r\n")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 Bye\r\n")
            if self.transport is not None:
                self.transport.close()
        else:
            self._reply(b"502 5.5.2 Command not implemented\r\n")

    def _reply(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop when it is importable, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


async def serve(
    sock: socket.socket,
    counters: Counters,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve SMTP on an already bound socket until ``stop`` is set (or SIGTERM/SIGINT)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: CountingSMTP(counters), sock=sock)
    async with server:
        await stop.wait()
        server.close()
    await asyncio.sleep(0)


def bind(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket (port 0 picks a free port)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _child_main(host: str, counters: SharedCounters, port_out: Any) -> None:
    """Entry point of the sink process started by `start_sink`."""
    sock = bind(host, 0)
    port_out.send(sock.getsockname()[1])
    port_out.close()
    run_loop(serve(sock, counters))


@dataclass
class SinkHandle:
    """A running sink process and its shared counters."""

    process: mp.process.BaseProcess
    host: str
    port: int
    counters: SharedCounters

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def wait_for(self, messages: int, timeout: float) -> bool:
        """Wait until at least ``messages`` have arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.counters.messages < messages:
            if time.monotonic() >= deadline or not self.process.is_alive():
                return False
            time.sleep(0.01)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)


def start_sink(host: str = "127.0.0.1", timeout: float = 10.0) -> SinkHandle:
    """Start a sink in its own (spawned) process on a free port of ``host``."""
    ctx = mp.get_context("spawn")
    counters = SharedCounters.create(ctx)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child_main, args=(host, counters, send), name="bench-sink", daemon=True
    )
    proc.start()
    send.close()
    if not recv.poll(timeout):
        proc.kill()
        raise RuntimeError("sink did not report its port")
    port = int(recv.recv())
    recv.close()
    return SinkHandle(process=proc, host=host, port=port, counters=counters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Counting SMTP capture sink.")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 = free)")
    args = parser.parse_args(argv)
    host, _, port = str(args.listen).rpartition(":")
    sock = bind(host.strip("[]"), int(port))
    print(f"sink listening on {host}:{sock.getsockname()[1]}", flush=True)
    counters = LocalCounters()
    run_loop(serve(sock, counters))
    print(f"sink received {counters.messages} messages, {counters.bytes} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
