"""The relay as a real process: real signals, real crashes, the real command line.

Each test starts `python -m smtpguard serve` the way an administrator does,
with the listener on port 0 and the upstream pointed at a capture sink in
this process. The sink's port is reserved before the relay starts; until the
sink is opened, connections to it are refused, which is "the upstream is
down". Every wait is bounded and every relay process is killed at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BASE_CONFIG, merged, write_config
from tests.processes import (
    RECIPIENT,
    SENDER,
    RawSession,
    RelayLauncher,
    RelayProcess,
    Reply,
    ReservedSink,
    child_environment,
    dot_stuff,
    drain_datagrams,
    ehlo_size,
    elapsed_since,
    make_message,
    message_id,
    refuses_new_sessions,
    run_smtpguard,
    send_message,
    send_until_killed,
    split_received,
    wait_for_ids,
)

DRAIN_TIMEOUT = 3.0
# Shutdown waits up to the drain timeout for sessions, then briefly for scans and deliveries.
SHUTDOWN_GRACE = 3.0
DELIVERY_TIMEOUT = 10.0
# Long enough for many 100 ms queue polls: a duplicate delivery would show up within it.
SETTLE = 1.0
DEFAULT_SIZE_LIMIT = 50 * 1024 * 1024
TWO_RECIPIENTS = ["a@one.example.org", "b@two.example.net"]


def write_yaml(path: Path, data: dict[str, Any]) -> str:
    text = yaml.safe_dump(data)
    path.write_text(text, encoding="utf-8")
    return text


def line_of(text: str, needle: str) -> int:
    """1-based number of the one line of `text` that contains `needle`."""
    numbers = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(numbers) == 1, f"{needle!r} is on lines {numbers} of:\n{text}"
    return numbers[0]


def about(queue_id: str) -> Callable[[dict[str, Any]], bool]:
    """An event filter: events about the message stored under `queue_id`."""
    return lambda event: event.get("id") == queue_id


async def send(relay: RelayProcess, content: bytes, **options: Any) -> Reply:
    return await asyncio.to_thread(send_message, relay.port, content, **options)


# -- crash safety -------------------------------------------------------------


async def test_when_killed_right_after_250_then_delivered_once_after_restart(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    first = await launcher.start(config, data_dir, upstream.port)
    content = make_message("killed right after 250", size=20_000)

    def kill_now(reply: Reply) -> None:
        os.kill(first.pid, signal.SIGKILL)

    reply = await send(first, content, after_data=kill_now)

    assert reply.code == 250, reply
    queue_id = reply.queue_id
    assert await first.wait_exit(timeout=10) == -signal.SIGKILL

    await upstream.open()
    second = await launcher.start(config, data_dir, upstream.port)

    assert second.named("relay.listening")[0]["resumed"] >= 1
    await wait_for_ids(upstream, {message_id(content)}, DELIVERY_TIMEOUT)
    await asyncio.sleep(SETTLE)
    assert len(upstream.handler.messages) == 1
    captured = upstream.handler.messages[0]
    received, relayed = split_received(captured.content)
    assert relayed == content
    assert f"id {queue_id};".encode() in received
    assert captured.sender == SENDER
    assert captured.recipients == [RECIPIENT]
    assert [e["id"] for e in second.named("message.delivered")] == [queue_id]


async def test_when_killed_mid_flow_then_every_acknowledged_message_is_delivered(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    first = await launcher.start(config, data_dir, upstream.port)

    async def kill() -> None:
        first.send_signal(signal.SIGKILL)

    flow = await send_until_killed(first.port, kill, senders=4, enough=12)
    assert await first.wait_exit(timeout=10) == -signal.SIGKILL
    assert flow.unexpected == []

    await upstream.open()
    second = await launcher.start(config, data_dir, upstream.port)

    assert second.named("relay.listening")[0]["resumed"] >= len(flow.acknowledged)
    await wait_for_ids(upstream, set(flow.acknowledged), DELIVERY_TIMEOUT)
    await asyncio.sleep(SETTLE)
    delivered = upstream.message_ids()
    assert len(delivered) == len(set(delivered)), "a message was delivered twice"
    assert set(flow.acknowledged) <= set(delivered)
    # Stored but killed before its 250 went out is allowed (the client resends); invented is not.
    assert set(delivered) <= flow.attempted


# -- SIGTERM ------------------------------------------------------------------


async def start_message(relay: RelayProcess, content: bytes) -> tuple[RawSession, bytes]:
    """A session that is half-way through DATA; returns it and the rest of the wire bytes."""
    wire = dot_stuff(content)
    half = wire.index(b"\r\n", len(wire) // 2) + 2
    session = await RawSession.connect(relay.port)
    assert (await session.reply())[0] == 220
    assert (await session.command("EHLO client.test"))[0] == 250
    assert (await session.command(f"MAIL FROM:<{SENDER}>"))[0] == 250
    assert (await session.command(f"RCPT TO:<{RECIPIENT}>"))[0] == 250
    assert (await session.command("DATA"))[0] == 354
    await session.send(wire[:half])
    return session, wire[half:] + b".\r\n"


async def terminate(relay: RelayProcess) -> tuple[int, float]:
    """SIGTERM; returns once the relay has begun stopping: (event mark, monotonic time sent)."""
    mark = len(relay.events)
    relay.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await relay.wait_for_event("relay.stopping", after=mark)
    return mark, signalled


@pytest.mark.parametrize("upstream_up", [True, False], ids=["upstream-up", "upstream-down"])
async def test_when_sigterm_mid_message_then_message_is_finished_and_relay_exits_0(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher, upstream_up: bool
) -> None:
    config = write_config(tmp_path, {"server": {"drain_timeout": f"{DRAIN_TIMEOUT:g}s"}})
    data_dir = tmp_path / "data"
    if upstream_up:
        await upstream.open()
    relay = await launcher.start(config, data_dir, upstream.port)
    content = make_message("in flight at SIGTERM", size=30_000)
    session, rest = await start_message(relay, content)
    try:
        mark, signalled = await terminate(relay)
        refused, how = await refuses_new_sessions(relay.port)
        assert refused, f"a new session was served after SIGTERM: {how}"

        await session.send(rest)
        code, text = await session.reply()
        assert code == 250, text
        assert "queued as" in text
    finally:
        await session.close()

    assert await relay.wait_exit(timeout=DRAIN_TIMEOUT + SHUTDOWN_GRACE) == 0
    assert elapsed_since(signalled) < DRAIN_TIMEOUT + SHUTDOWN_GRACE, relay.log_text()
    assert relay.named("relay.stopped", after=mark), relay.log_text()

    if upstream_up:
        # Delivered before the process exited: the sink has it now, not later.
        assert upstream.message_ids() == [message_id(content)]
    else:
        assert upstream.handler.messages == []
        await upstream.open()
        second = await launcher.start(config, data_dir, upstream.port)
        assert second.named("relay.listening")[0]["resumed"] == 1
        await wait_for_ids(upstream, {message_id(content)}, DELIVERY_TIMEOUT)
        await asyncio.sleep(SETTLE)
        assert upstream.message_ids() == [message_id(content)]
    _, relayed = split_received(upstream.handler.messages[0].content)
    assert relayed == content


async def test_when_sigterm_then_sessions_get_421_and_relay_exits_without_waiting_out_drain(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    await upstream.open()
    config = write_config(tmp_path, {"server": {"drain_timeout": f"{DRAIN_TIMEOUT:g}s"}})
    relay = await launcher.start(config, tmp_path / "data", upstream.port)
    idle = await RawSession.connect(relay.port)
    busy, rest = await start_message(relay, make_message("finished while draining"))
    try:
        assert (await idle.reply())[0] == 220
        assert (await idle.command("EHLO client.test"))[0] == 250
        mark, signalled = await terminate(relay)

        idle_code, idle_text = await idle.reply()
        assert (idle_code, elapsed_since(signalled) < 1) == (421, True), idle_text
        await busy.send(rest)
        assert (await busy.reply())[0] == 250
        busy_code, busy_text = await busy.reply()
        assert busy_code == 421, busy_text
    finally:
        await idle.close()
        await busy.close()

    # Nothing is left to wait for: the relay must not sit out the whole drain timeout.
    assert await relay.wait_exit(timeout=DRAIN_TIMEOUT + SHUTDOWN_GRACE) == 0
    assert elapsed_since(signalled) < DRAIN_TIMEOUT / 2
    assert relay.named("relay.stopped", after=mark)[-1]["drained"] is True


async def greeting(port: int) -> tuple[int, str]:
    """The first reply a new client gets; (0, "") if the connection is closed without one."""
    session = await RawSession.connect(port)
    try:
        return await session.reply()
    finally:
        await session.close()


async def test_when_sessions_are_at_the_limit_then_next_client_gets_421(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    config = write_config(tmp_path, {"server": {"max_sessions": 1}})
    # No serving probe: its session could still hold the only slot.
    relay = await launcher.start(config, tmp_path / "data", upstream.port, wait_until_serving=False)
    holder = await RawSession.connect(relay.port)
    try:
        assert (await holder.reply())[0] == 220

        code, text = await greeting(relay.port)
        await relay.wait_for_event("session.refused")
    finally:
        await holder.close()

    assert (code, text) == (421, "4.7.0 Too many connections, try again later")
    assert "Traceback" not in relay.log_text(), relay.log_text()


async def test_when_client_is_not_allowed_then_it_gets_554_at_connect(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    config = write_config(tmp_path, {"server": {"allowed_clients": ["10.0.0.0/8"]}})
    relay = await launcher.start(config, tmp_path / "data", upstream.port, wait_until_serving=False)

    code, text = await greeting(relay.port)
    await relay.wait_for_event("session.refused")

    assert code == 554, f"got {code} {text!r}"
    assert "Relaying denied" in text
    assert "Traceback" not in relay.log_text(), relay.log_text()


# -- SIGHUP -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_changes", "needle", "reason"),
    [
        (
            {"max_message_size": 2000, "max_mesage_size": "10MB"},
            "max_mesage_size:",
            "server.max_mesage_size: unknown key",
        ),
        (
            {"max_message_size": 2000, "allowed_clients": ["127.0.0.0/8", "10.0.0.300/8"]},
            "- 10.0.0.300/8",
            "server.allowed_clients.1: not a CIDR network: '10.0.0.300/8'",
        ),
    ],
    ids=["unknown-key", "invalid-cidr"],
)
async def test_when_sighup_with_broken_config_then_refused_and_old_config_kept(
    tmp_path: Path,
    upstream: ReservedSink,
    launcher: RelayLauncher,
    server_changes: dict[str, Any],
    needle: str,
    reason: str,
) -> None:
    await upstream.open()
    config = write_config(tmp_path)
    relay = await launcher.start(config, tmp_path / "data", upstream.port)
    # The broken file also lowers the size limit: none of it may take effect.
    text = write_yaml(config, merged(BASE_CONFIG, {"server": server_changes}))
    line = line_of(text, needle)

    mark = len(relay.events)
    relay.send_signal(signal.SIGHUP)
    refused = await relay.wait_for_event("config.reload_refused", after=mark)

    assert len(refused["problems"]) == 1, refused
    assert refused["problems"][0].startswith(f"{config}:{line}: {reason}"), refused
    assert relay.named("config.reloaded", after=mark) == []
    assert await asyncio.to_thread(ehlo_size, relay.port) == str(DEFAULT_SIZE_LIMIT)
    content = make_message("after a refused reload", size=5_000)
    reply = await send(relay, content, declare_size=True)
    assert reply.code == 250, reply
    await wait_for_ids(upstream, {message_id(content)}, DELIVERY_TIMEOUT)
    _, relayed = split_received(upstream.handler.messages[0].content)
    assert relayed == content
    assert relay.returncode is None


async def test_when_sighup_arrives_as_soon_as_relay_reports_ready_then_it_reloads(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    # A systemd notify socket whose queue is full: the relay's READY=1 blocks right
    # after it logs relay.listening, which holds it exactly where a `systemctl reload`
    # issued on readiness would find it.
    address = str(tmp_path / "notify.sock")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler,
    ):
        notify.bind(address)
        notify.setblocking(False)
        filler.setblocking(False)
        filler.connect(address)
        with contextlib.suppress(BlockingIOError):
            for _ in range(100_000):
                filler.send(b"filler")
        config = write_config(tmp_path)
        relay = await launcher.start(
            config,
            tmp_path / "data",
            upstream.port,
            env={"NOTIFY_SOCKET": address},
            wait_until_serving=False,
        )

        relay.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.2)  # the signal lands while READY=1 is still blocked
        received = drain_datagrams(notify)
        await relay.wait_for_event("config.reloaded")
        received += drain_datagrams(notify)

    assert b"READY=1" in received
    assert relay.returncode is None


async def test_when_sighup_lowers_max_message_size_then_large_mail_gets_552(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    await upstream.open()
    config = write_config(tmp_path)
    relay = await launcher.start(config, tmp_path / "data", upstream.port)
    large_before = make_message("5 KB before the reload", size=5_000)
    assert (await send(relay, large_before, declare_size=True)).code == 250

    write_config(tmp_path, {"server": {"max_message_size": 2000}})
    mark = len(relay.events)
    relay.send_signal(signal.SIGHUP)
    await relay.wait_for_event("config.reloaded", after=mark)

    assert await asyncio.to_thread(ehlo_size, relay.port) == "2000"
    large = make_message("5 KB after the reload", size=5_000)
    declared = await send(relay, large, declare_size=True)
    assert (declared.code, declared.stage) == (552, "MAIL"), declared
    undeclared = await send(relay, large)
    assert (undeclared.code, undeclared.stage) == (552, "DATA"), undeclared
    small = make_message("small after the reload", size=1_000)
    accepted = await send(relay, small, declare_size=True)
    assert accepted.code == 250, accepted
    await wait_for_ids(upstream, {message_id(large_before), message_id(small)}, DELIVERY_TIMEOUT)
    await asyncio.sleep(SETTLE)
    assert sorted(upstream.message_ids()) == sorted([message_id(large_before), message_id(small)])


# -- check-config -------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpguard", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=path.parent,
        env=child_environment(),
        check=False,
    )


def test_when_config_is_valid_then_check_config_exits_0(tmp_path: Path) -> None:
    path = write_config(tmp_path)

    result = check_config(path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("changes", "needle", "reason"),
    [
        (
            {"server": {"max_mesage_size": "10MB"}},
            "max_mesage_size:",
            "server.max_mesage_size: unknown key",
        ),
        (
            {"server": {"allowed_clients": ["10.0.0.300/8"]}},
            "- 10.0.0.300/8",
            "server.allowed_clients.0: not a CIDR network: '10.0.0.300/8'",
        ),
        (
            {"server": {"max_recipients": "many"}},
            "max_recipients:",
            "server.max_recipients: Input should be a valid integer",
        ),
        (
            {"server": {"tls": {"certificate": "missing.crt", "key": "relay.key"}}},
            "certificate:",
            "server.tls.certificate: no such file: {dir}/missing.crt",
        ),
    ],
    ids=["unknown-key", "bad-cidr", "wrong-type", "missing-certificate"],
)
def test_when_config_is_invalid_then_check_config_exits_2_with_file_and_line(
    tmp_path: Path, changes: dict[str, Any], needle: str, reason: str
) -> None:
    (tmp_path / "relay.key").write_text("not checked before the certificate\n")
    path = tmp_path / "smtpguard.yaml"
    text = write_yaml(path, merged(BASE_CONFIG, changes))
    line = line_of(text, needle)

    result = check_config(path)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    # One mistake, one problem: nothing that would send the administrator elsewhere.
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"{path}:{line}: {reason.format(dir=tmp_path)}"), result.stderr


# -- the queue command line -----------------------------------------------------


async def test_when_queue_flushed_then_deferred_mail_is_delivered_without_waiting_for_retry(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    # Ten minutes to the next retry: only the flush can explain a prompt delivery.
    config = write_config(tmp_path, {"delivery": {"retry_initial": "10m", "retry_max": "1h"}})
    data_dir = tmp_path / "data"
    relay = await launcher.start(config, data_dir, upstream.port)
    to_one = make_message("deferred to one")
    to_two = make_message("deferred to two")
    first = await send(relay, to_one)
    second = await send(relay, to_two, recipients=TWO_RECIPIENTS)
    assert (first.code, second.code) == (250, 250)
    for reply in (first, second):
        await relay.wait_for_event("message.deferred", where=about(reply.queue_id))
    cli = ("--config", str(config), "--data-dir", str(data_dir))

    listed = await run_smtpguard("queue", "list", "--json", *cli, cwd=tmp_path)

    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {first.queue_id, second.queue_id}
    expected = {first.queue_id: [RECIPIENT], second.queue_id: TWO_RECIPIENTS}
    for queue_id, recipients in expected.items():
        row = rows[queue_id]
        assert row["state"] == "deferred"
        assert row["sender"] == SENDER
        assert [r["address"] for r in row["recipients"]] == recipients
        assert {r["state"] for r in row["recipients"]} == {"deferred"}
        assert row["next_attempt_at"] > time.time() + 300

    await upstream.open()
    await asyncio.sleep(SETTLE)
    assert upstream.handler.messages == [], "delivered before the flush: retry was not long"

    flushed = await run_smtpguard("queue", "flush", *cli, cwd=tmp_path)

    assert flushed.returncode == 0, flushed.stderr
    assert flushed.stdout.startswith("2 deferred message(s)"), flushed.stdout
    await wait_for_ids(upstream, {message_id(to_one), message_id(to_two)}, timeout=5)
    await relay.wait_for_event("message.delivered", where=about(second.queue_id))
    after = await run_smtpguard("queue", "list", "--json", *cli, cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == []


# -- file permissions -----------------------------------------------------------


async def test_when_relay_creates_data_dir_then_only_its_user_can_read_it(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    config = write_config(tmp_path)
    data_dir = tmp_path / "var" / "lib" / "smtpguard"
    # The most permissive umask an administrator could have: the relay must not rely on it.
    relay = await launcher.start(config, data_dir, upstream.port, umask=0)
    reply = await send(relay, make_message("stays on disk while deferred"))
    assert reply.code == 250, reply
    await relay.wait_for_event("message.deferred", where=about(reply.queue_id))

    def mode(path: Path) -> str:
        return oct(stat.S_IMODE(path.stat().st_mode))

    spool_files = sorted((data_dir / "spool").glob("*.eml"))
    assert [p.stem for p in spool_files] == [reply.queue_id]
    assert mode(data_dir) == "0o700"
    assert mode(data_dir / "spool") == "0o700"
    assert {p.name: mode(p) for p in spool_files} == {f"{reply.queue_id}.eml": "0o600"}
    database_files = [
        p
        for p in (data_dir / n for n in ("smtpguard.db", "smtpguard.db-wal", "smtpguard.db-shm"))
        if p.exists()
    ]
    assert data_dir / "smtpguard.db" in database_files
    assert {p.name: mode(p) for p in database_files} == {p.name: "0o600" for p in database_files}
