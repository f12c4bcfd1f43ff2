"""The store tests run against every backend: SQLite, and a real PostgreSQL server.

A test that asks for `new_store` (or for a fixture built on it, such as `store`)
runs once per backend; `@pytest.mark.sqlite_only` keeps a test about SQLite's
own files and schema to SQLite.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from smtpguard.spool import Store, open_store
from smtpguard.spool.cipher import SpoolCipher
from tests.pg import pg_cluster, pg_dsn  # noqa: F401  (fixtures)

BACKENDS = ("sqlite", "postgresql")

# Opens one more Store object on the test's store (same data folder, or same database).
StoreFactory = Callable[..., Store]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: about SQLite's own files or schema; not run on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("backend", ["sqlite"] if only else list(BACKENDS))


@pytest.fixture
def new_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreFactory:
    """Every call opens another Store object on the same store (not yet `open()`ed)."""
    dsn = request.getfixturevalue("pg_dsn") if backend == "postgresql" else None

    def make(cipher: SpoolCipher | None = None, owner: str | None = None) -> Store:
        return open_store(backend, tmp_path / "data", cipher, dsn=dsn, owner=owner)

    return make
