"""Abusive clients against a real relay over real sockets: it cuts them off and keeps serving.

Already covered elsewhere (not repeated here): a client that stalls in DATA or
idles past the command timeout (tests/test_relay_smtp.py), the session limit
with two sessions, the six smuggling end-of-data payloads refused with nothing
relayed, a 999-character line, commands out of order one at a time, and
`read_data` byte by byte (tests/listen/test_data.py). Here: clients that
trickle one byte a second, two thousand idle connections, pipelined garbage,
oversized commands and headers, header injection through the envelope, and
smuggling followed by a real message, each with the reply codes asserted.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import socket
import time
from pathlib import Path

import aiosmtplib
import pytest

from smtpguard.spool import MessageState
from tests.conftest import RelayRunner, write_config
from tests.processes import RelayLauncher
from tests.sink import CaptureSink

SENDER = "j.okafor@northshire.gov.uk"
EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<j.okafor@northshire.gov.uk>\r\n"
RCPT = b"RCPT TO:<a@example.org>\r\n"


def _port(service: object) -> int:
    address = service.address  # type: ignore[attr-defined]
    assert address is not None
    return int(address[1])


def exchange(port: int, data: bytes, timeout: float = 15.0) -> list[bytes]:
    """Send everything at once (pipelined) and read every reply line until the relay closes."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received).split(b"\r\n")[:-1]


def finals(lines: list[bytes]) -> list[bytes]:
    """The last line of each reply (multi-line EHLO replies folded to their last line)."""
    return [line for line in lines if line[3:4] != b"-"]


def codes(lines: list[bytes]) -> list[str]:
    return [line[:3].decode() for line in finals(lines)]


async def timed_send(port: int, subject: str, recipient: str = "b@example.org") -> float:
    """One ordinary message from connect to 250; the seconds it took."""
    started = time.monotonic()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    await client.connect()
    _, reply = await client.sendmail(
        SENDER, [recipient], f"Subject: {subject}\r\n\r\nan ordinary message\r\n".encode()
    )
    await client.quit()
    assert "queued as" in reply
    return time.monotonic() - started


# -- slow clients ------------------------------------------------------------------------


class _Lines:
    """Reply lines from a socket, read with recv (a makefile breaks after a timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def reply(self) -> bytes:
        """The last line of the next reply; b"" once the relay has closed."""
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return b""
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] != b"-":
                return line


def _trickle(port: int, before: bytes, trickled: bytes) -> tuple[bytes, float]:
    """Send `before` and read its replies, then send `trickled` one byte a second: the
    reply that cuts us off, and how long after the trickle began it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        lines = _Lines(sock)
        lines.reply()  # the greeting
        sock.sendall(before)
        for _ in range(before.count(b"\r\n")):
            lines.reply()
        started = time.monotonic()
        for byte in trickled:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(1.0)
            try:
                return lines.reply(), time.monotonic() - started
            except TimeoutError:
                continue
            finally:
                sock.settimeout(20)
        return lines.reply(), time.monotonic() - started


