"""A burst of large mail waits in the store, not in memory (`server.max_waiting_memory`).

The relay accepts faster than it can read attachments, and reads faster than
a slow upstream takes mail. Without a bound, every message accepted but not
yet read, or read but not yet delivered, sat in memory with all its bytes
(742 MiB after five seconds of 2 MB office mail from 100 clients). Now each
stage keeps at most the budget in memory (plus one message read back from
the store); the rest waits in the store and is read back in turn, and every
message still arrives once, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiosmtplib

from smtpguard.relay import RelayService
from tests.conftest import RelayRunner
from tests.sink import CaptureHandler, CaptureSink

BUDGET = 64 * 1024
SENDER = "j.okafor@northshire.gov.uk"
RECIPIENT = "s.mills@millsandco-solicitors.co.uk"


def _message(number: int) -> bytes:
    """About 20 KB of ordinary text: too long to read on the loop, so a worker reads it."""
    body = b"".join(
        b"Line %05d of the planning minutes, nothing personal here.\r\n" % n for n in range(330)
    )
    return (
        f"From: Joy Okafor <{SENDER}>\r\nTo: <{RECIPIENT}>\r\n"
        f"Subject: minutes part {number}\r\nMessage-ID: <burst-{number}@northshire.gov.uk>\r\n\r\n"
    ).encode() + body


class _HeldUpstream(CaptureHandler):
    """An upstream that takes nothing until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await self.gate.wait()
        return await super().handle_DATA(server, session, envelope)


async def _send(port: int, numbers: range) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False)
    await client.connect()
    try:
        for number in numbers:
            await client.sendmail(SENDER, [RECIPIENT], _message(number))
    finally:
        await client.quit()


async def test_a_burst_waits_in_the_store_and_every_message_arrives_once(
    relays: RelayRunner,
) -> None:
    upstream = _HeldUpstream()
    sink = CaptureSink(upstream)
    await sink.start()
    try:
        service = await relays.start(
            {
                "server": {"max_waiting_memory": BUDGET},
                "upstream": {"max_connections": 1, "timeout": "60s"},
                "parse": {"workers": 1},
            },
            upstream_port=sink.port,
        )
        peaks = {"waiting": 0, "scanning": 0, "ready": 0, "without_content": 0}
        watching = asyncio.create_task(_watch(service, peaks))
        try:
            assert service.address is not None
            await asyncio.gather(*(_send(service.address[1], range(n, 60, 6)) for n in range(6)))
            # Everything accepted; the upstream still takes nothing: the read mail queues up.
            async with asyncio.timeout(30):
                while service.relay._scanning_bytes or service.relay._waiting:
                    await asyncio.sleep(0.05)
            upstream.gate.set()
            captured = await upstream.wait_for(60, timeout=60)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
    finally:
        await relays.stop_all()
        await sink.stop()

    largest = len(_message(59)) + 200  # and the Received: header
    assert peaks["waiting"] > 0, peaks  # some did wait in the store
    assert peaks["scanning"] <= BUDGET + largest, peaks
    assert peaks["ready"] <= BUDGET, peaks
    assert peaks["without_content"] > 0, peaks  # some read mail waited without its bytes
    by_id = {}
    for message in captured:
        number = int(message.content.split(b"Message-ID: <burst-")[1].split(b"@")[0])
        assert number not in by_id, f"message {number} arrived twice"
        by_id[number] = message.content
    assert sorted(by_id) == list(range(60))
    for number, content in by_id.items():
        assert content.endswith(_message(number)), f"message {number} arrived changed"


async def _watch(service: RelayService, peaks: dict[str, int]) -> None:
    while True:
        relay, queue = service.relay, service.queue
        peaks["waiting"] = max(peaks["waiting"], len(relay._waiting))
        peaks["scanning"] = max(peaks["scanning"], relay._scanning_bytes)
        peaks["ready"] = max(peaks["ready"], queue._ready_bytes)
        waiting_jobs = list(queue._ready._queue)  # type: ignore[attr-defined]
        peaks["without_content"] = max(
            peaks["without_content"], sum(1 for job in waiting_jobs if job.content is None)
        )
        await asyncio.sleep(0.002)
