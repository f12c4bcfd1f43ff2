"""The benchmark harness's own SMTP: what the load generator sends and the counting sink counts.

Every figure in bench/RESULTS.md is counted by these two, so they are held to
the wire format here: dot-stuffing both ways, empty and large messages,
pipelined commands, refusals counted by the command refused.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import loadgen
import sink as counting_sink
from messages import MessageTemplate

from tests.sink import CaptureHandler, CaptureSink


@pytest.fixture
def sink() -> Iterator[counting_sink.SinkHandle]:
    handle = counting_sink.start_sink()
    try:
        yield handle
    finally:
        handle.stop()


def _wire_size(content: bytes) -> int:
    """What the sink counts for `content` sent by smtplib: CRLF lines, leading dots doubled."""
    lines = content.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return len(stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n")


def test_the_sink_counts_each_message_and_its_size_as_sent(
    sink: counting_sink.SinkHandle,
) -> None:
    dotted = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nbody\r\n"
    large = b"a line of a large attachment, base64 in real life\r\n" * 80_000  # ~4 MB
    with smtplib.SMTP(sink.host, sink.port) as client:
        code, banner = client.ehlo()
        assert code == 250 and b"8BITMIME" in banner
        client.sendmail("a@sender.test", ["b@recipient.test"], dotted)
        client.sendmail("a@sender.test", ["b@recipient.test"], b"")
        client.sendmail("a@sender.test", ["b@recipient.test", "c@recipient.test"], large)
        assert client.docmd("DATA")[0] == 503  # no recipient yet
        assert client.docmd("VRFY", "b@recipient.test")[0] == 502
    assert sink.wait_for(3, 5)
    assert sink.counters.messages == 3
    assert sink.counters.bytes == _wire_size(dotted) + _wire_size(b"") + _wire_size(large)


def test_the_sink_answers_pipelined_commands_in_order(sink: counting_sink.SinkHandle) -> None:
    with socket.create_connection((sink.host, sink.port), timeout=5) as conn:
        assert conn.recv(1000).startswith(b"220 ")
        conn.sendall(
            b"EHLO client.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nDATA\r\n"
            b"Subject: one\r\n\r\nfirst\r\n.\r\n"
            b"MAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nDATA\r\n.\r\nQUIT\r\n"
        )
        replies = b""
        while not replies.endswith(b"221 2.0.0 Bye\r\n"):
            more = conn.recv(4096)
            assert more, replies
            replies += more
    codes = [line[:3] for line in replies.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"250", b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250", b"221"]
    assert sink.wait_for(2, 5)
    assert sink.counters.bytes == len(b"Subject: one\r\n\r\nfirst\r\n")


def test_the_sink_finds_the_end_of_data_split_across_reads(
    sink: counting_sink.SinkHandle,
) -> None:
    with socket.create_connection((sink.host, sink.port), timeout=5) as conn:
        conn.recv(1000)
        conn.sendall(b"HELO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nDATA\r\n")
        conn.sendall(b"x" * 1000 + b"\r")
        for piece in (b"\n", b".", b"\r", b"\n"):
            time.sleep(0.05)  # each its own read
            conn.sendall(piece)
        conn.sendall(b"QUIT\r\n")
        replies = b""
        while b"221 " not in replies:
            more = conn.recv(4096)
            assert more, replies
            replies += more
    assert sink.wait_for(1, 5)
    assert sink.counters.bytes == 1002


def _template(body: bytes) -> MessageTemplate:
    return MessageTemplate(
        "dotted",
        b"From: a@sender.test\nSubject: harness\r\nMessage-ID: <",
        b"@bench.test>\r\n\r\n" + body,
        sender="a@sender.test",
        recipients=("b@recipient.test", "c@recipient.test"),
    )


async def test_the_load_generator_sends_each_template_byte_for_byte() -> None:
    """What arrives (unstuffed by aiosmtpd) is the template, with CRLF line ends."""
    capture = CaptureSink()
    port = await capture.start()
    template = _template(b".starts with a dot\n..two dots\r\n.\r\nlast line without an end")
    client = loadgen.Client(loadgen.LoadConfig("127.0.0.1", port))
    wire = loadgen.WireTemplate(template)
    try:
        await client.ensure_connected()
        for n in (1, 2):
            await client.sendmail(wire, n, "t")
        await client.quit()
        received = await capture.handler.wait_for(2)
    finally:
        await capture.stop()
    for n, message in zip((1, 2), received, strict=True):
        expected = template.render(n, "t").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert message.content == expected + b"\r\n"
        assert message.sender == "a@sender.test"
        assert message.recipients == ["b@recipient.test", "c@recipient.test"]


async def test_refusals_are_counted_by_the_command_refused_and_the_session_goes_on() -> None:
    """A refused transaction is reset and the connection reused, as aiosmtplib's sendmail does."""
    handler = CaptureHandler()
    refused = iter([True, False] * 10)
    handler.data_reply = lambda message: "451 4.3.0 try later" if next(refused) else None
    capture = CaptureSink(handler)
    port = await capture.start()
    cfg = loadgen.LoadConfig(
        "127.0.0.1", port, scenario="plain", concurrency=1, messages=10, warmup=0.0
    )
    try:
        result = await loadgen.run_load(cfg)
    finally:
        await capture.stop()
    assert result.connected == 1
    assert result.measured.accepted == 5
    assert result.measured.errors == {"end of data:451": 5}
    assert len(handler.messages) == 5


async def test_the_load_generator_counts_a_refused_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    cfg = loadgen.LoadConfig("127.0.0.1", port, concurrency=2, messages=3, warmup=0.0)
    result = await asyncio.wait_for(loadgen.run_load(cfg), 30)
    assert result.connected == 0
    assert result.measured.accepted == 0
    assert result.connect_errors == {"ConnectionRefusedError": 2}
    assert set(result.measured.errors) == {"connect:ConnectionRefusedError"}


def test_the_load_generator_and_the_sink_together(sink: counting_sink.SinkHandle) -> None:
    cfg = loadgen.LoadConfig(
        sink.host, sink.port, scenario="blend", concurrency=4, messages=200, warmup=0.0
    )
    result = loadgen.run_loop(loadgen.run_load(cfg))
    assert result.measured.accepted == 200
    assert not result.measured.errors
    assert sink.wait_for(200, 5)
    assert sink.counters.messages == 200
    assert sum(result.measured.accepted_by.values()) == 200
    assert isinstance(result.measured.latency_ms["p99"], float)


async def test_a_session_refused_at_its_greeting_is_not_counted_as_connected() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.7.1 no service here\r\n")
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = loadgen.LoadConfig("127.0.0.1", port, concurrency=2, messages=2, warmup=0.0)
    try:
        result = await asyncio.wait_for(loadgen.run_load(cfg), 30)
    finally:
        server.close()
    assert result.connected == 0
    assert result.connect_errors == {"greeting:554": 2}
    assert result.measured.accepted == 0
