"""What the fuzzers hold the relay to, shared by the atheris harnesses and the CI tests.

Reading (`check_message`): `read_message` and `inspect_message` never raise;
a part that could not be read is an `uninspectable` finding; no finding's
excerpt (nor any line of the verdict's explanation, less the locations: an
attachment's file name is shown as the sender wrote it) contains a whole
identifier planted in the input.

The SMTP dialogue (`converse` + `check_transcript`): the relay's own
`GuardSMTP`, with its real `RelayHandler`, is given a client byte stream over
an in-memory transport (the same calls an event loop's socket transport
makes: `connection_made`, `data_received`, `eof_received`, `connection_lost`).
Every reply is well formed (three digits, then a space or a hyphen, printable
text, CRLF), the session task never ends in an exception, the handler's
`handle_exception` (which answers 451 and logs `session.error`) is never
reached, and unless the stream closed the session (QUIT, a 421, aiosmtpd's
"too many unrecognised commands"), a probe sent after it is answered in step:
the session is still in sync with its client.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz.seeds import ROOT, SENDER, normalised, planted_values
from smtpguard.config import Overrides, load_config
from smtpguard.config.model import Config
from smtpguard.decide import Verdict
from smtpguard.decide.decider import Decider, Reading
from smtpguard.envelope import Envelope
from smtpguard.inspect import inspect_message, read_message
from smtpguard.listen import ListenerSettings, Receipt, RelayHandler, SessionRegistry
from smtpguard.listen.clients import ClientAllowlist
from smtpguard.listen.session import GuardSMTP
from smtpguard.parse import Limits

# Small enough that a fuzzer's input reaches every limit, short enough to stay fast.
FUZZ_LIMITS = Limits(
    max_depth=6,
    max_archive_members=200,
    max_extracted_bytes=16 * 1024 * 1024,
    max_part_bytes=8 * 1024 * 1024,
    part_seconds=5.0,
    message_seconds=10.0,
)


class InvariantBroken(AssertionError):
    """A fuzzer found an input the relay mishandles."""


# -- reading ----------------------------------------------------------------------------


@functools.cache
def council_config() -> Config:
    """The example council's configuration (its detectors, registers and default policy),
    with the fuzzing limits."""
    data_dir = Path(tempfile.gettempdir()) / "smtpguard-fuzz"  # never opened: nothing is stored
    config = load_config(ROOT / "config" / "smtpguard.yaml", Overrides(data_dir=data_dir))
    parse = config.parse.model_copy(
        update={
            "max_depth": FUZZ_LIMITS.max_depth,
            "max_archive_members": FUZZ_LIMITS.max_archive_members,
            "max_extracted_bytes": FUZZ_LIMITS.max_extracted_bytes,
            "max_part_bytes": FUZZ_LIMITS.max_part_bytes,
            "part_timeout": FUZZ_LIMITS.part_seconds,
            "message_timeout": FUZZ_LIMITS.message_seconds,
        }
    )
    return config.model_copy(update={"parse": parse})


@functools.cache
def council_decider() -> Decider:
    return Decider.from_config(council_config())


ENVELOPE = Envelope(
    sender=SENDER,
    recipients=("s.mills@millsandco-solicitors.co.uk", "dan.hart77@gmail.com"),
    client_address="127.0.0.1",
    client_name="fuzz.test",
    received_at=0.0,
)


def leaked(excerpts: Sequence[str], planted: frozenset[str] | None = None) -> list[str]:
    """The planted values that appear whole in any of `excerpts` (normalised)."""
    values = planted_values() if planted is None else planted
    found = []
    for excerpt in excerpts:
        text = normalised(excerpt)
        found += [value for value in values if value in text]
    return found


def check_reading(reading: Reading, planted: frozenset[str] | None = None) -> None:
    unreadable = any(a.kind == "uninspectable" for a in reading.attachments)
    if unreadable and not any(f.detector == "uninspectable" for f in reading.findings):
        raise InvariantBroken("an uninspectable part without an uninspectable finding")
    for finding in reading.findings:
        if not isinstance(finding.excerpt, str):
            raise InvariantBroken(f"{finding.detector}: excerpt is not text")
    values = leaked([f.excerpt for f in reading.findings], planted)
    if values:
        raise InvariantBroken(f"a finding's excerpt shows a whole identifier: {values}")


def check_verdict(verdict: Verdict, planted: frozenset[str] | None = None) -> None:
    lines = [line for v in verdict.recipients.values() for line in v.explanation]
    lines += [v.reason for v in verdict.recipients.values()]
    # A location names the attachment as the sender named it, and reviewers need that
    # name: "Amelia Hart 14-03-2015.pdf" shows as it is. Everything else is checked.
    locations = sorted({f.location for f in verdict.findings}, key=len, reverse=True)
    for location in locations:
        lines = [line.replace(location, "") for line in lines]
    values = leaked(lines, planted)
    if values:
        raise InvariantBroken(f"a verdict's explanation shows a whole identifier: {values}")


def check_message(raw: bytes, planted: frozenset[str] | None = None) -> Verdict:
    """Read with the default detectors, then inspect with the council's configuration."""
    try:
        reading = read_message(raw, FUZZ_LIMITS)
    except Exception as exc:
        raise InvariantBroken(f"read_message raised {type(exc).__name__}: {exc}") from exc
    check_reading(reading, planted)
    try:
        verdict = inspect_message(raw, ENVELOPE, council_config())
    except Exception as exc:
        raise InvariantBroken(f"inspect_message raised {type(exc).__name__}: {exc}") from exc
    check_verdict(verdict, planted)
    return verdict


