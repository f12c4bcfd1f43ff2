"""Accepting processes hand what they store to the reading process (`server.reading_process`).

With a reading process, the processes that answer SMTP only write each message's
spool file (fsync'd) and answer 250; one process of its own reads, decides and
delivers everything they keep, and alone writes the database. Each accepting
process has a socket pair to it, made by the supervisor.

Accepting -> reading, one frame per message: a 4-byte length, then `M` (the
content follows) or `F` (it does not: read it from the spool file, so an
accepting process never buffers more than `server.max_waiting_memory` for a
reading process that is behind), the id and size on one line, the spool
header's line, and the content.

With `metrics.listen`, each accepting process also sends, once a second
when they changed, its totals so far (`S` and a JSON object: messages
received, MAILs paced, replies by class, sessions open), and the reading
process serves them with its own.

Reading -> accepting, one byte at a time, flow control as one process does it:
`B` reading is behind (each new MAIL waits), `1` a message was read (one
waiting MAIL goes on), `C` caught up (every waiting MAIL goes on).

A frame lost with a process that dies is not a message lost: its spool file was
durable before the frame was sent, every process starts again when one dies,
and recovery gives every file without a row its row, to be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from smtpguard.envelope import Envelope
from smtpguard.metrics import REPLY_CLASSES, Tally
from smtpguard.spool.files import SpoolHeader
from smtpguard.spool.sqlite import SQLiteStore

log = structlog.get_logger("smtpguard.handoff")

BEHIND = b"B"
ONE_READ = b"1"
CAUGHT_UP = b"C"

_LENGTH = struct.Struct("!I")
_WITH_CONTENT = b"M"
_IN_SPOOL = b"F"
_TALLY = b"S"
_TALLY_EVERY = 1.0  # seconds between an accepting process's totals, while they change
_MESSAGE_ID = re.compile(r"[0-9A-F]{21}")


class HandoffError(Exception):
    """A frame that is not one this module wrote: the channel cannot be trusted further."""


@dataclass(frozen=True)
class HandedOver:
    """One message as the reading process receives it."""

    message_id: str
    header: SpoolHeader
    size: int
    content: bytes | None  # None: in the spool file only


def encode_frame(message_id: str, header: SpoolHeader, content: bytes, whole: bool) -> bytes:
    head = b"".join(
        (
            _WITH_CONTENT if whole else _IN_SPOOL,
            f"{message_id} {len(content)}\n".encode(),
            header.encode(),
        )
    )
    if not whole:
        return _LENGTH.pack(len(head)) + head
    # One copy of the content, not two: it may be megabytes.
    return b"".join((_LENGTH.pack(len(head) + len(content)), head, content))


def encode_tally(tally: Tally) -> bytes:
    body = _TALLY + json.dumps(asdict(tally), separators=(",", ":")).encode()
    return _LENGTH.pack(len(body)) + body


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("not a count")
    return value


def _decode_tally(data: bytes) -> Tally:
    try:
        fields = json.loads(data)
        replies = fields["replies"]
        return Tally(
            received=_count(fields["received"]),
            paced=_count(fields["paced"]),
            replies={c: _count(replies.get(c, 0)) for c in REPLY_CLASSES},
            sessions=_count(fields["sessions"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HandoffError("malformed frame") from exc


def decode_frame(body: bytes) -> HandedOver | Tally:
    kind = body[:1]
    if kind == _TALLY:
        return _decode_tally(body[1:])
    try:
        # Sliced where the lines end: the content is copied once.
        first_end = body.index(b"\n", 1)
        header_end = body.index(b"\n", first_end + 1)
        message_id, size_text = body[1:first_end].decode("ascii").split(" ")
        header = SpoolHeader.decode(body[first_end + 1 : header_end])
        size = int(size_text)
        content = body[header_end + 1 :]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise HandoffError("malformed frame") from exc
    # The id names a file in the spool folder: nothing but the relay's own ids.
    if kind not in (_WITH_CONTENT, _IN_SPOOL) or not _MESSAGE_ID.fullmatch(message_id):
        raise HandoffError("malformed frame")
    if kind == _WITH_CONTENT and len(content) != size:
        raise HandoffError("malformed frame")
    return HandedOver(message_id, header, size, content if kind == _WITH_CONTENT else None)


class HandoffSender:
    """In an accepting process: keeps each message durably, then tells the reading process."""

    def __init__(
        self,
        store: SQLiteStore,
        sock: socket.socket,
        max_buffered: int,
        on_signal: Callable[[bytes], None],
        *,
        tally: Callable[[], Tally] | None = None,
    ) -> None:
        self.store = store
        self.max_buffered = max_buffered
        self._sock = sock
        self._on_signal = on_signal
        self._tally = tally
        self._reported = Tally()
        self._writer: asyncio.StreamWriter | None = None
        self._listening: asyncio.Task[None] | None = None
        self._reporting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        self._listening = asyncio.create_task(self._listen(reader))
        if self._tally is not None:
            self._reporting = asyncio.create_task(self._report_every_second())

    async def _report_every_second(self) -> None:
        while True:
            await asyncio.sleep(_TALLY_EVERY)
            self._report()

    def _report(self) -> None:
        if self._tally is None or self._writer is None or self._writer.is_closing():
            return
        tally = self._tally()
        if tally != self._reported:
            self._writer.write(encode_tally(tally))
            self._reported = tally

    async def hand_over(
        self, message_id: str, envelope: Envelope, content: bytes, expires_at: float
    ) -> None:
        """Returns once the message is durable (the 250 may go); the frame follows."""
        header = await self.store.keep(message_id, envelope, content, expires_at=expires_at)
        writer = self._writer
        if writer is None or writer.is_closing():
            # Read when the relay next starts, as every file without a row is.
            log.error("handoff.no_reading_process", id=message_id)
            return
        buffered = writer.transport.get_write_buffer_size()
        whole = buffered + len(content) <= self.max_buffered
        writer.write(encode_frame(message_id, header, content, whole))

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        while signals := await reader.read(4096):
            for value in signals:
                self._on_signal(bytes((value,)))
        # The reading process went (it is stopping, or died and every process restarts):
        # whatever is kept from now on is read at the next start.
        log.warning("handoff.reading_process_gone")
        if self._writer is not None:
            self._writer.close()
        self._on_signal(CAUGHT_UP)  # nobody is left to say so: nothing may wait for it

    async def close(self) -> None:
        """After the listener drained: every frame written goes out before the socket closes."""
        if self._reporting is not None:
            self._reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporting
        self._report()  # the last counts too
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()


class HandoffReceiver:
    """In the reading process: takes what every accepting process hands over."""

    def __init__(
        self,
        socks: list[socket.socket],
        take_over: Callable[[HandedOver], None],
        on_broken: Callable[[], None],
        *,
        on_tally: Callable[[int, Tally], None] | None = None,
    ) -> None:
        self._socks = socks
        self._take_over = take_over
        self._on_broken = on_broken
        self._on_tally = on_tally
        self._writers: list[asyncio.StreamWriter] = []
        self._next = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for number, sock in enumerate(self._socks, start=1):
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            self._writers.append(writer)
            self._tasks.append(asyncio.create_task(self._receive(reader, number)))

    async def _receive(self, reader: asyncio.StreamReader, process: int) -> None:
        """`process`: the accepting process's number (1 for the first)."""
        try:
            while True:
                try:
                    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                    body = await reader.readexactly(length)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise HandoffError("frame cut short") from exc
                    return  # that accepting process stopped
                received = decode_frame(body)
                if isinstance(received, HandedOver):
                    self._take_over(received)
                elif self._on_tally is not None:
                    self._on_tally(process, received)
        except (HandoffError, ConnectionError) as exc:
            # Every message it kept is safe in the spool; a restart reads them all.
            log.error("handoff.broken", error=str(exc) or type(exc).__name__)
            self._on_broken()

    def tell_all(self, signal: bytes) -> None:
        for writer in self._writers:
            if not writer.is_closing():
                writer.write(signal)

    def tell_one(self, signal: bytes) -> None:
        """To each accepting process in turn: each read lets one MAIL go on, somewhere."""
        if self._writers:
            self._next = (self._next + 1) % len(self._writers)
            writer = self._writers[self._next]
            if not writer.is_closing():
                writer.write(signal)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
