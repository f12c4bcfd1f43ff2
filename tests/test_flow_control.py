"""Flow control: a relay that accepts faster than it reads slows its sender.

smtpguard answers 250 once a message is safe in the store and reads it after,
so a sustained flow faster than the workers read would pile up unread mail in
the store until `store.max_queue` refuses everything. Past
`server.max_unscanned` unread messages, each new MAIL waits for a scan to
finish, at most `server.flow_delay` (Postfix's in_flow_delay), and then goes
on: the sender slows to the rate the relay reads, and no message is refused or
lost for it.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from typing import Any

import aiosmtplib
import structlog

from smtpguard.relay import RelayService
from smtpguard.spool import MessageState
from tests.conftest import RelayRunner
from tests.parse.hostile_readers import read_slowly
from tests.processes import RECIPIENT, SENDER, make_message
from tests.sink import CaptureSink

READ_BY_A_WORKER = 20_000  # past the 8 KB read on the loop


async def _start(relays: RelayRunner, reading_seconds: float, **server: object) -> RelayService:
    service = await relays.start(
        {"server": server, "parse": {"workers": 1}, "metrics": {"listen": "127.0.0.1:0"}}
    )
    # Every message now takes `reading_seconds` in the (single) worker.
    service.parser.reader = functools.partial(read_slowly, service.parser.reader, reading_seconds)
    return service


async def _send_timed(service: RelayService, count: int, gap: float = 0.0) -> list[float]:
    """Seconds each message took from MAIL to the 250, sent one after another (a new one
    every `gap` seconds, if given)."""
    assert service.address is not None
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=service.address[1], timeout=30, start_tls=False
    )
    await client.connect()
    took = []
    try:
        for number in range(count):
            started = time.monotonic()
            await client.sendmail(
                SENDER, [RECIPIENT], make_message(f"minutes {number}", size=READ_BY_A_WORKER)
            )
            took.append(time.monotonic() - started)
            await asyncio.sleep(max(0.0, gap - took[-1]))
    finally:
        await client.quit()
    return took


async def test_past_max_unscanned_a_new_message_waits_for_reading_and_all_arrive(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await _start(relays, 0.4, max_unscanned=2, flow_delay="10s")
    with structlog.testing.capture_logs() as logs:
        took = await _send_timed(service, 6)
        await sink.handler.wait_for(6, timeout=30)
        await asyncio.sleep(0.1)
    # Three fit under the limit (0, 1 and 2 unread before each); from the fourth on,
    # each waits for the one worker to finish a message (0.4 s each).
    assert max(took[:3]) < 0.35, took
    assert min(took[3:]) > 0.2, took
    subjects = sorted(
        m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.handler.messages
    )
    assert subjects == [b"minutes %d" % n for n in range(6)]
    events = [e["event"] for e in logs]
    assert events.count("flow.delaying") == 1
    assert events.count("flow.caught_up") == 1
    last_received = max(i for i, event in enumerate(events) if event == "message.received")
    assert events.index("flow.caught_up") > last_received
    delaying = next(e for e in logs if e["event"] == "flow.delaying")
    assert delaying["unscanned"] == 3 and delaying["max_unscanned"] == 2
    assert "smtpguard_flow_delays_total 3.0" in await _metrics(service)


async def _metrics(service: RelayService) -> str:
    assert service.metrics_address is not None
    reader, writer = await asyncio.open_connection(*service.metrics_address)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return response.decode()


async def test_flow_delay_bounds_the_wait_and_the_message_is_still_taken(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """A relay far behind slows its senders; it does not refuse them (max_queue does that)."""
    service = await _start(relays, 1.5, max_unscanned=1, flow_delay="300ms")
    took = await _send_timed(service, 4)
    assert max(took[:2]) < 0.25, took
    assert all(0.25 < seconds < 1.2 for seconds in took[2:]), took
    await sink.handler.wait_for(4, timeout=30)


async def test_workers_yield_only_in_after_queue_mode(relays: RelayRunner) -> None:
    """Before-queue, each reply waits for its own message to be read: lowering the
    readers' priority would only slow the replies."""
    after = await relays.start({"parse": {"worker_nice": 7}})
    assert after.parser.worker_nice == 7
    before = await relays.start(
        {
            "server": {"mode": "before-queue"},
            "parse": {"worker_nice": 7},
            "store": {"data_dir": "data-before-queue", "min_free_disk": "1MB"},
        }
    )
    assert before.parser.worker_nice == 0


async def test_flow_delay_0s_turns_flow_control_off(relays: RelayRunner) -> None:
    service = await _start(relays, 1.0, max_unscanned=1, flow_delay="0s")
    took = await _send_timed(service, 4)
    assert max(took) < 0.25, took


