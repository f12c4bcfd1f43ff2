"""The SQLite database is held locked by another process, several times.

A separate Python process opens smtpguard.db and holds `BEGIN EXCLUSIVE`
for a few seconds, again and again, while clients send and the relay
delivers; the last lock outlasts the relay's SQLite busy timeout (10 s), so
its writes fail rather than wait. The relay must keep answering (250: the
spool file is the durable step, not the database), and once the lock is gone
every 250'd message must end delivered, held or bounced, none twice (a
delivery whose outcome could not be recorded is recorded again, not sent
again).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

from tests.faults.conftest import MakeSink
from tests.faults.ledger import (
    Answer,
    Ledger,
    Load,
    Runs,
    drain,
    integrity,
    settle,
    write_fault_config,
)
from tests.processes import RelayLauncher, child_environment

SEED = 4409
LOCKS = (3.0, 3.0, 3.0, 12.0)  # the last one longer than the relay's busy_timeout

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
db.close()
"""


async def hold_lock(database: Path, seconds: float) -> tuple[float, float]:
    """Hold the database locked from another process; returns (locked, released) times."""
    locker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKER,
        str(database),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        env=child_environment(),
    )
    assert locker.stdout is not None
    try:
        async with asyncio.timeout(30 + seconds):
            assert await locker.stdout.readline() == b"locked\n"
            locked = time.monotonic()
            assert await locker.wait() == 0
    finally:
        if locker.returncode is None:
            locker.kill()
            await locker.wait()
    return locked, time.monotonic()


async def test_database_locked_by_another_process_relay_keeps_answering_and_loses_nothing(
    tmp_path: Path, launcher: RelayLauncher, make_sink: MakeSink
) -> None:
    rng = random.Random(SEED)
    sink = make_sink(None)
    await sink.open()
    config = write_fault_config(tmp_path)
    runs = Runs(launcher, config, tmp_path / "data", sink)
    ledger = Ledger(SEED)
    await runs.start()
    load = Load(ledger, runs.port, senders=2, limit=5000, pause=0.05)
    load.start()

    windows = []
    for seconds in LOCKS:
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        windows.append(await hold_lock(runs.data_dir / "smtpguard.db", seconds))
    await asyncio.sleep(1.0)
    await load.stop()

    await drain(ledger, sink, runs, timeout=40)
    await runs.stop()
    await runs.start()
    await drain(ledger, sink, runs, timeout=15)
    await runs.stop()
    report = await settle("db-lock", ledger, sink, runs, in_flight_limit=0)
    during = [s for s in ledger.sent if any(start <= s.outcome.at <= end for start, end in windows)]
    slowest = max(s.outcome.took for s in during)
    report.extra.update(
        locks=len(windows),
        answered_while_locked=len(during),
        accepted_while_locked=sum(s.outcome.answer is Answer.ACCEPTED for s in during),
        slowest_answer_while_locked=round(slowest, 2),
    )
    print(report.line())

    assert report.problems == [], (report.line(), report.problems[:20])
    # A 4xx (or a broken session) means not stored: such a message never arrives.
    assert report.unanswered_arrived == 0, report.line()
    assert report.duplicated == 0, report.line()
    assert set(report.answers) <= {Answer.ACCEPTED.value, Answer.TEMPFAIL.value}, report.line()
    # The relay kept answering, and mostly with 250, while the database was locked.
    assert report.extra["accepted_while_locked"] >= 20 * len(windows), report.line()
    assert slowest < 5, report.line()
    assert report.hold_notices_missing == 0, report.line()
    assert integrity(runs.data_dir) == "ok"