# -- the SMTP dialogue ------------------------------------------------------------------

PROBE = b"\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"
_REPLY = re.compile(rb"([2-5][0-9][0-9])([ -][\t\x20-\x7e\x80-\xff]*)?")


class _Intake:
    """Takes every message at once: the listener, not the relay behind it, is under test."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, bytes]] = []

    async def receive(self, envelope: Envelope, content: bytes, tls: bool) -> Receipt:
        self.messages.append((envelope, content))
        return Receipt(f"fuzz{len(self.messages)}")

    def pressure(self) -> str | None:
        return None

    async def pace(self) -> None:
        return None


class _Handler(RelayHandler):
    def __init__(self, intake: _Intake) -> None:
        super().__init__(intake)
        self.exceptions: list[BaseException] = []

    async def handle_exception(self, error: BaseException) -> str:
        self.exceptions.append(error)
        return await super().handle_exception(error)


class MemoryTransport(asyncio.Transport):
    """What a socket transport does for the protocol, with the bytes kept in memory."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: asyncio.Protocol | None = None
        self.written = bytearray()
        self.closing = False
        self.written_after_close = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 25)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            self.written_after_close += len(data)
            return
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self.protocol is not None:
                self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self.closing

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol


FUZZ_SETTINGS = ListenerSettings(
    hostname="relay.fuzz",
    allowlist=ClientAllowlist([ipaddress.ip_network("127.0.0.0/8")]),
    max_message_size=3000,  # small enough for a fuzzer's input to pass it
    max_recipients=5,
    max_sessions=10,
    command_timeout=3600.0,
    data_timeout=3600.0,
)


@dataclass
class Transcript:
    output: bytes
    messages: list[tuple[Envelope, bytes]]
    exceptions: list[BaseException]
    loop_errors: list[dict[str, Any]]
    task_error: BaseException | None
    written_after_close: int
    probed: bool
    closed: bool
    tail_quits: bool  # the stream ends in a partial "QUIT" that the probe's CRLF completes
    replies: list[bytes] = field(default_factory=list)


async def _until_idle(protocol: GuardSMTP, transport: MemoryTransport, limit: int) -> None:
    """Run the loop until the session waits for more input, or ends."""
    reader = protocol._reader
    task = protocol._handler_coroutine
    quiet = 0
    last = (-1, -1)
    for _ in range(limit):
        await asyncio.sleep(0)
        if task is None or task.done() or transport.closing:
            return
        state = (len(reader._buffer), len(transport.written))  # type: ignore[attr-defined]
        waiting = reader._waiter is not None  # type: ignore[attr-defined]
        quiet = quiet + 1 if state == last and waiting else 0
        last = state
        if quiet >= 3:
            return
    raise InvariantBroken("the session neither waited for input nor ended")


