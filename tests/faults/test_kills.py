"""SIGKILL at random moments while clients send and the relay delivers.

The kills come, in turn, from a timer; from the sink at the moment it keeps
a copy (just before or after its 250 goes back: a delivery has happened that
the relay has not recorded yet); a few milliseconds after the sink refuses a
recipient for good (the relay is recording the bounce and storing its DSN);
and as soon as the relay logs a bounce, or just after it logs a verdict (it
is recording a hold or refusal and storing the notice). With one delivery
worker, each kill can leave at most one delivery unrecorded, so duplicates
are at most the kills that had something in flight.

The same runs again with `server.processes: 2`, every kill aimed at the parent
(the pid the launcher started): its two relay processes must die with it
(PR_SET_PDEATHSIG) before the next run starts. Each process has its own
delivery queue with `upstream.max_connections` workers, and a worker holds at
most one outcome between the upstream's reply and its commit; the kernel
kills both processes as the parent dies, within the same instant as far as a
delivery is concerned. So one kill can leave up to processes x max_connections
= 2 deliveries (or 5xx refusals) unrecorded, each sent again by the next run:
the per-kill bound is 2, and every duplicate must still be one of those. Two
processes delivering the same message (a claim that is not exclusive) is not
in that window: the second copy comes from a run that recorded the first, and
`settle` reports it as unexplained.

And with `server.reading_process`: the parent, an accepting process that only
writes spool files and hands them over, and the reading process that reads and
delivers them (and alone writes the database). Only the reading process
delivers, so the per-kill bound is one again; a message handed over but not
read when the kill came is read by the next run, from its spool file.

And once more with the store on PostgreSQL (a throwaway server, tests/pg.py;
one relay process): the same kills, the same per-kill bound of one. There the
message bytes are in the database (committed before the 250), and the relay's
leases are named after its host and data folder (smtpguard/spool/instance.py),
so each restart on the same folder takes back at once what the killed run was
scanning or delivering: a lease left to run out (600 s) would leave the
message unfinished past the drain's 30 s, and the test would fail. There are
no spool files to count and no SQLite file to check: PostgreSQL keeps the
bytes in its tables and checks its own storage.

Regression test: a kill between the commit of a bounce (a 5xx from the
upstream, or a policy refusal) and the storing of its DSN used to lose the
DSN, and a kill between the commit of a hold and the storing of the sender's
hold notice lost the notice; both are now stored first (sent again, rather
than never, if a kill comes in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from pathlib import Path

import pytest

from tests import pg
from tests.faults.conftest import MakeSink
from tests.faults.ledger import (
    Ledger,
    Load,
    Runs,
    drain,
    integrity,
    settle,
    write_fault_config,
)
from tests.processes import RelayLauncher

# The throwaway PostgreSQL server's fixture, for the postgresql case (asked for by name:
# the SQLite cases neither start the server nor need its binaries).
pg_cluster = pg.pg_cluster

SEED = 1105
KILLS = 12
MAX_CONNECTIONS = 1  # delivery workers per relay process


@pytest.mark.parametrize(
    ("backend", "processes", "reading_process"),
    [("sqlite", 1, False), ("sqlite", 2, False), ("sqlite", 1, True), ("postgresql", 1, False)],
    ids=["one-process", "two-processes", "reading-process", "postgresql"],
)
async def test_sigkill_at_random_moments_loses_and_duplicates_nothing_beyond_the_window(
    tmp_path: Path,
    launcher: RelayLauncher,
    make_sink: MakeSink,
    request: pytest.FixtureRequest,
    backend: str,
    processes: int,
    reading_process: bool,
) -> None:
    rng = random.Random(SEED)
    sink = make_sink(None)
    await sink.open()
    changes: dict[str, dict[str, object]] = {"upstream": {"max_connections": MAX_CONNECTIONS}}
    if processes > 1 or reading_process:
        changes["server"] = {"processes": processes, "reading_process": reading_process}
    dsn: str | None = None
    if backend == "postgresql":
        cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
        dsn = cluster.dsn(await cluster.create_database())  # a database of its own, empty
        changes["store"] = {"backend": "postgresql", "dsn": dsn, "data_dir": "data"}
    config = write_fault_config(tmp_path, changes)
    children = processes + int(reading_process)
    runs = Runs(launcher, config, tmp_path / "data", sink, processes=children, dsn=dsn)
    ledger = Ledger(SEED)
    await runs.start()
    load = Load(ledger, runs.port, senders=3, limit=5000, pause=0.01)
    load.start()

    loop = asyncio.get_running_loop()
    for number in range(KILLS):
        await asyncio.sleep(rng.uniform(0.4, 1.2))
        relay = runs.current
        assert relay is not None
        mode = number % 4
        if mode == 0:  # a timer
            await runs.kill()
            await runs.start()
            continue
        if mode == 3:  # as soon as the relay logs a bounce, or just after a verdict
            bounce = number % 8 == 3
            mark = len(relay.events)
            with contextlib.suppress(AssertionError):  # none came: killed all the same
                name = "message.bounced" if bounce else "message.verdict"
                await relay.wait_for_event(name, after=mark, timeout=5)
            if not bounce:
                await asyncio.sleep(rng.uniform(0.0, 0.01))  # the verdict is being recorded
            await runs.kill()
            await runs.start()
            continue
        pid = relay.pid
        delay = rng.uniform(0.0, 0.01) if mode == 2 else rng.choice([0.0, rng.uniform(0, 0.01)])

        def kill_soon(*_: object, pid: int = pid, delay: float = delay) -> None:
            sink.handler.on_keep = sink.handler.on_refuse = None
            if delay:
                loop.call_later(delay, os.kill, pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)  # before the sink's reply goes back

        if mode == 1:  # as the sink keeps a copy
            sink.handler.on_keep = kill_soon
        else:  # just after the sink refuses a recipient for good
            sink.handler.on_refuse = kill_soon
        try:
            await relay.wait_exit(timeout=5)
        except TimeoutError:  # no such moment came: kill it anyway
            sink.handler.on_keep = sink.handler.on_refuse = None
            await runs.kill()
        else:
            await runs.kill(signalled=True)
        await runs.start()
    await asyncio.sleep(rng.uniform(0.5, 1.0))
    await load.stop()

    # The reading process runs at nice +10: on a busy machine it drains more slowly.
    await drain(ledger, sink, runs, timeout=60 if reading_process else 30)
    await runs.stop()
    fault = "sigkill" if processes == 1 else f"sigkill, {processes} processes"
    if reading_process:
        fault += ", reading process"
    if backend != "sqlite":
        fault += f", {backend}"
    # Every process that delivers may have its connections' messages in flight.
    in_flight = (1 if reading_process else processes) * MAX_CONNECTIONS
    report = await settle(fault, ledger, sink, runs, in_flight_limit=in_flight)
    print(report.line())

    assert report.problems == [], (report.line(), report.problems[:20])
    # Only the parent was killed: no relay process died under a running parent.
    assert [e for relay in runs.runs for e in relay.named("relay.process_died")] == []
    assert report.kills == KILLS
    assert report.accepted >= 100, report.line()
    assert report.held > 0 and report.bounced > 0 and report.rejected > 0, report.line()
    assert report.hold_notices_missing == 0, report.line()
    if backend != "sqlite":
        # PostgreSQL keeps the message bytes in the database, not in spool files, and
        # checks its own storage: no store file to check, no files to be left behind.
        return
    assert integrity(runs.data_dir) == "ok"
    # A kill between a message's last commit and its file's removal leaves the file;
    # the restart after it removes it (regression: they used to stay for good).
    assert report.spare_files == 0, report.line()
