"""`server.reading_process`: accepting processes store and answer; one process reads.

Here both halves run on the test's loop, as the supervisor's children would
run them: the shared listening socket and the socket pair between them are
real, the SMTP is real and the upstream is a capture sink, and the reading
half's worker can be slowed (tests/parse/hostile_readers.py). The whole relay
as separate processes, killed and stopped, is in test_reading_process_serve.py
and in tests/faults/test_kills.py.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections import Counter
from typing import Any

import aiosmtplib
import structlog

from smtpguard.processes import ProcessRole, bind_listener
from smtpguard.relay import RelayService
from tests.conftest import RelayRunner
from tests.parse.hostile_readers import read_slowly
from tests.processes import RECIPIENT, SENDER, make_message, message_id
from tests.sink import CaptureSink
from tests.test_flow_control import _metrics, _send_timed, paced_from_the_fourth


async def _start_pair(
    relays: RelayRunner, *, metrics: bool = False, **server: object
) -> tuple[RelayService, RelayService]:
    """The reading process's half, then one accepting process's, as the supervisor starts
    them; they stop in the other order (relays.stop_all), as the supervisor stops them."""
    listening = bind_listener("127.0.0.1", 0).detach()
    reading_end, accepting_end = socket.socketpair()
    changes: dict[str, Any] = {
        "server": {"reading_process": True, **server},
        "parse": {"workers": 1},
    }
    if metrics:
        changes["metrics"] = {"listen": "127.0.0.1:0"}
    reading = await relays.start(
        changes,
        role=ProcessRole(0, 2, listening, work="reading", handoff_fds=(reading_end.detach(),)),
    )
    accepting = await relays.start(
        changes,
        role=ProcessRole(1, 2, listening, work="accepting", handoff_fds=(accepting_end.detach(),)),
    )
    relays.services[-2:] = [accepting, reading]
    return reading, accepting


async def _send(port: int, contents: list[bytes], clients: int) -> list[str]:
    """Each message in a session of its own, `clients` at a time: the replies' texts."""
    limit = asyncio.Semaphore(clients)

    async def one(content: bytes) -> str:
        async with limit:
            errors, reply = await aiosmtplib.send(
                content, sender=SENDER, recipients=[RECIPIENT], hostname="127.0.0.1", port=port
            )
            assert errors == {}
            return reply

    return await asyncio.gather(*(one(c) for c in contents))