async def converse(
    data: bytes, settings: ListenerSettings = FUZZ_SETTINGS, probe: bool = True
) -> Transcript:
    """Play `data` to a new session as one client stream, then the probe, then EOF."""
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    intake = _Intake()
    handler = _Handler(intake)
    protocol = GuardSMTP(handler, settings, SessionRegistry(), loop)
    transport = MemoryTransport(loop)
    transport.set_protocol(protocol)
    probed = False
    try:
        protocol.connection_made(transport)
        await _until_idle(protocol, transport, 100_000)
        if not transport.closing:
            protocol.data_received(data)
            await _until_idle(protocol, transport, 1_000_000)
        if probe and not transport.closing:
            probed = True
            protocol.data_received(PROBE)
            await _until_idle(protocol, transport, 100_000)
        if not transport.closing:
            protocol.eof_received()
            transport.close()
        task = protocol._handler_coroutine
        for _ in range(100):
            await asyncio.sleep(0)
            if task is None or task.done():
                break
        task_error = None
        if task is not None and task.done() and not task.cancelled():
            task_error = task.exception()
    finally:
        loop.set_exception_handler(previous)
    output = bytes(transport.written)
    return Transcript(
        output,
        intake.messages,
        handler.exceptions,
        loop_errors,
        task_error,
        transport.written_after_close,
        probed,
        transport.closing,
        stream_may_quit(data.rsplit(b"\n", 1)[-1]),
        replies=output.split(b"\r\n")[:-1],
    )


def check_transcript(transcript: Transcript) -> None:
    output = transcript.output
    if transcript.exceptions:
        names = sorted({type(e).__name__ for e in transcript.exceptions})
        raise InvariantBroken(f"handle_exception reached (451 sent): {names}")
    if transcript.task_error is not None:
        error = transcript.task_error
        raise InvariantBroken(f"the session task died: {type(error).__name__}: {error}")
    if transcript.loop_errors:
        messages = [str(c.get("message")) for c in transcript.loop_errors]
        raise InvariantBroken(f"unhandled errors on the event loop: {messages}")
    if not output.endswith(b"\r\n"):
        raise InvariantBroken(f"output does not end with CRLF: {output[-80:]!r}")
    lines = transcript.replies
    if not lines[0].startswith(b"220 "):
        raise InvariantBroken(f"no greeting: {lines[0]!r}")
    pending: bytes | None = None  # the code of an unfinished multi-line reply
    for line in lines:
        match = _REPLY.fullmatch(line)
        if match is None:
            raise InvariantBroken(f"malformed reply line: {line[:120]!r}")
        code, rest = match[1], match[2] or b" "
        if pending is not None and code != pending:
            raise InvariantBroken(f"multi-line reply changes code: {pending!r} then {code!r}")
        pending = code if rest.startswith(b"-") else None
        if code == b"451":
            raise InvariantBroken("a 451 reply: an internal error in the session")
    if pending is not None:
        raise InvariantBroken("a multi-line reply never finished")
    finals = [line for line in lines if line[3:4] != b"-"]
    ended = next((i for i, line in enumerate(finals) if _ends_session(line)), None)
    if ended is not None and ended != len(finals) - 1:
        raise InvariantBroken(f"replies after the session ended: {finals[ended:][:3]!r}")
    if transcript.probed:
        if ended is None:
            raise InvariantBroken(f"the probe went unanswered: {finals[-4:]!r}")
        codes = [line[:3] for line in finals[-3:]]
        quit_early = transcript.tail_quits and codes[-1] == b"221"
        if codes[-1] == b"221" and codes != [b"250", b"250", b"221"] and not quit_early:
            raise InvariantBroken(f"the probe was answered out of step: {finals[-5:]!r}")
    if transcript.written_after_close and ended is None:
        raise InvariantBroken("replies written after the session was closed")


def stream_may_quit(tail: bytes) -> bool:
    """Whether an unfinished last line, ended by the probe's CRLF, is a QUIT (as aiosmtpd
    reads a line: trailing CRs and LFs stripped, the command before the first space)."""
    command, _, argument = tail.rstrip(b"\r\n").partition(b" ")
    return command.upper() == b"QUIT" and not argument.strip()


def _ends_session(line: bytes) -> bool:
    """QUIT's 221, a 421, or aiosmtpd's 502 for too many unrecognised commands."""
    code = line[:3]
    return code in (b"221", b"421") or (code == b"502" and b"goodbye" in line.lower())


def run_dialogue(data: bytes, loop: asyncio.AbstractEventLoop | None = None) -> Transcript:
    """`converse` + `check_transcript` on a loop of its own (or the one given)."""
    if loop is None:
        transcript = asyncio.run(converse(data))
    else:
        transcript = loop.run_until_complete(converse(data))
    check_transcript(transcript)
    return transcript
