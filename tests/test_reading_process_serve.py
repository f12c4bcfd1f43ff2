"""`server.reading_process` as an administrator runs it: `smtpguard serve` starts a
reading process (process 0) and the accepting processes, and stops and restarts
them as one relay. Started with `python -m smtpguard serve`, upstream a capture
sink in this process, down until opened (tests/processes.py)."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path

from tests.conftest import write_config
from tests.processes import (
    START_TIMEOUT,
    RelayLauncher,
    RelayProcess,
    ReservedSink,
    child_pids,
    is_running,
    make_message,
    message_id,
    run_smtpguard,
    serving_processes,
    wait_until,
)
from tests.test_relay_processes import (
    STOP_TIMEOUT,
    delivered_exactly_once,
    of_process,
    processes_of,
    send_concurrently,
    send_then_deliver_all,
    send_then_kill,
)

DRAIN_TIMEOUT = 3.0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def start_split(
    launcher: RelayLauncher, tmp_path: Path, upstream: ReservedSink
) -> tuple[RelayProcess, list[int]]:
    """The relay once its reading process and its one accepting process serve: their pids,
    the reading process first."""
    config = write_config(
        tmp_path,
        {
            "server": {"reading_process": True, "drain_timeout": f"{DRAIN_TIMEOUT:g}s"},
            "parse": {"workers": 1},
            "metrics": {"listen": "127.0.0.1:0"},
        },
    )
    relay = await launcher.start(config, tmp_path / "data", upstream.port, wait_until_serving=False)
    return relay, await serving_processes(relay, 2)


async def test_the_accepting_process_answers_the_reading_one_delivers_and_sigterm_stops_both(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    await upstream.open()
    relay, _ = await start_split(launcher, tmp_path, upstream)
    assert processes_of(relay.named("relay.reading")) == [0]
    assert processes_of(relay.named("relay.listening")) == [1]
    contents = [make_message(f"case notes {n}", size=2_000) for n in range(100)]

    replies = await asyncio.to_thread(send_concurrently, relay.port, contents, 5)

    assert [r for r in replies if r.code != 250] == []
    await delivered_exactly_once(upstream, {message_id(c) for c in contents})
    assert set(processes_of(relay.named("message.received"))) == {1}
    assert set(processes_of(relay.named("message.scanned"))) == {0}
    assert set(processes_of(relay.named("message.delivered"))) == {0}
    # The reading process serves the metrics of both.
    (listening,) = relay.named("metrics.listening")
    assert listening["process"] == 0
    await wait_until(
        lambda: (
            'smtpguard_messages_received_total{mode="after-queue"} 100.0'
            in scrape(listening["port"])
        ),
        timeout=10,
        what="the accepting process's count on the reading process's /metrics",
    )

    mark = len(relay.events)
    relay.send_signal(signal.SIGTERM)
    assert await relay.wait_exit(timeout=2 * STOP_TIMEOUT) == 0
    # The accepting process stops first, while the reading one still reads what it hands over.
    stopped = relay.named("relay.stopped", after=mark)
    assert [e.get("process") for e in stopped] == [1, 0], relay.log_text()
    assert relay.named("handoff.broken") == []


async def test_when_the_reading_process_is_killed_then_both_restart_and_mail_is_read_once(
    tmp_path: Path, upstream: ReservedSink, launcher: RelayLauncher
) -> None:
    relay, children = await start_split(launcher, tmp_path, upstream)
    before, mark = await send_then_kill(relay, children, 0)
    reading = await relay.wait_for_event(
        "relay.reading", after=mark, where=of_process(0), timeout=START_TIMEOUT
    )
    await relay.wait_for_event(
        "relay.listening", after=mark, where=of_process(1), timeout=START_TIMEOUT
    )
    # Whether or not their rows were written before the kill, all 20 are taken up again.
    assert reading["resumed"] == len(before)
    now = child_pids(relay.pid)
    assert len(now) == 2 and not set(now) & set(children), (children, now)
    assert [p for p in children if is_running(p)] == []
    await send_then_deliver_all(relay, upstream, before)


async def test_a_reading_process_before_queue_or_on_postgresql_is_refused(tmp_path: Path) -> None:
    for changes, problem in (
        ({"server": {"reading_process": True, "mode": "before-queue"}}, "after-queue"),
        (
            {
                "server": {"reading_process": True},
                "store": {"backend": "postgresql", "dsn": "postgresql://relay@db/smtpguard"},
            },
            "store.backend: sqlite",
        ),
    ):
        config = write_config(tmp_path, changes)
        result = await run_smtpguard("serve", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert problem in result.stderr, result.stderr
