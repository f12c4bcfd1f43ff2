"""`server.processes: 2`: one relay made of a parent and two processes sharing its socket.

Started as an administrator starts it (`python -m smtpguard serve`), listener on
port 0, upstream a capture sink in this process that is down until opened.
The parent and both processes write JSON lines to the same stderr; each
process's lines carry `"process": <index>`, the parent's carry none. Which
process is which comes from /proc: process 0 is started (and ready) before
process 1 is started, so it is the older child.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import write_config
from tests.processes import (
    EVENT_TIMEOUT,
    START_TIMEOUT,
    RelayLauncher,
    RelayProcess,
    Reply,
    ReservedSink,
    child_pids,
    descendants,
    drain_datagrams,
    is_running,
    make_message,
    message_id,
    run_smtpguard,
    send_message,
    send_until_killed,
    serving_processes,
    wait_for_ids,
    wait_until,
)

PROCESSES = 2
DRAIN_TIMEOUT = 3.0
# The parent waits for its processes, which wait up to the drain timeout, then stop briefly.
STOP_TIMEOUT = DRAIN_TIMEOUT + 5.0
# PR_SET_PDEATHSIG: the kernel kills the processes as the parent dies; this is slack.
ORPHAN_TIMEOUT = 5.0
DELIVERY_TIMEOUT = 20.0
# Long enough for many 100 ms queue polls: a duplicate delivery would show up within it.
SETTLE = 1.0
CLIENTS = 10
MESSAGES = 300


async def start_two(
    launcher: RelayLauncher, tmp_path: Path, upstream: ReservedSink, **options: Any
) -> tuple[RelayProcess, list[int]]:
    """The relay, once both processes serve, and their pids (process 0 first)."""
    config = write_config(
        tmp_path,
        {
            "server": {"processes": PROCESSES, "drain_timeout": f"{DRAIN_TIMEOUT:g}s"},
            # One parse worker each: two relay processes already share the two cores.
            "parse": {"workers": 1},
        },
    )
    relay = await launcher.start(
        config, tmp_path / "data", upstream.port, wait_until_serving=False, **options
    )
    return relay, await serving_processes(relay, PROCESSES)


def of_process(index: int) -> Callable[[dict[str, Any]], bool]:
    """An event filter: lines logged by relay process `index`."""
    return lambda event: event.get("process") == index


def processes_of(events: list[dict[str, Any]]) -> list[object]:
    return sorted((e.get("process") for e in events), key=repr)


def send_concurrently(port: int, contents: list[bytes], clients: int) -> list[Reply]:
    """Each message in a session of its own, `clients` sessions at a time (blocking)."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda content: send_message(port, content), contents))


async def delivered_exactly_once(upstream: ReservedSink, wanted: set[bytes]) -> None:
    await wait_for_ids(upstream, wanted, DELIVERY_TIMEOUT)
    await asyncio.sleep(SETTLE)
    copies = Counter(upstream.message_ids())
    assert {mid: n for mid, n in copies.items() if n != 1} == {}, "delivered more than once"
    assert set(copies) == wanted


def not_json(lines: list[str]) -> list[str]:
    broken = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            broken.append(line[:300])
    return broken


def logged_at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


# -- both processes serve ---------------------------------------------------------


