"""Before-queue mode under SIGKILL: a hold the client was told about with a 250 is never
left without its notice to the sender.

The relay decides before its 250, but the hold notice is stored after it. The
relay is killed the moment each 250 arrives; after a restart every held
message is still held, nothing reached the held recipient, and the sender has
been told about each one (at least once: a notice stored just before the kill
may be sent again).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import smtplib
from pathlib import Path

import pytest

from tests import pg
from tests.conftest import write_config
from tests.processes import (
    SENDER,
    RelayLauncher,
    Reply,
    ReservedSink,
    make_message,
    send_message,
    wait_until,
)
from tests.test_relay_smtp import EXAMPLE, NOTIFYING_POLICY  # holds mail to webmail

WEBMAIL = "dan.hart77@gmail.com"
ROUNDS = 4

# The throwaway PostgreSQL server, started only for the postgresql case.
pg_cluster = pg.pg_cluster


def _send_and_kill_on_250(port: int, pid: int, subject: str) -> Reply | None:
    """Send one message; SIGKILL the relay as soon as its DATA reply is read."""
    replies: list[Reply] = []

    def kill(reply: Reply) -> None:
        replies.append(reply)
        if reply.code == 250:
            os.kill(pid, signal.SIGKILL)

    with contextlib.suppress(OSError, smtplib.SMTPException):  # QUIT to a dead relay
        send_message(port, make_message(subject), recipients=[WEBMAIL], after_data=kill)
    return replies[0] if replies else None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_before_queue_hold_is_told_to_the_sender_even_if_the_relay_dies_at_its_250(
    tmp_path: Path,
    launcher: RelayLauncher,
    upstream: ReservedSink,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    """On PostgreSQL the old code wrote the held state before the notice: the window
    this closes. On SQLite its lazy index made the window rare."""
    (tmp_path / "policy.yaml").write_text(NOTIFYING_POLICY, encoding="utf-8")
    changes: dict[str, dict[str, object]] = {
        "server": {"mode": "before-queue"},
        "council": {"domains": str(EXAMPLE / "domains.csv")},
        "policy": {"file": "policy.yaml"},
    }
    if backend == "postgresql":
        cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
        dsn = cluster.dsn(await cluster.create_database())
        changes["store"] = {"backend": "postgresql", "dsn": dsn, "data_dir": "data"}
    config = write_config(tmp_path, changes)
    data = tmp_path / "data"
    held: list[str] = []
    for number in range(ROUNDS):
        relay = await launcher.start(config, data, upstream.port)
        reply = await asyncio.to_thread(
            _send_and_kill_on_250, relay.port, relay.pid, f"hold {number}"
        )
        assert reply is not None and reply.code == 250, reply
        held.append(reply.queue_id)
        assert await relay.wait_exit(timeout=10) == -signal.SIGKILL

    await upstream.open()
    relay = await launcher.start(config, data, upstream.port)

    def told() -> set[str]:
        return {
            queue_id
            for message in upstream.handler.messages
            if message.recipients == [SENDER]
            for queue_id in held
            if f"Queue ID: {queue_id}".encode() in message.content
        }

    await wait_until(lambda: told() == set(held), timeout=30, what="a hold notice per message")
    assert not [m for m in upstream.handler.messages if WEBMAIL in m.recipients]
    assert relay.returncode is None