async def test_once_the_oldest_unread_message_waited_past_max_unread_wait_new_mail_waits(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """Few messages, but reading has fallen behind in time: the sender is slowed, to one
    new message for each message read."""
    service = await _start(relays, 1.5, max_unread_wait="700ms", flow_delay="10s")
    with structlog.testing.capture_logs() as logs:
        took = await _send_timed(service, 5, gap=0.3)
        await sink.handler.wait_for(5, timeout=30)
        await asyncio.sleep(0.1)
    delaying = paced_from_the_fourth(took, logs)
    assert delaying["unscanned"] == 3
    assert "smtpguard_flow_delays_total 2.0" in await _metrics(service)


def paced_from_the_fourth(took: list[float], logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Five messages 0.3 s apart, each read in 1.5 s, max_unread_wait 0.7 s: the first
    three come while the oldest unread message (the first) has waited up to 0.6 s; the
    fourth, 0.9 s after it, waits for it to be read, and the fifth for the second. Returns
    the one flow.delaying line."""
    assert max(took[:3]) < 0.3, took
    assert min(took[3:]) > 0.3, took
    events = [e["event"] for e in logs]
    assert events.count("flow.delaying") == 1
    assert events.count("flow.caught_up") == 1
    delaying = next(e for e in logs if e["event"] == "flow.delaying")
    assert delaying["unread_wait"] >= 0.7
    return delaying


async def test_a_burst_reading_catches_up_with_is_not_slowed(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """Many unread messages for a moment: under both limits, nobody waits."""
    service = await _start(relays, 0.1, max_unread_wait="5s", max_unscanned=100)
    took = await _send_timed(service, 20)
    assert max(took) < 0.3, took
    await sink.handler.wait_for(20, timeout=30)
    assert "smtpguard_flow_delays_total 0.0" in await _metrics(service)


async def test_a_message_whose_reading_keeps_failing_does_not_slow_other_senders(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """It is tried again and again (scan.failed each time), but it is not reading that is
    behind: the others are read at once and nobody waits for it."""
    service = await _start(relays, 0.0, max_unread_wait="300ms")
    decider = service.relay.decider

    class FailsOnPoison:
        def decide(self, envelope: Any, reading: Any, correspondents: Any) -> Any:
            if "poison" in reading.subject:
                raise RuntimeError("a decider bug")
            return decider.decide(envelope, reading, correspondents)

    service.relay.decider = FailsOnPoison()  # type: ignore[assignment]
    assert service.address is not None
    with structlog.testing.capture_logs() as logs:
        await aiosmtplib.send(
            make_message("poison", size=READ_BY_A_WORKER),
            sender=SENDER,
            recipients=[RECIPIENT],
            hostname="127.0.0.1",
            port=service.address[1],
        )
        # Failed, and tried again (retry_initial 200 ms): wait for two failures, however
        # long a shared machine takes to start the worker.
        for _ in range(300):
            if sum(1 for e in logs if e["event"] == "scan.failed") >= 2:
                break
            await asyncio.sleep(0.1)
        took = await _send_timed(service, 3)
        await sink.handler.wait_for(3, timeout=30)
    assert max(took) < 0.3, took
    assert sum(1 for e in logs if e["event"] == "scan.failed") >= 2
    assert not any(e["event"] == "flow.delaying" for e in logs)
    assert "smtpguard_flow_delays_total 0.0" in await _metrics(service)


async def test_after_a_restart_mail_left_queued_is_not_counted_as_unread(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    """An upstream outage leaves hundreds of messages deferred; the relay is restarted.
    They are the delivery queue's, not unread mail: a new sender is not slowed while the
    relay takes them up (it was, until the read-back had walked past every one)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    outage = await relays.start({"parse": {"workers": 1}}, upstream_port=closed.getsockname()[1])
    assert outage.address is not None
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=outage.address[1]) as client:
        for number in range(200):
            await client.sendmail(SENDER, [RECIPIENT], make_message(f"during the outage {number}"))
    for _ in range(300):
        counts = await outage.store.counts()
        if counts.by_state.get(MessageState.DEFERRED, 0) == 200:
            break
        await asyncio.sleep(0.1)
    assert counts.by_state.get(MessageState.DEFERRED, 0) == 200, counts
    outage.request_stop()
    await outage.shutdown()
    relays.services.remove(outage)
    closed.close()

    service = await _start(relays, 0.0, max_unscanned=50, flow_delay="10s")
    took = await _send_timed(service, 1)
    assert took[0] < 0.3, took
    assert "smtpguard_flow_delays_total 0.0" in await _metrics(service)
    await sink.handler.wait_for(201, timeout=60)
