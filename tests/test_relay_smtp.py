"""The relay end to end over real SMTP on loopback: client -> smtpguard -> capture sink."""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import aiosmtplib
import pytest
import structlog
import trustme

from smtpguard.decide import Verdict
from smtpguard.decide.decider import Decider, Reading
from smtpguard.detect import Finding
from smtpguard.envelope import Envelope
from smtpguard.spool import MessageState, RecipientState
from tests.conftest import RelayRunner, write_config
from tests.detect.edm_helpers import make_registers
from tests.sink import CaptureSink

SENDER = "j.okafor@northshire.gov.uk"
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example"
MESSAGE = (
    b"From: Joy Okafor <j.okafor@northshire.gov.uk>\r\n"
    b"To: Sarah Mills <s.mills@millsandco-solicitors.co.uk>\r\n"
    b"Subject: Amelia Hart - strategy meeting notes\r\n"
    b"Message-ID: <note-1@northshire.gov.uk>\r\n"
    b"\r\n"
    b"Please find the notes below.\r\n"
    b".A line that starts with a dot.\r\n"
    b"NHS number 943 476 5919\r\n"
)


def _after_received(content: bytes) -> bytes:
    """The message as the client sent it: strip the one header smtpguard adds."""
    assert content.startswith(b"Received: from ")
    end = content.index(b"\r\n", content.index(b"(smtpguard)"))
    end = content.index(b"\r\n", end + 2) + 2  # the date continuation line
    return content[end:]