async def test_one_byte_a_second_in_data_and_in_a_command_is_cut_off_while_others_are_served(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start({"server": {"data_timeout": "2s", "command_timeout": "2s"}})
    port = _port(service)
    in_data = asyncio.to_thread(
        _trickle,
        port,
        EHLO + MAIL + RCPT + b"DATA\r\n",
        b"Subject: slow\r\n\r\n" + b"x" * 60,
    )
    in_command = asyncio.to_thread(
        _trickle, port, EHLO, b"MAIL FROM:<j.okafor@northshire.gov.uk>\r\n"
    )
    slow = asyncio.gather(in_data, in_command)
    await asyncio.sleep(0.3)  # both are trickling now
    latencies = []
    while not slow.done():
        latencies.append(await timed_send(port, f"meanwhile {len(latencies)}"))
        await asyncio.sleep(0.1)
    (data_reply, data_after), (command_reply, command_after) = await slow
    print(
        f"cut off after {data_after:.2f}s (DATA), {command_after:.2f}s (command); "
        f"{len(latencies)} other messages, slowest {max(latencies):.3f}s"
    )

    # The 354 came just before the trickle: cut off by data_timeout, bytes or not.
    assert data_reply.startswith(b"421 4.4.2 Timeout while receiving message data"), data_reply
    assert 1.5 <= data_after <= 4.0, data_after
    # A valid command resets the command timer; bytes of an unfinished one do not.
    assert command_reply.startswith(b"421 4.4.2 Timeout waiting for a command"), command_reply
    assert 1.5 <= command_after <= 4.0, command_after
    # Everyone else was served meanwhile, promptly.
    assert len(latencies) >= 3
    assert max(latencies) < 1.0, latencies
    captured = await sink.handler.wait_for(len(latencies))
    assert all(b"meanwhile" in c.content for c in captured)
    stored = await service.store.messages(list(MessageState))
    assert len(stored) == len(latencies)  # nothing of the slow DATA was kept


# -- thousands of idle connections ------------------------------------------------------------


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _open_idle(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    first = await asyncio.wait_for(reader.readline(), 20)
    return reader, writer, first


async def test_two_thousand_idle_connections_over_the_limit_get_421_and_nothing_leaks(
    tmp_path: Path, sink: CaptureSink
) -> None:
    limit, flood = 300, 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < flood + 500:
        if hard != resource.RLIM_INFINITY and hard < flood + 500:
            pytest.skip(f"needs {flood + 500} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (flood + 500, hard))
    config = write_config(tmp_path, {"server": {"max_sessions": limit, "command_timeout": "8s"}})
    launcher = RelayLauncher(tmp_path)
    try:
        relay = await launcher.start(config, tmp_path / "data", sink.port)
        pid, port = relay.pid, relay.port
        await asyncio.sleep(0.5)
        baseline = _fd_count(pid)

        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]] = []
        for _ in range(flood // 200):  # in waves, within the listen backlog
            opened += await asyncio.gather(*(_open_idle(port) for _ in range(200)))
        greeted = [(r, w) for r, w, first in opened if first.startswith(b"220 ")]
        refused = [first for _, _, first in opened if not first.startswith(b"220 ")]
        assert len(greeted) == limit
        assert len(refused) == flood - limit
        assert set(refused) == {b"421 4.7.0 Too many connections, try again later\r\n"}
        for reader, writer, first in opened:
            if not first.startswith(b"220 "):
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the relay
                writer.close()

        flooded = _fd_count(pid)
        # Full: a newcomer is told to come back (within the limits), not left hanging.
        _, writer, first = await _open_idle(port)
        assert first == b"421 4.7.0 Too many connections, try again later\r\n"
        writer.close()
        # Ten idle clients leave: a real client is served at once.
        for _, writer in greeted[:10]:
            writer.close()
        await asyncio.sleep(0.3)
        latency = await timed_send(port, "while flooded")
        print(
            f"relay fds {baseline} at rest, {flooded} with {limit} idle sessions; "
            f"a real client served in {latency:.3f}s"
        )
        assert latency < 2.0, latency
        await sink.handler.wait_for(1)

        # The rest never say a word: the relay closes each at the command timeout.
        replies = await asyncio.gather(
            *(asyncio.wait_for(reader.readline(), 20) for reader, _ in greeted[10:])
        )
        assert set(replies) == {b"421 4.4.2 Timeout waiting for a command, closing connection\r\n"}
        for _, writer in greeted[10:]:
            writer.close()
        deadline = time.monotonic() + 10
        while _fd_count(pid) > baseline + 2:
            assert time.monotonic() < deadline, (baseline, _fd_count(pid))
            await asyncio.sleep(0.1)
        # And it still serves.
        assert await timed_send(port, "after the flood") < 2.0
    finally:
        await launcher.kill_all()


# -- pipelined garbage -----------------------------------------------------------------------


async def test_commands_out_of_order_pipelined_in_one_write(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    stream = (
        RCPT
        + b"DATA\r\n"
        + EHLO
        + b"DATA\r\n"
        + RCPT
        + MAIL
        + MAIL
        + b"DATA\r\n"
        + RCPT
        + b"DATA\r\n"
        + b"Subject: piped\r\n\r\nbody\r\n.\r\n"
        + b"RSET\r\nQUIT\r\n"
    )
    replies = await asyncio.to_thread(exchange, _port(service), stream)
    assert codes(replies) == [
        "220", "503", "503", "250", "503", "503", "250", "503", "503", "250", "354", "250",
        "250", "221",
    ]  # fmt: skip
    assert finals(replies)[1] == b"503 5.5.1 Send EHLO or HELO first"
    assert finals(replies)[7] == b"503 5.5.1 Sender already given"
    assert finals(replies)[8] == b"503 5.5.1 Need RCPT command first"
    [captured] = await sink.handler.wait_for(1)
    assert captured.recipients == ["a@example.org"]


@pytest.mark.parametrize(
    "garbage, expected",
    [
        pytest.param(
            b"\x00\x00\x00\r\n", [b'500 5.5.2 command "???" not recognized'], id="nul-line"
        ),
        pytest.param(b"\r\n\r\n", [b"500 5.5.2 bad syntax"] * 2, id="empty-lines"),
        pytest.param(
            MAIL.replace(b">\r\n", b">\x00\r\n"),
            [b"555 5.5.4 MAIL parameter not recognised: ?"],
            id="nul-after-path",
        ),
        pytest.param(b"\xff\xfe\xfd\r\n", [b"500 5.5.2 bad syntax"], id="not-ascii-command"),
        pytest.param(
            random.Random(1).randbytes(65536).replace(b"\n", b"") + b"\r\n",
            [b"500 5.5.2 Command line too long"],
            id="64k-random-bytes-one-line",
        ),
    ],
)
async def test_garbage_is_answered_once_and_the_session_stays_in_step(
    relays: RelayRunner, garbage: bytes, expected: list[bytes]
) -> None:
    service = await relays.start()
    replies = await asyncio.to_thread(
        exchange, _port(service), EHLO + garbage + b"NOOP\r\nQUIT\r\n"
    )
    answered = finals(replies)
    assert answered[0].startswith(b"220 ") and answered[1] == b"250 ENHANCEDSTATUSCODES"
    assert answered[2:] == [*expected, b"250 2.0.0 OK", b"221 2.0.0 Bye"]


async def test_random_garbage_lines_end_the_session_after_five_unknown_commands(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    rng = random.Random(7)
    lines = [
        bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ!#$%&*") for _ in range(8)) + b" junk\r\n"
        for _ in range(20)
    ]
    replies = await asyncio.to_thread(exchange, _port(service), EHLO + b"".join(lines))
    answered = finals(replies)[2:]
    assert [a[:3] for a in answered] == [b"500"] * 4 + [b"502"]
    assert answered[-1] == b"502 5.5.1 Too many unrecognized commands, goodbye."
    # The relay closed the connection (exchange returned), and it still serves others.
    assert await timed_send(_port(service), "after garbage") < 1.0


# -- oversized commands and headers ------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"NOOP " + b"x" * 508, id="513-bytes"),
        pytest.param(b"MAIL FROM:<" + b"a" * 600 + b"@example.org>", id="600-byte-mail"),
        pytest.param(b"RCPT TO:<" + b"a" * 990 + b"@example.org>", id="1001-bytes"),
        pytest.param(b"X" * (1024 * 1024), id="1mb-line"),
    ],
)
async def test_oversized_command_gets_one_500_and_the_session_continues(
    relays: RelayRunner, sink: CaptureSink, line: bytes
) -> None:
    service = await relays.start()
    stream = (
        EHLO + MAIL + line + b"\r\n" + RCPT + b"DATA\r\nSubject: ok\r\n\r\nfine\r\n.\r\nQUIT\r\n"
    )
    replies = await asyncio.to_thread(exchange, _port(service), stream)
    answered = finals(replies)
    assert answered[2] == b"250 2.1.0 Sender OK"
    assert answered[3] == b"500 5.5.2 Command line too long"
    assert codes(replies)[4:] == ["250", "354", "250", "221"]
    [captured] = await sink.handler.wait_for(1)
    assert captured.recipients == ["a@example.org"]


async def test_a_1mb_header_line_is_refused_and_ten_thousand_headers_are_relayed(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    port = _port(service)
    huge = b"Subject: " + b"h" * (1024 * 1024) + b"\r\n\r\nbody\r\n.\r\n"
    replies = await asyncio.to_thread(
        exchange, port, EHLO + MAIL + RCPT + b"DATA\r\n" + huge + b"NOOP\r\nQUIT\r\n"
    )
    assert finals(replies)[5] == (
        b"550 5.6.0 Message refused: a line is longer than 998 characters"
    )
    assert codes(replies)[6:] == ["250", "221"]

    many = b"".join(b"X-Trace-%05d: hop %d\r\n" % (i, i) for i in range(10_000))
    content = many + b"Subject: ten thousand headers\r\n\r\nbody\r\n"
    started = time.monotonic()
    replies = await asyncio.to_thread(
        exchange, port, EHLO + MAIL + RCPT + b"DATA\r\n" + content + b".\r\nQUIT\r\n"
    )
    assert finals(replies)[5].startswith(b"250 2.0.0 Ok: queued as")
    latency = await timed_send(port, "meanwhile")  # the relay is not stuck on it
    assert latency < 1.0
    captured = await sink.handler.wait_for(2, timeout=30)
    [big] = [c for c in captured if b"ten thousand headers" in c.content]
    assert big.content.endswith(content)
    assert time.monotonic() - started < 30


# -- header injection through the envelope -------------------------------------------------


@pytest.mark.parametrize(
    "command, expected",
    [
        pytest.param(
            b"MAIL FROM:<a@northshire.gov.uk\rX-Injected: yes>",
            b"501 5.1.7 Bad sender address syntax: ",
            id="cr-in-sender",
        ),
        pytest.param(
            b'MAIL FROM:<"a\rX-Injected: yes"@northshire.gov.uk>',
            b"501 5.1.7 Bad sender address syntax: ",
            id="cr-in-quoted-sender",
        ),
        pytest.param(
            b"MAIL FROM:<a\x00@northshire.gov.uk>",
            b"501 5.1.7 Bad sender address syntax: ",
            id="nul-in-sender",
        ),
        pytest.param(
            b"MAIL FROM:<a@northshire.gov.uk> SIZE=10\rX-Injected: yes",
            b"555 5.5.4 MAIL parameter not recognised: X-INJECTED:",
            id="cr-in-mail-parameters",
        ),
    ],
)
async def test_injection_in_mail_from_is_refused(
    relays: RelayRunner, command: bytes, expected: bytes
) -> None:
    service = await relays.start()
    replies = await asyncio.to_thread(exchange, _port(service), EHLO + command + b"\r\nQUIT\r\n")
    assert finals(replies)[2].startswith(expected), finals(replies)
    assert b"\r" not in finals(replies)[2] and b"\x00" not in finals(replies)[2]


@pytest.mark.parametrize(
    "recipient, expected",
    [
        pytest.param(
            b"<v@example.org>\rX-Injected: yes",
            b"555 5.5.4 RCPT parameter not recognised: X-INJECTED:",
            id="cr-after-path",
        ),
        pytest.param(
            b'<"v\rX-Injected: yes"@example.org>',
            b"553 5.1.3 Bad recipient address syntax: ",
            id="cr-in-quoted-recipient",
        ),
        pytest.param(b"<v@example.org\x00>", b"553 5.1.3 Bad recipient address syntax: ", id="nul"),
        pytest.param(
            b"<v@exa>X-Injected: yes",
            b"555 5.5.4 RCPT parameter not recognised: X-INJECTED:",
            id="gt-ends-the-path-early",
        ),
        pytest.param(
            b"<v@example.org>>X-Injected: yes",
            b"555 5.5.4 RCPT parameter not recognised: >X-INJECTED:",
            id="gt-after-path",
        ),
    ],
)
async def test_injection_in_rcpt_to_is_refused(
    relays: RelayRunner, recipient: bytes, expected: bytes
) -> None:
    service = await relays.start()
    replies = await asyncio.to_thread(
        exchange, _port(service), EHLO + MAIL + b"RCPT TO:" + recipient + b"\r\nQUIT\r\n"
    )
    assert finals(replies)[3].startswith(expected), finals(replies)


async def test_quoted_gt_in_addresses_and_cr_in_helo_never_become_headers(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    # A quoted local part may hold ">" and spaces (RFC 5321): accepted, but it must stay
    # inside the one header line that names it: the Received header and the DSN.
    sender = '"s>X-Injected: yes"@northshire.gov.uk'
    refused = '"v>X-Injected: yes"@example.org'
    sink.handler.rcpt_reply = lambda address: "550 5.1.1 no such user" if "v>" in address else None
    service = await relays.start()
    stream = (
        b"EHLO evil\rX-Injected: yes\r\n"
        + f"MAIL FROM:<{sender}>\r\n".encode()
        + f"RCPT TO:<{refused}>\r\n".encode()
        + b"RCPT TO:<ok@example.org>\r\n"
        + b"DATA\r\nSubject: hello\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    )
    replies = await asyncio.to_thread(exchange, _port(service), stream)
    assert codes(replies) == ["220", "250", "250", "250", "250", "354", "250", "221"]
    captured = await sink.handler.wait_for(2, timeout=20)
    [delivered] = [c for c in captured if c.sender == sender]
    [dsn] = [c for c in captured if c.sender in ("", "<>")]
    assert delivered.recipients == ["ok@example.org"]
    assert delivered.content.startswith(b"Received: from evilX-Injected")
    assert dsn.recipients == [sender]
    for content in (delivered.content, dsn.content):
        assert b"\r" not in content.replace(b"\r\n", b"")
        for line in content.split(b"\r\n"):
            assert not line.lower().startswith(b"x-injected"), line
    assert f"Final-Recipient: rfc822; {refused}".encode() in dsn.content


# -- SMTP smuggling, then a real message --------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<ceo@northshire.gov.uk>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n"
)


@pytest.mark.parametrize(
    "ending",
    [b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r", b"\r\n.\n"],
    ids=["lf-dot-lf", "cr-dot-lf", "lf-dot-crlf", "crlf-dot-cr", "cr-dot-cr", "crlf-dot-lf"],
)
async def test_smuggled_end_of_data_then_a_real_message_delivers_only_the_real_one(
    relays: RelayRunner, sink: CaptureSink, ending: bytes
) -> None:
    service = await relays.start()
    stream = (
        EHLO
        + MAIL
        + RCPT
        + b"DATA\r\nSubject: innocent\r\n\r\nhello"
        + ending
        + SMUGGLED
        + MAIL
        + b"RCPT TO:<real@example.org>\r\nDATA\r\nSubject: real\r\n\r\nreal body\r\n.\r\nQUIT\r\n"
    )
    replies = await asyncio.to_thread(exchange, _port(service), stream)
    answered = finals(replies)
    # One message's worth of data, refused as a whole; the smuggled commands were data.
    assert answered[5].startswith(b"550 5.6.0 Message refused: bare CR or LF"), answered
    assert codes(replies)[6:] == ["250", "250", "354", "250", "221"]
    [captured] = await sink.handler.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(sink.handler.messages) == 1
    assert captured.recipients == ["real@example.org"]
    assert b"smuggled" not in captured.content


async def test_nul_before_a_dot_keeps_one_message_with_the_would_be_commands_as_body(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    data = b"Subject: innocent\r\n\r\nhello\r\n\x00.\r\n" + SMUGGLED
    replies = await asyncio.to_thread(
        exchange, _port(service), EHLO + MAIL + RCPT + b"DATA\r\n" + data + b"QUIT\r\n"
    )
    assert codes(replies) == ["220", "250", "250", "250", "354", "250", "221"]
    [captured] = await sink.handler.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(sink.handler.messages) == 1
    assert captured.recipients == ["a@example.org"]
    assert b"\r\n\x00.\r\nMAIL FROM:<ceo@northshire.gov.uk>\r\n" in captured.content