async def test_the_accepting_half_stores_and_answers_and_the_reading_half_delivers_each_once(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    reading, accepting = await _start_pair(relays)
    assert reading.address == accepting.address  # the reading half reports the shared socket
    assert accepting.address is not None
    contents = [make_message(f"notes {n}", size=3_000) for n in range(60)]
    with structlog.testing.capture_logs() as logs:
        replies = await _send(accepting.address[1], contents, clients=6)
        await sink.handler.wait_for(60, timeout=30)
        await asyncio.sleep(0.5)  # a second copy would come within it
    assert all(reply.startswith("2.0.0 Ok: queued as ") for reply in replies), replies[:3]
    copies = Counter(message_id(m.content) for m in sink.handler.messages)
    assert set(copies) == {message_id(c) for c in contents} and set(copies.values()) == {1}
    # The reading half alone read, decided and wrote the database: 60 verdicts on record.
    assert [e["event"] for e in logs].count("message.scanned") == 60
    entries, _ = await reading.store.audit_head()
    assert entries == 60
    assert accepting.relay.handoff is not None and reading.relay.accepting is not None


async def test_a_message_past_the_accepting_halfs_buffer_is_read_from_its_spool_file(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """Handed over without its content (max_waiting_memory), it is read back from the
    store: the accepting half never holds more for a reading half that is behind."""
    _, accepting = await _start_pair(relays, max_waiting_memory="16KB")
    assert accepting.address is not None
    contents = [make_message(f"large report {n}", size=40_000) for n in range(5)]
    await _send(accepting.address[1], contents, clients=5)
    await sink.handler.wait_for(5, timeout=30)
    delivered = {message_id(m.content): m.content for m in sink.handler.messages}
    for content in contents:
        # The body arrives whole (after the relay's Received line).
        assert delivered[message_id(content)].endswith(content)


async def test_the_accepting_half_paces_new_mail_as_the_reading_half_says(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """As test_flow_control's max_unread_wait case, across the socket pair: the reading
    half says when it falls behind (by time alone, with no message arriving), the
    accepting half's MAILs then wait for messages to be read, one for one."""
    reading, accepting = await _start_pair(
        relays, metrics=True, max_unread_wait="700ms", flow_delay="10s"
    )
    reading.parser.reader = functools.partial(read_slowly, reading.parser.reader, 1.5)
    with structlog.testing.capture_logs() as logs:
        took = await _send_timed(accepting, 5, gap=0.3)
        await sink.handler.wait_for(5, timeout=30)
        await asyncio.sleep(0.1)
    paced_from_the_fourth(took, logs)
    # Counted where the MAILs waited, served by the reading half.
    await _metrics_say(reading, "smtpguard_flow_delays_total 2.0")


async def _metrics_say(service: RelayService, *lines: str) -> str:
    """The reading half's /metrics once it has every line (accepting halves report once a
    second)."""
    for _ in range(50):
        text = await _metrics(service)
        if all(line in text for line in lines):
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{lines} not in {text}")


async def test_the_reading_half_serves_the_metrics_of_every_process(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    reading, accepting = await _start_pair(relays, metrics=True)
    assert accepting.metrics_address is None and reading.metrics_address is not None
    assert accepting.address is not None
    await _send(accepting.address[1], [make_message(f"minutes {n}") for n in range(12)], 3)
    await sink.handler.wait_for(12, timeout=30)
    await _metrics_say(
        reading,
        'smtpguard_messages_received_total{mode="after-queue"} 12.0',  # the accepting half's
        'smtpguard_verdicts_total{action="pass"} 12.0',  # the reading half's own
        'smtpguard_deliveries_total{outcome="delivered",route="upstream"} 12.0',
        "smtpguard_smtp_sessions_open 0.0",
    )
    text = await _metrics(reading)
    replies = float(text.split('smtpguard_smtp_replies_total{class="2xx"} ')[1].split()[0])
    assert replies >= 12 * 5  # EHLO, MAIL, RCPT, DATA's end and QUIT at least, each


async def test_a_burst_the_reading_half_catches_up_with_is_not_slowed(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    reading, accepting = await _start_pair(relays, max_unread_wait="5s", max_unscanned=100)
    reading.parser.reader = functools.partial(read_slowly, reading.parser.reader, 0.1)
    with structlog.testing.capture_logs() as logs:
        took = await _send_timed(accepting, 20)
        await sink.handler.wait_for(20, timeout=30)
    assert max(took) < 0.3, took
    assert "flow.delaying" not in [e["event"] for e in logs]


async def test_a_message_sent_while_the_reading_half_is_stopping_is_read_at_the_next_start(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """The reading half gone, the accepting half still stores and answers 250: the spool
    file is there, and the next start's recovery gives it its row and reads it."""
    reading, accepting = await _start_pair(relays)
    assert accepting.address is not None
    with structlog.testing.capture_logs() as logs:
        reading.request_stop()
        await reading.shutdown()
        relays.services.remove(reading)
        await asyncio.sleep(0.1)
        replies = await _send(accepting.address[1], [make_message("after the reader went")], 1)
        accepting.request_stop()
        await accepting.shutdown()
        relays.services.remove(accepting)
    events = [e["event"] for e in logs]
    assert "handoff.reading_process_gone" in events
    assert "handoff.no_reading_process" in events
    assert replies[0].startswith("2.0.0 Ok: queued as ")
    assert sink.handler.messages == []

    again = await relays.start({"parse": {"workers": 1}})
    assert again.relay is not None
    await sink.handler.wait_for(1, timeout=30)
    assert b"after the reader went" in sink.handler.messages[0].content


async def test_a_frame_the_reading_half_cannot_trust_stops_it_with_exit_1(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """Exit 1 makes the supervisor start every process again; recovery then reads every
    spool file the broken channel left unread."""
    listening = bind_listener("127.0.0.1", 0)
    reading_end, test_end = socket.socketpair()
    reading = await relays.start(
        {"server": {"reading_process": True}, "parse": {"workers": 1}},
        role=ProcessRole(
            0, 2, listening.fileno(), work="reading", handoff_fds=(reading_end.detach(),)
        ),
    )
    with structlog.testing.capture_logs() as logs:
        test_end.sendall(b"\x00\x00\x00\x05Mjunk")
        await asyncio.wait_for(reading._stop.wait(), timeout=10)
    test_end.close()
    listening.close()
    assert reading.exit_code == 1
    assert [e["error"] for e in logs if e["event"] == "handoff.broken"] == ["malformed frame"]