async def _send(
    port: int,
    recipients: list[str],
    content: bytes = MESSAGE,
    sender: str = SENDER,
) -> tuple[dict[str, object], str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    try:
        errors, reply = await client.sendmail(sender, recipients, content)
    finally:
        await client.quit()
    return dict(errors), reply


def _port(service: object) -> int:
    address = service.address  # type: ignore[attr-defined]
    assert address is not None
    return int(address[1])


async def test_when_clean_message_then_relayed_byte_for_byte(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    _, reply = await _send(_port(service), ["s.mills@millsandco-solicitors.co.uk"])
    assert reply.startswith("2.0.0 Ok: queued as ")
    [captured] = await sink.handler.wait_for(1)
    assert captured.sender == SENDER
    assert captured.recipients == ["s.mills@millsandco-solicitors.co.uk"]
    assert _after_received(captured.content) == MESSAGE
    message_id = reply.rsplit(" ", 1)[1]
    assert f"id {message_id};".encode() in captured.content


async def test_when_several_recipients_then_one_transaction_to_all(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    recipients = [f"person{i}@example.org" for i in range(5)]
    await _send(_port(service), recipients)
    [captured] = await sink.handler.wait_for(1)
    assert sorted(captured.recipients) == sorted(recipients)


async def test_when_null_sender_then_accepted_and_relayed(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    _, reply = await _send(_port(service), ["x@example.org"], sender="")
    assert "queued as" in reply
    [captured] = await sink.handler.wait_for(1)
    assert captured.sender in ("", "<>")


async def test_ehlo_advertises_the_extensions(relays: RelayRunner) -> None:
    service = await relays.start({"server": {"max_message_size": "1MB"}})
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=_port(service), start_tls=False)
    await client.connect()
    await client.ehlo()
    for extension in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
        assert client.supports_extension(extension), extension
    assert client.esmtp_extensions["size"] == str(1024 * 1024)
    assert not client.supports_extension("starttls")
    assert not client.supports_extension("auth")
    await client.quit()


def _dialogue(port: int, lines: list[bytes]) -> list[str]:
    """Send raw command lines one by one and return each reply (first line of it)."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rb")
        replies.append(stream.readline().decode())
        for line in lines:
            sock.sendall(line)
            reply = stream.readline().decode()
            while reply[3:4] == "-":
                reply = stream.readline().decode()
            replies.append(reply.rstrip("\r\n"))
    return replies


@pytest.mark.parametrize(
    "command, expected",
    [
        (b"MAIL FROM:<no-at-sign>\r\n", "501 5.1.7 Bad sender address syntax: "),
        (b"MAIL FROM:<a@@b.org>\r\n", "501 5.1.7 "),
        (b"MAIL FROM:<a@localhost>\r\n", "501 5.1.7 "),
        (b"MAIL FROM:j@x.org\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<j\xc3\xa9@x.org>\r\n", "501 5.1.7 Bad sender address syntax: non-ASCII"),
        (b"MAIL FROM:<j@x.org> FOO=BAR\r\n", "555 5.5.4 MAIL parameter not recognised: FOO"),
        (b"MAIL FROM:<j@x.org> BODY=BINARYMIME\r\n", "501 5.5.4 BODY must be 7BIT or 8BITMIME"),
        (b"MAIL FROM:<j@x.org> SIZE=999999999\r\n", "552 5.3.4 Message size exceeds"),
    ],
)
async def test_when_bad_mail_from_then_clear_reply(
    relays: RelayRunner, command: bytes, expected: str
) -> None:
    service = await relays.start()
    replies = await asyncio.to_thread(_dialogue, _port(service), [b"EHLO client.test\r\n", command])
    assert replies[2].startswith(expected), replies


@pytest.mark.parametrize(
    "recipient, expected",
    [
        (b"<no-at-sign>", "553 5.1.3 Bad recipient address syntax: "),
        (b"<a..b@example.org>", "553 5.1.3 "),
        (b"<a@exa mple.org>", "553 5.1.3 "),
        (b"<a@[127.0.0.1]>", "553 5.1.3 "),
        (b"<>", "501 5.5.4 Syntax: RCPT TO:<address>"),
        (b"<a@example.org> NOTIFY=NEVER", "555 5.5.4 RCPT parameter not recognised: NOTIFY"),
    ],
)
async def test_when_bad_rcpt_to_then_clear_reply(
    relays: RelayRunner, recipient: bytes, expected: str
) -> None:
    service = await relays.start()
    replies = await asyncio.to_thread(
        _dialogue,
        _port(service),
        [
            b"EHLO client.test\r\n",
            b"MAIL FROM:<j@northshire.gov.uk>\r\n",
            b"RCPT TO:" + recipient + b"\r\n",
        ],
    )
    assert replies[2].startswith("250 2.1.0"), replies
    assert replies[3].startswith(expected), replies


async def test_when_smtputf8_then_international_address_accepted(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=_port(service), start_tls=False)
    await client.connect()
    await client.ehlo()
    await client.mail("j@northshire.gov.uk", options=["SMTPUTF8"], encoding="utf-8")
    await client.rcpt("zoë@example.org", encoding="utf-8")
    await client.data(b"Subject: test\r\n\r\nbody\r\n")
    await client.quit()
    [captured] = await sink.handler.wait_for(1)
    assert captured.recipients == ["zoë@example.org"]
    assert "SMTPUTF8" in captured.mail_options


async def test_when_commands_out_of_order_then_503(relays: RelayRunner) -> None:
    service = await relays.start()
    replies = await asyncio.to_thread(
        _dialogue,
        _port(service),
        [
            b"MAIL FROM:<j@northshire.gov.uk>\r\n",
            b"EHLO client.test\r\n",
            b"RCPT TO:<a@example.org>\r\n",
            b"DATA\r\n",
            b"MAIL FROM:<j@northshire.gov.uk>\r\n",
            b"DATA\r\n",
            b"MAIL FROM:<j@northshire.gov.uk>\r\n",
        ],
    )
    assert replies[1].startswith("503 5.5.1")
    assert replies[3].startswith("503 5.5.1 Need MAIL")
    assert replies[4].startswith("503 5.5.1 Need MAIL")
    assert replies[6].startswith("503 5.5.1 Need RCPT")
    assert replies[7].startswith("503 5.5.1 Sender already given")


async def test_when_too_many_recipients_then_452_and_the_rest_delivered(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start({"server": {"max_recipients": 3}})
    lines = [b"EHLO client.test\r\n", b"MAIL FROM:<j@northshire.gov.uk>\r\n"]
    lines += [f"RCPT TO:<r{i}@example.org>\r\n".encode() for i in range(4)]
    lines += [b"DATA\r\n", b"Subject: x\r\n\r\nbody\r\n.\r\n", b"QUIT\r\n"]
    replies = await asyncio.to_thread(_dialogue, _port(service), lines)
    assert [r[:3] for r in replies[3:6]] == ["250"] * 3
    assert replies[6].startswith("452 4.5.3")
    assert replies[8].startswith("250 2.0.0 Ok: queued as")
    [captured] = await sink.handler.wait_for(1)
    assert captured.recipients == ["r0@example.org", "r1@example.org", "r2@example.org"]


async def test_when_declared_size_over_limit_then_552_at_mail_from(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start({"server": {"max_message_size": "10KB"}})
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await _send(_port(service), ["a@example.org"], content=big)
    assert refused.value.code == 552
    assert "5.3.4" in refused.value.message


async def test_when_undeclared_message_over_size_then_552_after_data_and_nothing_relayed(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start({"server": {"max_message_size": "10KB"}})
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200 + b".\r\n"
    small = b"Subject: small\r\n\r\nfits\r\n.\r\n"
    transaction = [
        b"MAIL FROM:<j@northshire.gov.uk>\r\n",
        b"RCPT TO:<a@example.org>\r\n",
        b"DATA\r\n",
    ]
    replies = await asyncio.to_thread(
        _dialogue,
        _port(service),
        [b"EHLO client.test\r\n", *transaction, big, *transaction, small],
    )
    assert replies[5].startswith("552 5.3.4"), replies
    # The session survives: the next transaction on it goes through.
    assert replies[9].startswith("250 2.0.0 Ok: queued as"), replies
    [captured] = await sink.handler.wait_for(1)
    assert b"Subject: small" in captured.content


async def test_when_client_not_in_allowlist_then_refused_at_connect(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start({"server": {"allowed_clients": ["10.0.0.0/8", "fd00::/8"]}})
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", _port(service), timeout=10)
    assert refused.value.smtp_code == 554
    assert b"5.7.1 Relaying denied" in refused.value.smtp_error
    assert sink.handler.messages == []


async def test_when_ipv6_loopback_not_listed_then_refused(relays: RelayRunner) -> None:
    service = await relays.start(
        {"server": {"listen": "[::1]:0", "allowed_clients": ["127.0.0.0/8"]}}
    )
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        await asyncio.to_thread(smtplib.SMTP, "::1", _port(service), timeout=10)
    assert refused.value.smtp_code == 554


async def test_when_sessions_at_limit_then_421(relays: RelayRunner) -> None:
    service = await relays.start({"server": {"max_sessions": 2}})
    port = _port(service)
    held = [await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", port, timeout=10) for _ in range(2)]
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", port, timeout=10)
    assert refused.value.smtp_code == 421
    for client in held:
        await asyncio.to_thread(client.quit)


SMUGGLING_PAYLOADS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\r.\r\n",
]


@pytest.mark.parametrize("end", SMUGGLING_PAYLOADS, ids=repr)
async def test_when_smuggling_payload_then_refused_and_nothing_relayed(
    relays: RelayRunner, sink: CaptureSink, end: bytes
) -> None:
    service = await relays.start()
    smuggled = (
        b"Subject: innocent\r\n\r\nhello"
        + end
        + b"MAIL FROM:<ceo@northshire.gov.uk>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n"
    )
    replies = await asyncio.to_thread(
        _dialogue,
        _port(service),
        [
            b"EHLO client.test\r\n",
            b"MAIL FROM:<j@northshire.gov.uk>\r\n",
            b"RCPT TO:<a@example.org>\r\n",
            b"DATA\r\n",
            smuggled,
            b"NOOP\r\n",
        ],
    )
    assert replies[5].startswith("550 5.6.0 Message refused: bare CR or LF"), replies
    # The smuggled commands were message data, not commands: the next reply is the NOOP's.
    assert replies[6].startswith("250"), replies
    await asyncio.sleep(0.3)
    assert sink.handler.messages == []


async def test_when_line_over_998_then_refused(relays: RelayRunner, sink: CaptureSink) -> None:
    service = await relays.start()
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await _send(_port(service), ["a@example.org"], content=b"Subject: x\r\n\r\n" + b"a" * 999)
    assert refused.value.code == 550
    assert "998" in refused.value.message


async def test_when_upstream_answers_4xx_then_retried_until_delivered(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    attempts: list[int] = []

    def busy_twice(message: object) -> str | None:
        attempts.append(1)
        return "451 4.3.0 try later" if len(attempts) <= 2 else None

    sink.handler.data_reply = busy_twice
    service = await relays.start()
    await _send(_port(service), ["a@example.org"])
    [captured] = await sink.handler.wait_for(1, timeout=20)
    assert _after_received(captured.content) == MESSAGE
    assert len(attempts) == 3


async def test_when_upstream_down_for_a_while_then_delivered_once_back(
    relays: RelayRunner, tmp_path: Path
) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    down_port = probe.getsockname()[1]
    probe.close()
    service = await relays.start(upstream_port=down_port)
    port = _port(service)
    for i in range(3):
        await _send(port, ["a@example.org"], content=MESSAGE.replace(b"note-1", f"n{i}".encode()))
    await asyncio.sleep(0.8)
    # Each is deferred, or claimed for its next try at this very moment.
    deferred = await service.store.messages([MessageState.DEFERRED, MessageState.DELIVERING])
    assert len(deferred) == 3
    assert all(r.attempts >= 1 for r in deferred)
    late_sink = CaptureSink()
    await late_sink.start(port=down_port)
    try:
        captured = await late_sink.handler.wait_for(3, timeout=20)
        ids = sorted(c.content.split(b"Message-ID: <")[1].split(b">")[0] for c in captured)
        assert ids == [b"n0@northshire.gov.uk", b"n1@northshire.gov.uk", b"n2@northshire.gov.uk"]
        await asyncio.sleep(0.3)
        assert len(late_sink.handler.messages) == 3
    finally:
        await late_sink.stop()


async def test_when_one_of_two_recipients_refused_5xx_then_other_delivered_and_dsn_sent(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    sink.handler.rcpt_reply = lambda a: "550 5.1.1 No such user" if a.startswith("gone") else None
    service = await relays.start()
    _, reply = await _send(_port(service), ["gone@example.org", "here@example.org"])
    message_id = reply.rsplit(" ", 1)[1]
    captured = await sink.handler.wait_for(2, timeout=20)
    delivered = [c for c in captured if c.sender == SENDER]
    notices = [c for c in captured if c.sender in ("", "<>")]
    assert delivered[0].recipients == ["here@example.org"]
    [dsn] = notices
    assert dsn.recipients == [SENDER]
    report = BytesParser(policy=default_policy).parsebytes(dsn.content)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = report.get_payload()[1].as_string()
    assert "Final-Recipient: rfc822; gone@example.org" in status
    assert "Status: 5.1.1" in status
    assert "Action: failed" in status
    # The bounce identifies the message without carrying it.
    assert b"strategy meeting" not in dsn.content
    assert b"943 476 5919" not in dsn.content
    assert b"<note-1@northshire.gov.uk>" in dsn.content
    record = await service.store.load(message_id)
    assert record is not None
    assert record.state is MessageState.BOUNCED
    states = {r.address: r.state for r in record.recipients}
    assert states == {
        "gone@example.org": RecipientState.BOUNCED,
        "here@example.org": RecipientState.DELIVERED,
    }


async def test_when_null_sender_bounces_then_no_dsn(relays: RelayRunner, sink: CaptureSink) -> None:
    sink.handler.rcpt_reply = lambda a: "550 5.1.1 No such user" if a.startswith("gone") else None
    service = await relays.start()
    _, reply = await _send(_port(service), ["gone@example.org", "here@example.org"], sender="")
    await sink.handler.wait_for(1)
    await asyncio.sleep(0.5)
    assert len(sink.handler.messages) == 1
    record = await service.store.load(reply.rsplit(" ", 1)[1])
    assert record is not None and record.state is MessageState.BOUNCED


async def test_when_lifetime_passes_then_given_up_with_dsn(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    sink.handler.data_reply = lambda m: None if m.sender in ("", "<>") else "451 4.3.0 later"
    service = await relays.start({"delivery": {"lifetime": "1s"}})
    _, reply = await _send(_port(service), ["a@example.org"])
    [dsn] = await sink.handler.wait_for(1, timeout=20)
    assert dsn.recipients == [SENDER]
    assert b"Status: 4.4.7" in dsn.content
    assert b"(expired)" in dsn.content
    record = await service.store.load(reply.rsplit(" ", 1)[1])
    assert record is not None and record.state is MessageState.EXPIRED


async def test_when_disk_below_threshold_then_452_so_the_mail_server_keeps_it(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start({"store": {"min_free_disk": "1000000GB"}})
    await asyncio.sleep(0.1)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await _send(_port(service), ["a@example.org"])
    assert refused.value.code == 452
    assert "4.3.1" in refused.value.message


async def test_when_queue_over_limit_then_452(relays: RelayRunner) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    down_port = probe.getsockname()[1]
    probe.close()
    service = await relays.start({"store": {"max_queue": 2}}, upstream_port=down_port)
    port = _port(service)
    await _send(port, ["a@example.org"])
    await _send(port, ["a@example.org"])
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await _send(port, ["a@example.org"])
    assert refused.value.code == 452


async def test_before_queue_mode_relays_clean_mail(relays: RelayRunner, sink: CaptureSink) -> None:
    service = await relays.start({"server": {"mode": "before-queue"}})
    _, reply = await _send(_port(service), ["a@example.org"])
    assert "queued as" in reply
    [captured] = await sink.handler.wait_for(1)
    assert _after_received(captured.content) == MESSAGE


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    authority = trustme.CA()
    issued = authority.issue_cert("relay.test", "127.0.0.1")
    cert = tmp_path / "relay.crt"
    key = tmp_path / "relay.key"
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    return authority, cert, key


async def test_when_starttls_then_message_relayed_over_tls(
    relays: RelayRunner, sink: CaptureSink, certificate: tuple[trustme.CA, Path, Path]
) -> None:
    authority, cert, key = certificate
    service = await relays.start({"server": {"tls": {"certificate": str(cert), "key": str(key)}}})
    context = ssl.create_default_context()
    authority.configure_trust(context)
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=_port(service), tls_context=context, start_tls=True
    )
    await client.connect()
    assert client.is_ehlo_or_helo_needed or client.supports_extension("size")
    await client.sendmail(SENDER, ["a@example.org"], MESSAGE)
    await client.quit()
    [captured] = await sink.handler.wait_for(1)
    assert b"with ESMTPS id" in captured.content


async def test_when_tls_required_then_plain_mail_refused(
    relays: RelayRunner, sink: CaptureSink, certificate: tuple[trustme.CA, Path, Path]
) -> None:
    _, cert, key = certificate
    service = await relays.start(
        {"server": {"tls": {"certificate": str(cert), "key": str(key), "require": True}}}
    )
    replies = await asyncio.to_thread(
        _dialogue,
        _port(service),
        [b"EHLO client.test\r\n", b"MAIL FROM:<j@northshire.gov.uk>\r\n"],
    )
    assert replies[2].startswith("530 5.7.0"), replies


async def test_logs_carry_ids_and_domains_never_subject_body_or_addresses(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    sink.handler.rcpt_reply = lambda a: (
        "550 5.1.1 <gone@example.org> unknown" if "gone" in a else None
    )
    service = await relays.start()
    with structlog.testing.capture_logs() as logs:
        await _send(_port(service), ["s.mills@millsandco-solicitors.co.uk", "gone@example.org"])
        await sink.handler.wait_for(2, timeout=20)
        await asyncio.sleep(0.2)
    text = repr(logs)
    events = {entry["event"] for entry in logs}
    assert {"message.received", "message.delivered", "message.bounced"} <= events
    received = next(e for e in logs if e["event"] == "message.received")
    assert received["recipients"] == 2
    assert list(received["domains"]) == ["example.org", "millsandco-solicitors.co.uk"]
    for secret in ("Amelia", "strategy meeting", "943 476 5919", "s.mills@", "gone@", SENDER):
        assert secret not in text, secret


async def test_when_client_stalls_in_data_then_421_and_nothing_stored(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start({"server": {"data_timeout": "500ms"}})

    def stall() -> bytes:
        with socket.create_connection(("127.0.0.1", _port(service)), timeout=10) as sock:
            stream = sock.makefile("rb")
            stream.readline()
            sock.sendall(b"HELO client.test\r\nMAIL FROM:<j@northshire.gov.uk>\r\n")
            sock.sendall(b"RCPT TO:<a@example.org>\r\nDATA\r\nSubject: half a message\r\n")
            lines = [stream.readline() for _ in range(4)]
            assert lines[-1].startswith(b"354")
            return stream.readline()

    reply = await asyncio.to_thread(stall)
    assert reply.startswith(b"421 4.4.2")
    assert await service.store.messages([MessageState.RECEIVED, MessageState.QUEUED]) == []
    assert sink.handler.messages == []


async def test_when_commands_pipelined_then_each_answered_in_order(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()

    def pipelined() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", _port(service)), timeout=10) as sock:
            stream = sock.makefile("rb")
            stream.readline()
            sock.sendall(b"EHLO client.test\r\n")
            while stream.readline()[3:4] == b"-":
                pass
            sock.sendall(
                b"MAIL FROM:<j@northshire.gov.uk>\r\nRCPT TO:<a@example.org>\r\n"
                b"RCPT TO:<b@example.org>\r\nDATA\r\n"
            )
            replies = [stream.readline() for _ in range(4)]
            sock.sendall(b"Subject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            replies += [stream.readline(), stream.readline()]
            return replies

    replies = await asyncio.to_thread(pipelined)
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354", b"250", b"221"]
    [captured] = await sink.handler.wait_for(1)
    assert captured.recipients == ["a@example.org", "b@example.org"]


# A real policy, run by the real decide stage: webmail recipients are refused.
REFUSING_POLICY = """
rules:
  - name: test-rule
    description: case material to a restricted party
    when: {recipient: {class: webmail}}
    action: reject
    severity: critical
"""


def _refusing_config(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "policy.yaml").write_text(REFUSING_POLICY, encoding="utf-8")
    return {
        "council": {"domains": str(EXAMPLE / "domains.csv")},
        "policy": {"file": "policy.yaml"},
    }


async def test_before_queue_reject_is_550_at_end_of_data_and_nothing_stored(
    relays: RelayRunner, sink: CaptureSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await relays.start(
        {"server": {"mode": "before-queue"}, **_refusing_config(relays.tmp_path)}
    )
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await _send(_port(service), ["dan.hart77@gmail.com"])
    assert refused.value.code == 550
    assert "5.7.1 Message refused by policy: case material" in refused.value.message
    await asyncio.sleep(0.3)
    assert sink.handler.messages == []
    assert not list((service.config.store.data_dir / "spool").glob("*.eml"))


async def test_after_queue_reject_bounces_to_sender_without_content_and_delivers_the_rest(
    relays: RelayRunner, sink: CaptureSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await relays.start(_refusing_config(relays.tmp_path))
    _, reply = await _send(
        _port(service), ["dan.hart77@gmail.com", "s.mills@millsandco-solicitors.co.uk"]
    )
    assert "queued as" in reply
    captured = await sink.handler.wait_for(2)
    [delivered] = [c for c in captured if c.sender == SENDER]
    [bounce] = [c for c in captured if c.sender in ("", "<>")]
    assert delivered.recipients == ["s.mills@millsandco-solicitors.co.uk"]
    assert bounce.recipients == [SENDER]
    assert b"Final-Recipient: rfc822; dan.hart77@gmail.com" in bounce.content
    assert b"Refused by policy: case material to a restricted party" in bounce.content
    for secret in (b"943 476 5919", b"strategy meeting", b"Amelia"):
        assert secret not in bounce.content
    # The sink has the copy a moment before the relay has recorded the upstream's 250.
    async with asyncio.timeout(5):
        while True:
            record = await service.store.load(reply.rsplit(" ", 1)[1])
            assert record is not None
            states = {r.address: r.state for r in record.recipients}
            if states["s.mills@millsandco-solicitors.co.uk"] is RecipientState.DELIVERED:
                break
            await asyncio.sleep(0.05)
    assert states["dan.hart77@gmail.com"] is RecipientState.REJECTED


async def test_when_scanning_fails_then_nothing_leaves_unscanned_and_scan_is_retried(
    relays: RelayRunner, sink: CaptureSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    decide = Decider.decide

    def broken_then_fine(
        self: Decider, envelope: Envelope, read: Reading, correspondents: frozenset[str]
    ) -> Verdict:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a policy bug")
        return decide(self, envelope, read, correspondents)

    monkeypatch.setattr(Decider, "decide", broken_then_fine)
    service = await relays.start({"delivery": {"retry_initial": "500ms"}})
    _, reply = await _send(_port(service), ["a@example.org"])
    await asyncio.sleep(0.2)
    assert sink.handler.messages == []  # the failed scan let nothing out
    record = await service.store.load(reply.rsplit(" ", 1)[1])
    assert record is not None and record.state is MessageState.RECEIVED
    [captured] = await sink.handler.wait_for(1)
    assert len(calls) == 2
    assert _after_received(captured.content) == MESSAGE


async def test_when_8bit_body_declared_then_relayed_with_body_8bitmime(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    body = "Subject: café\r\n\r\nRésumé of the meeting.\r\n".encode()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=_port(service), start_tls=False)
    await client.connect()
    await client.ehlo()
    await client.mail(SENDER, options=["BODY=8BITMIME"])
    await client.rcpt("a@example.org")
    await client.data(body)
    await client.quit()
    [captured] = await sink.handler.wait_for(1)
    assert "BODY=8BITMIME" in captured.mail_options
    assert _after_received(captured.content) == body


async def test_when_client_idles_past_command_timeout_then_421_and_closed(
    relays: RelayRunner,
) -> None:
    service = await relays.start({"server": {"command_timeout": "300ms"}})

    def idle() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", _port(service)), timeout=10) as sock:
            stream = sock.makefile("rb")
            greeting = stream.readline()
            sock.sendall(b"HELO client.test\r\n")
            helo = stream.readline()
            return [greeting, helo, stream.readline(), stream.readline()]

    greeting, helo, timeout_reply, after = await asyncio.to_thread(idle)
    assert greeting.startswith(b"220") and helo.startswith(b"250")
    assert timeout_reply.startswith(b"421 4.4.2 Timeout waiting for a command")
    assert after == b""  # closed


async def test_when_message_carries_attachments_then_relay_reads_them_in_workers(
    relays: RelayRunner, sink: CaptureSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import zipfile

    seen: list[tuple[Finding, ...]] = []
    decide = Decider.decide

    def recording(
        self: Decider, envelope: Envelope, read: Reading, correspondents: frozenset[str]
    ) -> Verdict:
        seen.append(read.findings)
        return decide(self, envelope, read, correspondents)

    monkeypatch.setattr(Decider, "decide", recording)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("minutes.txt", "Minutes: NHS number 943 476 5919 discussed")
    from email.message import EmailMessage
    from email.policy import SMTP as SMTP_POLICY

    message = EmailMessage()
    message["Subject"] = "bundle"
    message.set_content("see attached")
    message.add_attachment(
        buffer.getvalue(), maintype="application", subtype="zip", filename="bundle.zip"
    )
    raw = message.as_bytes(policy=SMTP_POLICY)
    service = await relays.start()
    await _send(_port(service), ["a@example.org"], content=raw)
    [captured] = await sink.handler.wait_for(1)
    assert _after_received(captured.content) == raw
    [findings] = seen
    [nhs] = [f for f in findings if f.detector == "nhs_number"]
    assert nhs.location == "attachment:bundle.zip/minutes.txt"
    assert "943 476 5919" not in nhs.excerpt


DETECTABLE = (
    b"From: j.okafor@northshire.gov.uk\r\nSubject: notes\r\n\r\n"
    b"NHS number 943 476 5919, DOB 14/03/2015: a section 47 enquiry.\r\n"
)


async def test_workers_use_the_configured_detectors_and_a_reload_changes_them(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start({"detect": {"disabled": ["nhs_number"]}})
    with structlog.testing.capture_logs() as before:
        await _send(_port(service), ["s.mills@millsandco-solicitors.co.uk"], DETECTABLE)
        await sink.handler.wait_for(1, timeout=20)
    write_config(relays.tmp_path, {"detect": {"disabled": ["keywords"]}})
    assert service.reload()
    with structlog.testing.capture_logs() as after:  # reload reconfigures logging
        await _send(_port(service), ["s.mills@millsandco-solicitors.co.uk"], DETECTABLE)
        await sink.handler.wait_for(2, timeout=20)
    logs = before + after
    first, second = [e["findings"] for e in logs if e["event"] == "message.scanned"]
    assert "nhs_number" not in first
    assert first["keywords"] == 1 and first["date_of_birth"] == 1
    assert second["nhs_number"] == 1 and second["date_of_birth"] == 1
    assert "keywords" not in second
    assert "943 476 5919" not in repr(logs) and "9434765919" not in repr(logs)


async def test_a_broken_keyword_file_is_refused_on_reload_and_the_old_detectors_stay(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start()
    (relays.tmp_path / "bad.yaml").write_text("theme: x\nterms: []\n", encoding="utf-8")
    write_config(relays.tmp_path, {"detect": {"keywords": ["bad.yaml"]}})
    with structlog.testing.capture_logs() as logs:
        assert not service.reload()
    with structlog.testing.capture_logs() as scanned_logs:
        await _send(_port(service), ["s.mills@millsandco-solicitors.co.uk"])
        await sink.handler.wait_for(1, timeout=20)
    refused = next(e for e in logs if e["event"] == "config.reload_refused")
    assert "'terms' must be a non-empty list" in refused["problems"][0]
    scanned = next(e for e in scanned_logs if e["event"] == "message.scanned")
    assert scanned["findings"]["nhs_number"] == 1


async def test_exact_data_match_registers_from_the_config_are_matched_in_the_workers(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    (relays.tmp_path / "edm").mkdir()
    key_file, registers = make_registers(relays.tmp_path / "edm")
    service = await relays.start(
        {
            "detect": {
                "edm": {
                    "key_file": str(key_file),
                    "registers": [str(path) for path in registers.values()],
                }
            }
        }
    )
    content = (
        b"From: j.okafor@northshire.gov.uk\r\nSubject: visit\r\n\r\n"
        b"Visit to Amelia Hart (DOB 14/03/2015) at 14 Elmwood Rd, Flat 2, NS4 7QJ.\r\n"
    )
    with structlog.testing.capture_logs() as logs:
        await _send(_port(service), ["s.mills@millsandco-solicitors.co.uk"], content)
        await sink.handler.wait_for(1, timeout=20)
    scanned = next(e for e in logs if e["event"] == "message.scanned")
    assert scanned["findings"]["edm_person"] == 1
    assert scanned["findings"]["edm_protected_address"] == 1
    for secret in ("Amelia", "Hart", "Elmwood", "NS4 7QJ", "2015"):
        assert secret not in repr(logs), secret


HOLDING_POLICY = """
rules:
  - name: delay-webmail
    description: mail to a personal webmail address waits a moment before it goes
    when: {recipient: {class: webmail}}
    action: delay
    delay: 1s
    severity: low
  - name: hold-lookalike
    description: the address imitates a known domain
    when: {recipient: {fact: lookalike}}
    action: quarantine
    approvals: 2
    severity: high
"""


async def test_per_recipient_verdicts_pass_delay_and_quarantine_one_message(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    (relays.tmp_path / "policy.yaml").write_text(HOLDING_POLICY, encoding="utf-8")
    service = await relays.start(
        {
            "council": {"domains": str(EXAMPLE / "domains.csv")},
            "policy": {"file": "policy.yaml"},
            "delivery": {"poll_interval": "200ms"},
        }
    )
    passing = "s.mills@millsandco-solicitors.co.uk"
    delayed = "karen.hart84@hotmail.co.uk"
    held = "guardian.team@cafcas.gov.uk"
    sent_at = time.monotonic()
    _, reply = await _send(_port(service), [passing, delayed, held])
    message_id = reply.rsplit(" ", 1)[1]
    # The passing copy and the sender's notice at once; the delayed copy after its delay.
    captured = await sink.handler.wait_for(3, timeout=10)
    mail = [c for c in captured if c.sender == SENDER]
    assert [c.recipients for c in mail] == [[passing], [delayed]]
    [notice] = [c for c in captured if c.sender in ("", "<>")]
    assert notice.recipients == [SENDER]
    assert time.monotonic() - sent_at >= 1.0
    await asyncio.sleep(1.0)
    assert len(sink.handler.messages) == 3  # the quarantined copy never leaves
    record = await service.store.load(message_id)
    assert record is not None and record.state is MessageState.HELD
    assert {r.address: r.state for r in record.recipients} == {
        passing: RecipientState.DELIVERED,
        delayed: RecipientState.DELIVERED,
        held: RecipientState.HELD,
    }
    listed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "smtpguard",
            "queue",
            "list",
            "--json",
            "--config",
            str(relays.tmp_path / "smtpguard.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    [row] = [r for r in json.loads(listed.stdout) if r["id"] == message_id]
    assert row["state"] == "held"
    assert {r["address"]: r["state"] for r in row["recipients"]}[held] == "held"


async def test_a_delayed_message_survives_a_restart_and_still_goes_at_its_time(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    (relays.tmp_path / "policy.yaml").write_text(HOLDING_POLICY, encoding="utf-8")
    changes = {
        "council": {"domains": str(EXAMPLE / "domains.csv")},
        "policy": {"file": "policy.yaml"},
        "delivery": {"poll_interval": "200ms"},
    }
    service = await relays.start(changes)
    _, reply = await _send(_port(service), ["karen.hart84@hotmail.co.uk"])
    message_id = reply.rsplit(" ", 1)[1]
    await asyncio.sleep(0.3)
    record = await service.store.load(message_id)
    assert record is not None and record.state is MessageState.HELD
    assert record.release_at is not None
    await relays.stop_all()
    assert [c.sender for c in sink.handler.messages] in ([], ["<>"], [""])  # the notice only
    await relays.start(changes)
    captured = await sink.handler.wait_for(2, timeout=10)
    [delivered] = [c for c in captured if c.sender == SENDER]
    assert delivered.recipients == ["karen.hart84@hotmail.co.uk"]


INSTRUCTING_POLICY = """
rules:
  - name: secure-subject
    description: the sender asked for the secure route
    when: {subject: {matches: '\\[secure\\]'}}
    action: route
    route: gateway
    severity: low
  - name: webmail-needs-tls
    description: personal mail only over verified TLS
    when: {recipient: {class: webmail}}
    action: require_tls
    severity: medium
  - name: tag-partners
    description: partners' copies say what they carry
    when: {recipient: {class: partner}}
    action: tag
    subject_prefix: "[OFFICIAL]"
    severity: low
"""


async def _instructed(relays: RelayRunner, gateway: CaptureSink, tls: CaptureSink | None) -> object:
    (relays.tmp_path / "policy.yaml").write_text(INSTRUCTING_POLICY, encoding="utf-8")
    routes: dict[str, object] = {"gateway": {"host": "127.0.0.1", "port": gateway.port}}
    policy: dict[str, object] = {"file": "policy.yaml", "routes": routes}
    if tls is not None:
        routes["verified-tls"] = {"host": "127.0.0.1", "port": tls.port, "secure": True}
        policy["tls_route"] = "verified-tls"
    return await relays.start(
        {"council": {"domains": str(EXAMPLE / "domains.csv")}, "policy": policy}
    )


async def test_route_tag_and_require_tls_instructions_choose_each_copys_next_hop(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    gateway, tls = CaptureSink(), CaptureSink()
    await gateway.start()
    await tls.start()
    try:
        service = await _instructed(relays, gateway, tls)
        partner, webmail = "s.mills@millsandco-solicitors.co.uk", "karen.hart84@hotmail.co.uk"
        await _send(_port(service), [partner, webmail])
        [tagged] = await sink.handler.wait_for(1, timeout=10)
        assert tagged.recipients == [partner]
        assert b"X-Smtpguard-Tag: tag-partners\r\n" in tagged.content
        assert b"\r\nSubject: [OFFICIAL] Amelia Hart - strategy meeting notes\r\n" in tagged.content
        [secure] = await tls.handler.wait_for(1, timeout=10)
        assert secure.recipients == [webmail]
        assert b"X-Smtpguard-Tag" not in secure.content

        secure_subject = MESSAGE.replace(b"Subject: ", b"Subject: [secure] ")
        await _send(_port(service), ["guardian.team@cafcass.gov.uk"], secure_subject)
        [routed] = await gateway.handler.wait_for(1, timeout=10)
        assert routed.recipients == ["guardian.team@cafcass.gov.uk"]
        assert len(sink.handler.messages) == 1
    finally:
        await gateway.stop()
        await tls.stop()


async def test_require_tls_without_a_verified_hop_holds_the_copy(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    gateway = CaptureSink()
    await gateway.start()
    try:
        service = await _instructed(relays, gateway, None)
        webmail = "karen.hart84@hotmail.co.uk"
        _, reply = await _send(_port(service), [webmail, "m.patel@northshire.gov.uk"])
        message_id = reply.rsplit(" ", 1)[1]
        [delivered] = await sink.handler.wait_for(1, timeout=10)
        assert delivered.recipients == ["m.patel@northshire.gov.uk"]
        await asyncio.sleep(0.5)
        record = await service.store.load(message_id)
        assert record is not None and record.state is MessageState.HELD
        [held] = [r for r in record.recipients if r.address == webmail]
        assert held.state is RecipientState.HELD
        assert held.last_reply.startswith("held: verified TLS required")
        assert held.instructions.require_tls
        assert len(sink.handler.messages) == 1
    finally:
        await gateway.stop()


NOTIFYING_POLICY = """
rules:
  - name: hold-webmail
    description: case material to a personal webmail address
    when: {recipient: {class: webmail}}
    action: quarantine
    approvals: 2
    severity: high
    notify: [reviewers]
"""


@pytest.mark.parametrize("mode", ["after-queue", "before-queue"])
async def test_a_hold_tells_the_sender_and_the_reviewers_without_content(
    relays: RelayRunner, sink: CaptureSink, mode: str
) -> None:
    (relays.tmp_path / "policy.yaml").write_text(NOTIFYING_POLICY, encoding="utf-8")
    reviewers = "ig-reviewers@northshire.gov.uk"
    service = await relays.start(
        {
            "server": {"mode": mode},
            "council": {"domains": str(EXAMPLE / "domains.csv")},
            "policy": {"file": "policy.yaml", "reviewers": reviewers},
        }
    )
    _, reply = await _send(
        _port(service), ["dan.hart77@gmail.com", "s.mills@millsandco-solicitors.co.uk"]
    )
    queue_id = reply.rsplit(" ", 1)[1]
    captured = await sink.handler.wait_for(3, timeout=10)
    by_recipient = {tuple(c.recipients): c for c in captured}
    assert set(by_recipient) == {
        ("s.mills@millsandco-solicitors.co.uk",),
        (SENDER,),
        (reviewers,),
    }
    to_sender = by_recipient[(SENDER,)]
    to_reviewers = by_recipient[(reviewers,)]
    assert to_sender.sender in ("", "<>") and to_reviewers.sender in ("", "<>")
    text = to_sender.content.decode()
    assert "Subject: Your message is held for review" in text
    assert f"Queue ID: {queue_id}" in text
    assert "<dan.hart77@gmail.com>: held for review" in text
    assert "Why: case material to a personal webmail address" in text
    assert "two different reviewers must release it" in text
    assert "In-Reply-To: <note-1@northshire.gov.uk>" in text
    assert f"smtpguard quarantine show {queue_id}" in to_reviewers.content.decode()
    assert "hold-webmail" in to_reviewers.content.decode()
    for notice in (to_sender, to_reviewers):
        for secret in (b"Amelia", b"strategy meeting", b"943 476 5919", b"Please find"):
            assert secret not in notice.content, secret
