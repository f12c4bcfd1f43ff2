"""The spool folder: one file per message.

A message file is written and fsync'd; its folder entry becomes durable when
the folder itself is fsync'd, which the store does once per batch of new
messages before it commits their rows. The row commit is the moment a
message exists: a file without a row (a crash mid-write) was never
acknowledged, and is removed on the next start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
_SUFFIX = ".eml"
_TMP_SUFFIX = ".tmp"


def make_private_dir(path: Path) -> None:
    """Create a folder only the service user can read, and tighten an existing one."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


class SpoolFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        make_private_dir(path)

    def _final(self, message_id: str) -> Path:
        return self.path / f"{message_id}{_SUFFIX}"

    def write(self, message_id: str, content: bytes) -> None:
        """Write and fsync the file; the caller fsyncs the folder before acknowledging."""
        path = self._final(message_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def sync(self) -> None:
        """Make renames and unlinks in the folder durable."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, message_id: str) -> bytes:
        return self._final(message_id).read_bytes()

    def exists(self, message_id: str) -> bool:
        return self._final(message_id).exists()

    def remove(self, message_id: str) -> None:
        self._final(message_id).unlink(missing_ok=True)

    def message_ids(self) -> Iterator[str]:
        for entry in os.scandir(self.path):
            if entry.name.endswith(_SUFFIX):
                yield entry.name[: -len(_SUFFIX)]

    def remove_partial_writes(self) -> int:
        """Drop `.tmp` files (older versions wrote through them): never acknowledged."""
        removed = 0
        for entry in os.scandir(self.path):
            if entry.name.endswith(_TMP_SUFFIX):
                os.unlink(entry.path)
                removed += 1
        return removed

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize
