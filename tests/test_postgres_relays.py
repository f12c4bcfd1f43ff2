"""Two relay instances sharing one PostgreSQL database, end to end over real SMTP.

Each instance has its own listener and data folder; both relay to one capture
sink and keep everything in one database on a real PostgreSQL server
(tests/pg.py). The proofs: mail spread over both instances reaches the sink
exactly once each; a message one instance holds is reviewable through the
other's configuration; work an instance left mid-delivery (it died holding a
lease) is delivered by a live instance once the lease runs out.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import pytest

from smtpguard.config import Overrides, load_config
from smtpguard.envelope import Envelope
from smtpguard.log import configure_logging
from smtpguard.relay import RelayService
from smtpguard.review.quarantine import Quarantine
from smtpguard.spool import MessageState, Origin, new_message_id, open_configured_store
from smtpguard.spool.postgres import PostgresStore
from tests import pg
from tests.conftest import write_config
from tests.sink import CaptureSink

# The throwaway PostgreSQL server's fixtures, for this module.
pg_cluster = pg.pg_cluster
pg_dsn = pg.pg_dsn

SENDER = "j.okafor@northshire.gov.uk"
RECIPIENT = "s.mills@millsandco-solicitors.co.uk"
HOLDING_POLICY = """
rules:
  - name: hold-marked
    description: the test marks what is to be held
    when: {subject: {matches: '\\[hold\\]'}}
    action: quarantine
    severity: high
"""
_MESSAGE_ID = re.compile(rb"(?im)^message-id:\s*<([^>]+)>")

StartRelay = Callable[[str], Awaitable[RelayService]]


def message(tag: str, subject: str = "Minutes of the planning meeting") -> bytes:
    return (
        f"From: Joy Okafor <{SENDER}>\r\n"
        f"To: Sarah Mills <{RECIPIENT}>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{tag}@northshire.gov.uk>\r\n"
        "\r\n"
        "The meeting moves to Thursday at ten. Tea and biscuits provided.\r\n"
    ).encode()


def tag_of(content: bytes) -> str:
    found = _MESSAGE_ID.search(content)
    assert found is not None
    return found.group(1).decode().split("@")[0]


@pytest.fixture
async def start_relay(tmp_path: Path, sink: CaptureSink, pg_dsn: str) -> AsyncIterator[StartRelay]:
    """Starts relay instances on the test's database, each in a folder of its own."""
    services: list[RelayService] = []
    (tmp_path / "policy.yaml").write_text(HOLDING_POLICY, encoding="utf-8")

    async def start(name: str) -> RelayService:
        folder = tmp_path / name
        folder.mkdir()
        path = write_config(
            folder,
            {
                "store": {
                    "backend": "postgresql",
                    "dsn": pg_dsn,
                    "data_dir": "data",
                    "min_free_disk": "1MB",
                },
                "policy": {"file": str(tmp_path / "policy.yaml")},
                "parse": {"workers": 1},
                "logging": {"level": "warning", "format": "json"},
            },
        )
        overrides = Overrides(upstream=f"127.0.0.1:{sink.port}")
        config = load_config(path, overrides)
        configure_logging(config.logging)
        service = RelayService(path, overrides, config)
        await service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        service._stop.set()
        await service.shutdown()


def port_of(service: RelayService) -> int:
    assert service.address is not None
    return int(service.address[1])


