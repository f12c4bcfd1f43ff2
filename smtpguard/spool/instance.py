"""One relay per data folder, and the name its leases go by.

A relay's recovery releases the claims it left when it died. That is only
safe when no other live relay could hold those claims: so `smtpguard serve`
holds an exclusive lock on its data folder for as long as it runs (a second
relay pointed at the same folder refuses to start instead of releasing the
first one's claims), and the leases it takes in a shared PostgreSQL store
are named after the host and the folder, not the process. A relay restarted
after a crash then takes its own unfinished work back at once instead of
waiting out the leases of the process it replaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from smtpguard.spool.files import make_private_dir

LOCK_NAME = "relay.lock"


class DataFolderInUse(Exception):
    """Another relay runs on this data folder: the message says which folder and pid."""


def instance_owner(data_dir: Path) -> str:
    """The lease owner of the relay serving `data_dir` on this host."""
    return f"{socket.gethostname()}:{data_dir.resolve()}"


class DataFolderLock:
    """An flock on `<data_dir>/relay.lock`, released by the kernel when the process dies."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        make_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataFolderInUse(
                f"{self.path.parent} is in use by another smtpguard relay (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
