"""Capture sink: an aiosmtpd server that accepts everything and only counts.

It stores nothing: each message adds one to a message counter and its size to
a byte counter, and records the (system-wide monotonic) time it arrived, then
the sink answers 250. It runs on its own event loop (uvloop when importable)
in its own process, so it takes no CPU from the load generator's process.

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
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

R250_OK = "250 2.0.0 OK: counted"
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


class CountingHandler:
    """aiosmtpd handler: count the message, answer 250, keep nothing."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.counters.add(len(content))
        return R250_OK


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
    handler = CountingHandler(counters)
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=SINK_HOSTNAME,
            data_size_limit=100 * 1024 * 1024,
            timeout=600,
        ),
        sock=sock,
    )
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
