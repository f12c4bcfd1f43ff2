"""Bounded, deterministic fuzzing of the SMTP dialogue for CI.

The long, coverage-guided runs are atheris (`fuzz/smtp_dialogue.py`, see
fuzz/README.md). Here hypothesis, with a fixed seed, builds client streams
from command and data fragments (valid, out of order, pipelined, garbage,
NULs, bare CR/LF, overlong lines, smuggling end-of-data variants) and plays
them:

- to the relay's `GuardSMTP` and `RelayHandler` over an in-memory transport,
  many examples, fast;
- to a real relay over a real loopback socket, fewer examples, with the
  relay's own log watched for `session.error` (what `handle_exception` logs
  with its 451).

Either way every reply must be well formed, the session must not die of an
exception, and a probe sent after the stream must be answered in step (see
`fuzz/checks.py`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.checks import PROBE, Transcript, check_transcript, converse, stream_may_quit
from fuzz.seeds import smtp_seeds
from tests.conftest import RelayRunner
from tests.sink import CaptureSink

COMMANDS = [
    b"EHLO client.test",
    b"HELO client.test",
    b"EHLO",
    b"MAIL FROM:<j@northshire.gov.uk>",
    b"MAIL FROM:<j@northshire.gov.uk> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<> SMTPUTF8",
    b"MAIL FROM:<j@northshire.gov.uk> SIZE=99999999999999999999",
    b"MAIL FROM:j@northshire.gov.uk",
    b'MAIL FROM:<"a>b"@northshire.gov.uk>',
    b"RCPT TO:<a@example.org>",
    b"RCPT TO:<z\xc3\xab@example.org>",
    b"RCPT TO:<a@example.org> NOTIFY=NEVER",
    b"RCPT TO:<@route:a@example.org>",
    b"RCPT TO:<>",
    b"DATA",
    b"DATA x",
    b"RSET",
    b"NOOP",
    b"VRFY a@",
    b"VRFY <a@example.org>",
    b"EXPN list",
    b"HELP",
    b"HELP MAIL",
    b"STARTTLS",
    b"AUTH PLAIN AGFAYgBj",
    b"BDAT 10 LAST",
    b"XCLIENT ADDR=1.2.3.4",
]
PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\xff\xfe",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"..",
    b" ",
    b"=",
    b"<",
    b">",
    b"QUIT",
]


@st.composite
def fragments(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind <= 1:
        command = draw(st.sampled_from(COMMANDS))
        if draw(st.booleans()):
            command = command.lower()
        return command + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""]))
    if kind == 2:
        return draw(st.sampled_from(PIECES))
    if kind == 3:
        return draw(st.binary(max_size=80))
    if kind == 4:
        length = draw(st.sampled_from([511, 512, 513, 999, 1000, 1001, 1002, 5000, 70_000]))
        return draw(st.sampled_from([b"MAIL FROM:<", b"X", b"Subject: "])) + b"a" * length
    body = draw(
        st.lists(st.sampled_from([b"Subject: x", b"", b".", b"..x", b"a" * 1000]), max_size=6)
    )
    return b"DATA\r\n" + b"\r\n".join(body) + draw(st.sampled_from(PIECES))


def streams() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(fragments(), max_size=25).map(b"".join),
        st.sampled_from([seed for _, seed in smtp_seeds()]),
        st.binary(max_size=2000),
    )


@settings(
    max_examples=1000,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(streams())
def test_in_memory_sessions_answer_every_stream_well(stream: bytes) -> None:
    check_transcript(asyncio.run(converse(stream)))


# -- a real relay, real sockets -------------------------------------------------------------


def _over_the_wire(port: int, stream: bytes) -> Transcript:
    """The stream and the probe on one connection; everything the relay says until it closes."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(stream + PROBE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    output = bytes(received)
    return Transcript(
        output,
        [],
        [],
        [],
        None,
        0,
        probed=True,
        closed=True,
        # Whether the stream's own QUIT may have closed the session before the probe.
        tail_quits=any(stream_may_quit(line) for line in stream.split(b"\n")),
        replies=output.split(b"\r\n")[:-1],
    )


async def test_a_real_relay_answers_random_streams_well_and_keeps_serving(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start(
        {"server": {"max_message_size": "64KB", "max_recipients": 5, "max_sessions": 20}}
    )
    assert service.address is not None
    port = service.address[1]
    played: list[bytes] = []

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(streams())
    def play(stream: bytes) -> None:
        played.append(stream)
        transcript = _over_the_wire(port, stream)
        check_transcript(transcript)

    with structlog.testing.capture_logs() as logs:
        await asyncio.to_thread(play)
        # Still serving: an ordinary message goes through afterwards.
        clean = b"EHLO c\r\nMAIL FROM:<j@northshire.gov.uk>\r\nRCPT TO:<last@example.org>\r\n"
        clean += b"DATA\r\nSubject: after the fuzz\r\n\r\nfine\r\n.\r\n"
        after = await asyncio.to_thread(_over_the_wire, port, clean)
    assert len(played) >= 60
    assert b"250 2.0.0 Ok: queued as" in after.output
    errors = [e for e in logs if e["event"] == "session.error"]
    assert errors == [], errors
    deadline = time.monotonic() + 20
    while not any(b"after the fuzz" in c.content for c in sink.handler.messages):
        assert time.monotonic() < deadline, "the message after the fuzz was not delivered"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("name, stream", smtp_seeds(), ids=[name for name, _ in smtp_seeds()])
def test_every_smtp_seed_passes(name: str, stream: bytes) -> None:
    check_transcript(asyncio.run(converse(stream)))
