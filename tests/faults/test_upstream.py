"""The upstream misbehaves at random (seeded) while clients send.

The sink refuses connections for a while now and then (it stops listening
and closes what is open), and per transaction it may answer 451 at RCPT or at
the end of DATA, cut the connection at the end of DATA, say nothing until the
relay's upstream timeout has passed (keeping nothing, or keeping the message
and answering late), or refuse the message for good with 554. Every 4xx,
drop and timeout must be retried until the message is delivered; every 5xx
must end in a bounce to the sender. The only duplicates allowed are copies
the sink kept after the relay had timed out (at least once).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from tests.faults.conftest import MakeSink
from tests.faults.ledger import (
    Fault,
    FaultPlan,
    Kind,
    Ledger,
    Load,
    Runs,
    drain,
    integrity,
    settle,
    write_fault_config,
)
from tests.processes import RelayLauncher

SEED = 2207
DOWNS = 5  # times the upstream goes away while clients send
UPSTREAM_TIMEOUT = 1.0


async def test_upstream_faults_are_retried_or_bounced_and_nothing_is_lost(
    tmp_path: Path, launcher: RelayLauncher, make_sink: MakeSink
) -> None:
    rng = random.Random(SEED)
    plan = FaultPlan(
        rng=random.Random(SEED + 1),
        rcpt={Fault.TEMPFAIL: 0.06, Fault.STALL: 0.02},
        data={
            Fault.TEMPFAIL: 0.08,
            Fault.PERMFAIL: 0.04,
            Fault.DROP: 0.06,
            Fault.STALL: 0.02,
            Fault.LATE: 0.02,
        },
        stall=UPSTREAM_TIMEOUT + 0.5,
    )
    sink = make_sink(plan)
    await sink.open()
    config = write_fault_config(tmp_path, {"upstream": {"timeout": f"{UPSTREAM_TIMEOUT:g}s"}})
    runs = Runs(launcher, config, tmp_path / "data", sink)
    ledger = Ledger(SEED)
    await runs.start()
    load = Load(ledger, runs.port, senders=3, limit=1200, pause=0.02)
    load.start()

    for _ in range(DOWNS):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        await sink.go_down()  # connections refused, open ones closed
        await asyncio.sleep(rng.uniform(0.2, 0.8))
        await sink.open()
    await asyncio.sleep(0.5)
    await load.stop()
    # The faults go on while the relay catches up: it must keep retrying.
    await drain(ledger, sink, runs, timeout=45)
    await runs.stop()
    await runs.start()
    await drain(ledger, sink, runs, timeout=15)
    await runs.stop()
    report = await settle("upstream", ledger, sink, runs, in_flight_limit=0)
    print(report.line())

    assert report.problems == [], (report.line(), report.problems[:20])
    # A 4xx (or a broken session) means not stored: such a message never arrives.
    assert report.unanswered_arrived == 0, report.line()
    assert report.duplicated == report.late_explained, report.line()
    assert report.accepted == report.sent >= 300, report.line()  # the relay's side never failed
    refused = {t for t, s in ledger.accepted().items() if s.draft.kind is Kind.NORMAL} & set(
        sink.handler.refused
    )
    assert refused and report.bounced >= len(refused), report.line()
    for fault in ("rcpt-4xx", "rcpt-stall", "data-4xx", "data-5xx", "data-drop", "data-late"):
        assert report.injected[fault] > 0, (fault, report.line())
    assert report.injected["down"] == DOWNS, report.line()
    assert report.hold_notices_missing == 0, report.line()
    assert integrity(runs.data_dir) == "ok"
