"""Shared fixtures: a capture sink as upstream and an in-process relay on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from smtpguard.config import Overrides, load_config
from smtpguard.log import configure_logging
from smtpguard.processes import ProcessRole
from smtpguard.relay import RelayService
from tests.processes import RelayLauncher, ReservedSink
from tests.sink import CaptureSink

BASE_CONFIG: dict[str, Any] = {
    "server": {
        "hostname": "relay.test",
        "listen": "127.0.0.1:0",
        "allowed_clients": ["127.0.0.0/8", "::1/128"],
        "drain_timeout": "5s",
    },
    "upstream": {"host": "127.0.0.1", "port": 1, "timeout": "5s"},
    "delivery": {
        "retry_initial": "200ms",
        "retry_max": "1s",
        "poll_interval": "100ms",
        "postmaster": "postmaster@relay.test",
    },
    "store": {"data_dir": "data", "min_free_disk": "1MB"},
    "logging": {"level": "info", "format": "json"},
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, values in changes.items():
        if isinstance(values, dict):
            result.setdefault(section, {}).update(values)
        else:
            result[section] = values
    return result


@pytest.fixture(autouse=True)
def _structlog_defaults_after_each_test() -> Iterator[None]:
    """A command run in-process (cli.main) or a relay configures logging globally, bound
    to the stream pytest captured for that test; the next test starts from the defaults."""
    yield
    structlog.reset_defaults()


def write_config(tmp_path: Path, changes: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "smtpguard.yaml"
    path.write_text(yaml.safe_dump(merged(BASE_CONFIG, changes or {})), encoding="utf-8")
    return path


@pytest.fixture
async def sink() -> AsyncIterator[CaptureSink]:
    capture = CaptureSink()
    await capture.start()
    yield capture
    await capture.stop()


class RelayRunner:
    """Starts RelayService objects on the test's loop; stops them all at teardown."""

    def __init__(self, tmp_path: Path, sink: CaptureSink) -> None:
        self.tmp_path = tmp_path
        self.sink = sink
        self.services: list[RelayService] = []

    async def start(
        self,
        changes: dict[str, Any] | None = None,
        upstream_port: int | None = None,
        role: ProcessRole | None = None,
    ) -> RelayService:
        path = write_config(self.tmp_path, changes)
        port = self.sink.port if upstream_port is None else upstream_port
        overrides = Overrides(upstream=f"127.0.0.1:{port}")
        config = load_config(path, overrides)
        configure_logging(config.logging)
        service = RelayService(path, overrides, config, role)
        await service.start()
        self.services.append(service)
        return service

    async def stop_all(self) -> None:
        for service in self.services:
            if not service._stop.is_set():
                service._stop.set()
                await service.shutdown()
        self.services.clear()


@pytest.fixture
async def relays(tmp_path: Path, sink: CaptureSink) -> AsyncIterator[RelayRunner]:
    runner = RelayRunner(tmp_path, sink)
    yield runner
    await runner.stop_all()


@pytest.fixture
async def upstream() -> AsyncIterator[ReservedSink]:
    """The relay process's upstream: a capture sink on a reserved port, down until opened."""
    sink = ReservedSink()
    yield sink
    await sink.stop()


@pytest.fixture
async def launcher(tmp_path: Path, upstream: ReservedSink) -> AsyncIterator[RelayLauncher]:
    # Depends on `upstream` so relays are killed before the sink goes away.
    relays = RelayLauncher(tmp_path)
    yield relays
    await relays.kill_all()
