"""The data folder's disk fills up while clients send and the upstream is down.

The data folder is a small tmpfs of its own. A filler file leaves a little
room; clients send until the relay turns them away: 452 once free space is
under `store.min_free_disk`, 451 if a spool write runs out of space before
the relay has noticed. Then the disk is filled to the last byte (spool files
and SQLite both hit ENOSPC) while the relay keeps retrying deliveries. The
relay must never answer 250 for a message it could not store, must not
crash, and once the filler is deleted and the upstream is back it must accept
and deliver again, with a database that passes `PRAGMA integrity_check`.

Regression test: everything 250'd must be delivered before the relay is
restarted. Messages whose index row, scan or delivery record could not be
written on the full disk used to wait, unqueued, for the next restart.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import MakeSink
from tests.faults.ledger import (
    Answer,
    Ledger,
    Load,
    Runs,
    drain,
    free_bytes,
    integrity,
    settle,
    write_fault_config,
)
from tests.processes import RelayLauncher

SEED = 3301
DISK = 8 * 1024 * 1024
MIN_FREE = 512 * 1024
ROOM = 3 * 1024 * 1024  # left free by the first filler
CHUNK = 64 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs as the data folder; requested before `launcher`, so it is
    unmounted after the relays are killed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "data"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, size: int | None) -> int:
    """Write `size` bytes to a new file (None: until the disk is full); returns bytes written."""
    written = 0
    chunk = b"\0" * CHUNK
    with open(path, "wb", buffering=0) as filler:
        while size is None or written < size:
            part = chunk if size is None else chunk[: min(CHUNK, size - written)]
            try:
                written += filler.write(part) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(part) == 1 or size is not None:
                    break
                chunk = chunk[: len(chunk) // 2]  # down to the last byte
    return written


async def test_disk_full_gets_4xx_never_a_false_250_and_the_relay_recovers(
    tmp_path: Path, small_disk: Path, launcher: RelayLauncher, make_sink: MakeSink
) -> None:
    data_dir = small_disk
    sink = make_sink(None)  # not listening yet: the upstream is down
    config = write_fault_config(tmp_path, {"store": {"min_free_disk": f"{MIN_FREE}B"}})
    runs = Runs(launcher, config, data_dir, sink)
    await runs.start()
    fillers = [data_dir / "filler-1", data_dir / "filler-2"]
    await asyncio.to_thread(fill, fillers[0], free_bytes(data_dir) - ROOM)
    ledger = Ledger(SEED, sizes=(30_000, 90_000), large_share=0.0)
    load = Load(ledger, runs.port, senders=3, limit=2000)
    load.start()

    # 1. Until the relay has turned clients away for a while.
    def turned_away() -> int:
        return len(ledger.answered(Answer.TEMPFAIL))

    await load.wait_for(lambda: turned_away() >= 30, timeout=30, what="30 refusals")
    filled = ledger.counts()
    # 2. To the last byte, while the relay retries deliveries (the upstream is still down).
    await asyncio.to_thread(fill, fillers[1], None)
    full_at = len(ledger.sent)
    await asyncio.sleep(3)
    assert runs.current is not None and runs.current.returncode is None
    while_full = ledger.sent[full_at:]
    # 3. Room again, and the upstream back: the relay must accept and deliver again.
    for filler in fillers:
        filler.unlink()
    await sink.open()
    freed_at = len(ledger.sent)
    await load.wait_for(
        lambda: sum(s.outcome.answer is Answer.ACCEPTED for s in ledger.sent[freed_at:]) >= 30,
        timeout=20,
        what="30 messages accepted after the disk was freed",
    )
    await load.stop()

    await drain(ledger, sink, runs, timeout=40)
    await runs.stop()
    await runs.start()
    await drain(ledger, sink, runs, timeout=20)
    await runs.stop()
    report = await settle("disk-full", ledger, sink, runs, in_flight_limit=0)
    codes = sorted({(s.outcome.code, s.outcome.stage) for s in ledger.sent})
    report.extra.update(
        before_full=dict(filled),
        while_full=dict(Counter(s.outcome.answer.value for s in while_full)),
        codes=codes,
    )
    print(report.line())

    assert report.problems == [], (report.line(), report.problems[:20])
    # A 4xx (or a broken session) means not stored: such a message never arrives.
    assert report.unanswered_arrived == 0, report.line()
    assert report.duplicated == 0, report.line()
    assert set(report.answers) <= {Answer.ACCEPTED.value, Answer.TEMPFAIL.value}, report.line()
    assert {code for code, _ in codes} <= {250, 451, 452}, report.line()
    assert (452, "MAIL") in codes, report.line()
    assert while_full and all(s.outcome.answer is Answer.TEMPFAIL for s in while_full)
    assert integrity(data_dir) == "ok"
    # A row that cannot be written is reported once, not at every retry (regression:
    # ~1,600 store.index_failed lines in one run).
    for relay in runs.runs:
        failed = Counter(e["id"] for e in relay.named("store.index_failed"))
        assert all(n == 1 for n in failed.values()), failed.most_common(3)
