"""Fixtures of the fault tests: the relay runs as a real process against a `LedgerSink`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.faults.ledger import FaultPlan, LedgerSink
from tests.processes import RelayLauncher

MakeSink = Callable[[FaultPlan | None], LedgerSink]


@pytest.fixture
async def launcher(tmp_path: Path) -> AsyncIterator[RelayLauncher]:
    relays = RelayLauncher(tmp_path)
    yield relays
    await relays.kill_all()


@pytest.fixture
async def make_sink(launcher: RelayLauncher) -> AsyncIterator[MakeSink]:
    """A sink on a reserved port (down until opened); stopped after the relays are killed."""
    sinks: list[LedgerSink] = []

    def make(plan: FaultPlan | None = None) -> LedgerSink:
        sink = LedgerSink(plan)
        sinks.append(sink)
        return sink

    yield make
    await launcher.kill_all()
    for sink in sinks:
        await sink.stop()
