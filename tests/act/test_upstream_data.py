"""The message as it goes to the upstream: transparency done here, not by aiosmtplib.

The upstream must receive exactly the bytes the relay holds, whatever lines
begin with dots, and a refusal, a timeout or a dropped connection after the
content must leave the copy to be retried or bounced, never counted delivered.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.act.upstream import Transaction, Upstream, transparent
from smtpguard.config.model import UpstreamConfig
from smtpguard.spool.model import RecipientState
from tests.sink import CaptureHandler, CaptureSink


def _as_aiosmtplib_sends(content: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(content))


@given(st.binary(max_size=64) | st.lists(st.sampled_from([b"a", b".", b"\r", b"\n"])).map(b"".join))
def test_transparent_matches_aiosmtplib_for_any_content(content: bytes) -> None:
    assert transparent(content) == _as_aiosmtplib_sends(content)


@pytest.mark.parametrize(
    ("content", "on_the_wire"),
    [
        pytest.param(b".\r\n", b"..\r\n", id="only-a-dot"),
        pytest.param(b"a\r\n.b\r\n", b"a\r\n..b\r\n", id="line-starting-with-dot"),
        pytest.param(b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n", id="a-line-that-would-end-data"),
        pytest.param(b"no line ending", b"no line ending\r\n", id="unterminated"),
        pytest.param(b"bare\nfeed\r\n", b"bare\r\nfeed\r\n", id="bare-lf-normalised"),
        pytest.param(b"", b"\r\n", id="empty"),
    ],
)
def test_transparent_examples(content: bytes, on_the_wire: bytes) -> None:
    assert transparent(content) == on_the_wire


def _upstream(port: int, timeout: float = 10.0) -> Upstream:
    return Upstream(UpstreamConfig(host="127.0.0.1", port=port, timeout=timeout), "relay.test")


def _transaction(content: bytes) -> Transaction:
    return Transaction("j@northshire.gov.uk", ["a@example.org"], content, False, False)


@pytest.fixture
async def sink() -> AsyncIterator[CaptureSink]:
    capture = CaptureSink(CaptureHandler())
    await capture.start()
    yield capture
    await capture.stop()


async def test_upstream_receives_exactly_the_held_bytes(sink: CaptureSink) -> None:
    content = (
        b"Subject: dots\r\n\r\n.leading dot\r\n.\r\n..two dots\r\nlast line.\r\n"
        + b"x" * 900
        + b"\r\n" * 3
    )
    upstream = _upstream(sink.port)
    try:
        for _ in range(2):  # the second on the reused connection
            outcomes = await upstream.deliver(_transaction(content))
            assert [o.state for o in outcomes] == [RecipientState.DELIVERED]
    finally:
        await upstream.close()
    assert [m.content for m in sink.handler.messages] == [content, content]


@pytest.mark.parametrize(
    ("reply", "state"),
    [
        ("554 5.7.1 refused after content", RecipientState.BOUNCED),
        ("451 4.3.0 later", RecipientState.DEFERRED),
    ],
)
async def test_a_refusal_after_the_content_is_not_a_delivery(
    sink: CaptureSink, reply: str, state: RecipientState
) -> None:
    sink.handler.data_reply = lambda message: reply
    upstream = _upstream(sink.port)
    try:
        outcomes = await upstream.deliver(_transaction(b"Subject: x\r\n\r\nbody\r\n"))
        assert [(o.state, o.reply) for o in outcomes] == [(state, reply)]
        sink.handler.data_reply = lambda message: None
        outcomes = await upstream.deliver(_transaction(b"Subject: y\r\n\r\nbody\r\n"))
        assert [o.state for o in outcomes] == [RecipientState.DELIVERED]
    finally:
        await upstream.close()


class _SilentAfterContent:
    """A raw SMTP server that accepts the DATA command, then reads the content and either
    never answers or hangs up: what the upstream end of a broken link looks like."""

    def __init__(self, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.received = bytearray()
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 silent.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                command = line[:4].upper()
                if command in (b"EHLO", b"HELO"):
                    writer.write(b"250 silent.test\r\n")
                elif command == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    self.received += await reader.readuntil(b"\r\n.\r\n")
                    if self.hang_up:
                        writer.close()
                        return
                    await asyncio.sleep(30)
                elif command == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()


@pytest.mark.parametrize("hang_up", [True, False], ids=["drops-connection", "never-answers"])
async def test_no_answer_to_the_content_leaves_the_copy_deferred(hang_up: bool) -> None:
    server = _SilentAfterContent(hang_up)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, family=socket.AF_INET)
    port = listener.sockets[0].getsockname()[1]
    upstream = _upstream(port, timeout=0.5)
    try:
        outcomes = await upstream.deliver(_transaction(b"Subject: x\r\n\r\nbody\r\n"))
        assert [o.state for o in outcomes] == [RecipientState.DEFERRED]
        assert server.received.endswith(b"body\r\n.\r\n")
        # The broken connection is not pooled: the next attempt opens a new one.
        await upstream.deliver(_transaction(b"Subject: y\r\n\r\nbody\r\n"))
        assert server.connections == 2
    finally:
        await upstream.close()
        listener.close()