async def test_when_ten_clients_send_then_both_processes_accept_and_each_message_arrives_once(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    await upstream.open()
    relay, _ = await start_two(launcher, tmp_path, upstream)
    contents = [make_message(f"load {n}", size=2_000) for n in range(MESSAGES)]

    async with asyncio.timeout(60):
        replies = await asyncio.to_thread(send_concurrently, relay.port, contents, CLIENTS)

    assert [r for r in replies if r.code != 250] == []
    await delivered_exactly_once(upstream, {message_id(c) for c in contents})
    # Three processes write to one stderr: each line must still be one whole JSON object.
    assert not_json(relay.lines) == [], "log lines of different processes ran together"
    # The process that stored a message (before its 250) logs message.received.
    received = {e["id"]: e.get("process") for e in relay.named("message.received")}
    accepted_by = Counter(received.get(r.queue_id) for r in replies)
    assert set(accepted_by) == {0, 1}, f"messages per accepting process: {accepted_by}"
    assert relay.returncode is None


# -- readiness, stop, reload ------------------------------------------------------------


async def test_when_both_processes_listen_then_ready_and_sigterm_stops_all_with_exit_0(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    address = str(tmp_path / "notify.sock")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.setblocking(False)
        datagrams: list[tuple[float, bytes]] = []  # (when this loop saw it, what)

        def on_datagram() -> None:
            datagrams.extend((time.time(), d) for d in drain_datagrams(notify))

        loop.add_reader(notify.fileno(), on_datagram)
        try:
            relay, _ = await start_two(launcher, tmp_path, upstream, env={"NOTIFY_SOCKET": address})
            tree = descendants(relay.pid)  # the two processes and their parse workers
            await wait_until(lambda: bool(datagrams), timeout=EVENT_TIMEOUT, what="READY=1")
            ready_at = datagrams[0][0]
            listening = relay.named("relay.listening")

            assert [d for _, d in datagrams] == [b"READY=1"]
            assert processes_of(listening) == [0, 1]
            # Each process logged relay.listening before the parent could send READY=1.
            assert [logged_at(e) < ready_at for e in listening] == [True, True], (
                ready_at,
                listening,
            )
            started = relay.events.index(relay.named("relay.processes_started")[0])
            assert all(relay.events.index(e) < started for e in listening)

            mark = len(relay.events)
            relay.send_signal(signal.SIGTERM)
            assert await relay.wait_exit(timeout=STOP_TIMEOUT) == 0
        finally:
            loop.remove_reader(notify.fileno())
        on_datagram()

    # The processes never talk to systemd: one READY=1 and one STOPPING=1, the parent's.
    assert [d for _, d in datagrams] == [b"READY=1", b"STOPPING=1"]
    assert processes_of(relay.named("relay.stopped", after=mark)) == [0, 1]
    assert relay.named("relay.processes_stopped", after=mark), relay.log_text()
    assert [p for p in tree if is_running(p)] == []


async def test_when_sighup_then_both_processes_reload(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    relay, children = await start_two(launcher, tmp_path, upstream)
    mark = len(relay.events)

    relay.send_signal(signal.SIGHUP)
    for index in range(PROCESSES):
        await relay.wait_for_event("config.reloaded", after=mark, where=of_process(index))
    await asyncio.sleep(SETTLE)

    assert processes_of(relay.named("config.reloaded", after=mark)) == [0, 1]
    assert relay.named("config.reload_refused", after=mark) == []
    assert child_pids(relay.pid) == children
    assert relay.returncode is None


# -- crashes ----------------------------------------------------------------------


async def send_then_kill(
    relay: RelayProcess, children: list[int], index: int
) -> tuple[list[bytes], int]:
    """20 messages accepted while the upstream is down (so that what the killed process
    took is still to deliver), then SIGKILL for process `index`, once the parent saw it
    die: the messages, and the log position before the kill."""
    before = [make_message(f"before the kill {n}") for n in range(20)]
    replies = await asyncio.to_thread(send_concurrently, relay.port, before, 4)
    assert [r for r in replies if r.code != 250] == []
    mark = len(relay.events)
    os.kill(children[index], signal.SIGKILL)
    died = await relay.wait_for_event("relay.process_died", after=mark)
    assert (died["process"], died["exit_code"]) == (index, -signal.SIGKILL), died
    return before, mark


async def send_then_deliver_all(
    relay: RelayProcess, upstream: ReservedSink, before: list[bytes]
) -> None:
    """After the restart: 20 more accepted, the upstream opened, all 40 delivered once."""
    after = [make_message(f"after the restart {n}") for n in range(20)]
    replies = await asyncio.to_thread(send_concurrently, relay.port, after, 4)
    assert [r for r in replies if r.code != 250] == []
    await upstream.open()
    await delivered_exactly_once(upstream, {message_id(c) for c in before + after})
    assert relay.returncode is None


async def test_when_a_process_is_killed_then_all_restart_and_mail_is_delivered_once(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    relay, children = await start_two(launcher, tmp_path, upstream)
    before, mark = await send_then_kill(relay, children, 1)
    restarted = [
        await relay.wait_for_event(
            "relay.listening",
            after=mark,
            where=of_process(index),
            timeout=START_TIMEOUT,
        )
        for index in range(PROCESSES)
    ]
    # Process 0 was stopped, not killed, and the new process 0 took up every message.
    assert processes_of(relay.named("relay.stopped", after=mark)) == [0]
    assert [e["resumed"] for e in restarted] == [len(before), 0]
    assert len(relay.named("relay.processes_started")) == 1
    now = child_pids(relay.pid)
    assert len(now) == PROCESSES and not set(now) & set(children), (children, now)
    assert [p for p in children if is_running(p)] == []
    await send_then_deliver_all(relay, upstream, before)
    assert relay.named("relay.giving_up") == []


async def test_when_parent_is_killed_then_processes_die_and_next_start_delivers_all(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    first, _ = await start_two(launcher, tmp_path, upstream)

    async def kill_parent() -> None:
        tree = descendants(first.pid)
        first.send_signal(signal.SIGKILL)
        await wait_until(
            lambda: not any(is_running(p) for p in tree),
            timeout=ORPHAN_TIMEOUT,
            what=f"the processes below the killed parent to die: {tree}",
        )

    flow = await send_until_killed(first.port, kill_parent, senders=6, enough=30)
    assert await first.wait_exit(timeout=10) == -signal.SIGKILL
    assert flow.unexpected == []

    await upstream.open()
    second, _ = await start_two(launcher, tmp_path, upstream)

    recovered = await second.wait_for_event("relay.listening", where=of_process(0))
    assert recovered["resumed"] >= len(flow.acknowledged)
    await wait_for_ids(upstream, set(flow.acknowledged), DELIVERY_TIMEOUT)
    await asyncio.sleep(SETTLE)
    delivered = upstream.message_ids()
    assert len(delivered) == len(set(delivered)), "a message was delivered twice"
    # Stored but killed before its 250 went out is allowed (the client resends); invented is not.
    assert set(flow.acknowledged) <= set(delivered) <= flow.attempted


# -- configuration ------------------------------------------------------------------


async def test_when_metrics_listen_with_two_processes_then_serve_refuses_to_start(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path, {"server": {"processes": PROCESSES}, "metrics": {"listen": "127.0.0.1:0"}}
    )
    data_dir = tmp_path / "data"

    result = await run_smtpguard(
        "serve",
        *("--config", str(config), "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)),
        cwd=tmp_path,
    )

    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "metrics.listen needs server.processes: 1" in result.stderr, result.stderr
    assert str(config) in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists(), "serve started before refusing its config"
