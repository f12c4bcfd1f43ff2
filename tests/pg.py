"""A throwaway PostgreSQL server for the tests: initdb in a temp folder, pg_ctl start.

The cluster listens on a free loopback port (and a unix socket in its own
folder), trusts local connections, and is stopped and deleted when the test
session ends. PostgreSQL refuses to run as root, so as root the server runs as
the `postgres` OS user (there whenever Debian's postgresql package is). Tests
are skipped, saying why, only when the server binaries are not installed.

Import the fixtures into a conftest.py or a test module:
`from tests.pg import pg_cluster, pg_dsn  # noqa: F401`.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

USER = "smtpguard"
_names = itertools.count(1)


def find_bindir() -> Path | None:
    """Debian keeps initdb and pg_ctl under /usr/lib/postgresql/N/bin, off PATH."""
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    candidates.sort(key=lambda p: int(Path(p).parent.parent.name), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway cluster; `dsn(name)` is a libpq URL to one of its databases."""

    folder: Path
    port: int
    bindir: Path
    run_as: list[str]

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A new, empty database; its name."""
        name = f"t{os.getpid()}_{next(_names)}"
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return name

    def stop(self) -> None:
        subprocess.run(
            [
                *self.run_as,
                str(self.bindir / "pg_ctl"),
                *("-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"),
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster(bindir: Path, *, fsync: bool = False) -> Cluster:
    """initdb and start a cluster in a new temp folder; raises if it does not come up.

    `fsync=False` (tests): nothing a test can observe depends on surviving a power cut.
    """
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="smtpguard-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")  # KeyError: no such user
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    try:
        subprocess.run(
            [
                *run_as,
                str(bindir / "initdb"),
                *("-D", str(data), "-U", USER, "--auth=trust"),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        for attempt in range(5):
            port = _free_port()
            options = (
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
                f" -c fsync={'on' if fsync else 'off'} -c max_connections=200"
                " -c shared_buffers=64MB"
            )
            started = subprocess.run(
                [
                    *run_as,
                    str(bindir / "pg_ctl"),
                    *("-D", str(data), "-o", options),
                    *("-l", str(folder / "server.log"), "-w", "-t", "60", "start"),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if started.returncode == 0:
                return Cluster(folder, port, bindir, run_as)
            if attempt == 4:
                log = (folder / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"pg_ctl start failed: {started.stderr}\n{log}")
            time.sleep(0.2)  # the port was taken meanwhile: another one
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


_shared: list[Cluster] = []
_users = 0


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One cluster for the whole session, however many modules import this fixture."""
    global _users
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: "
            "install Debian's postgresql package to run the PostgreSQL store tests"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` OS user to run PostgreSQL")
    if not _shared:
        _shared.append(start_cluster(bindir))
    _users += 1
    try:
        yield _shared[0]
    finally:
        _users -= 1
        if _users == 0:
            with contextlib.suppress(Exception):
                _shared.pop().stop()


@pytest.fixture
async def pg_dsn(pg_cluster: Cluster) -> str:
    """A libpq URL to a database of its own for this test, empty (no schema yet)."""
    return pg_cluster.dsn(await pg_cluster.create_database())