async def states(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM messages GROUP BY state")
    finally:
        await conn.close()
    return {row["state"]: row["n"] for row in rows}


async def test_mail_spread_over_two_instances_reaches_the_sink_exactly_once(
    start_relay: StartRelay, sink: CaptureSink, pg_dsn: str
) -> None:
    first, second = await start_relay("a"), await start_relay("b")
    clients, per_client = 12, 200  # 2400 messages, half through each instance
    accepted: list[str] = []

    async def client(number: int) -> None:
        service = first if number % 2 == 0 else second
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(service), timeout=30)
        await smtp.connect()
        try:
            for i in range(per_client):
                tag = f"c{number}-m{i}"
                _, reply = await smtp.sendmail(SENDER, [RECIPIENT], message(tag))
                assert "queued as" in reply
                accepted.append(tag)
        finally:
            await smtp.quit()

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(clients)))
    sent = time.monotonic() - started
    assert len(accepted) == clients * per_client
    await sink.handler.wait_for(len(accepted), timeout=60)
    delivered = time.monotonic() - started
    await asyncio.sleep(0.5)  # anything sent twice would arrive now

    counts = Counter(tag_of(m.content) for m in sink.handler.messages)
    assert set(counts) == set(accepted)
    assert [tag for tag, n in counts.items() if n != 1] == []
    for _ in range(50):  # the outcome is committed just after the sink's 250
        if await states(pg_dsn) == {"delivered": len(accepted)}:
            break
        await asyncio.sleep(0.1)
    assert await states(pg_dsn) == {"delivered": len(accepted)}
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM contents") == 0  # bytes not kept
    finally:
        await conn.close()
    print(
        f"\n{len(accepted)} messages through 2 instances: accepted in {sent:.1f} s "
        f"({len(accepted) / sent:.0f} msg/s), all delivered after {delivered:.1f} s"
    )


async def test_a_message_held_by_one_instance_is_reviewable_through_the_other(
    start_relay: StartRelay, sink: CaptureSink, tmp_path: Path
) -> None:
    first, second = await start_relay("a"), await start_relay("b")
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(first), timeout=10)
    await smtp.connect()
    try:
        _, reply = await smtp.sendmail(SENDER, [RECIPIENT], message("held", "[hold] case notes"))
    finally:
        await smtp.quit()
    message_id = reply.rsplit(" ", 1)[1]

    # A reviewer's command on the other instance's machine: its own config, its own store.
    config = load_config(tmp_path / "b" / "smtpguard.yaml")
    assert config.store.data_dir == tmp_path / "b" / "data"
    store = open_configured_store(config.store)
    await store.open()
    try:
        held: list[Any] = []
        for _ in range(50):
            held = [h for h in await Quarantine(store, config).held() if h.record.id == message_id]
            if held and held[0].review is not None:
                break
            await asyncio.sleep(0.1)
        [found] = held
        assert found.waiting() == (RECIPIENT,)
        assert found.review is not None  # the verdict the first instance recorded
        assert await store.content(message_id) == await second.store.content(message_id)
    finally:
        await store.close()
    # And the command line, on the other instance's configuration.
    listed = await asyncio.to_thread(
        subprocess.run,
        [
            *(sys.executable, "-m", "smtpguard", "queue", "list", "--json"),
            *("--config", str(tmp_path / "b" / "smtpguard.yaml")),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    [row] = [r for r in json.loads(listed.stdout) if r["id"] == message_id]
    assert row["state"] == "held"
    assert all(tag_of(m.content) != "held" for m in sink.handler.messages)


async def test_work_left_by_an_instance_that_died_mid_delivery_is_delivered_after_its_lease(
    start_relay: StartRelay, sink: CaptureSink, pg_dsn: str, tmp_path: Path
) -> None:
    # The dead instance took the messages for delivery and never recorded an outcome.
    dead = PostgresStore(tmp_path / "dead", pg_dsn, owner="dead:1")
    await dead.open()
    tags = [f"orphan-{i}" for i in range(5)]
    for tag in tags:
        envelope = Envelope(SENDER, (RECIPIENT,), "127.0.0.1", "mail.test", time.time())
        await dead.accept(
            new_message_id(),
            envelope,
            message(tag),
            state=MessageState.QUEUED,
            origin=Origin.RELAY,
            expires_at=time.time() + 3600,
        )
    lease = 2.0
    claimed_at = time.monotonic()
    assert len(await dead.claim_due(time.time(), "dead:1", lease, limit=10)) == len(tags)
    await dead.close()

    await start_relay("alive")
    captured = await sink.handler.wait_for(len(tags), timeout=20)
    assert time.monotonic() - claimed_at >= lease  # not before the lease ran out
    assert sorted(tag_of(m.content) for m in captured) == sorted(tags)
    await asyncio.sleep(0.3)
    assert len(sink.handler.messages) == len(tags)
    for _ in range(30):
        if await states(pg_dsn) == {"delivered": len(tags)}:
            break
        await asyncio.sleep(0.1)
    assert await states(pg_dsn) == {"delivered": len(tags)}
