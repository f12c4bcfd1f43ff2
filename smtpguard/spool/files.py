"""The spool folder: one self-describing file per message, the durable truth.

A spool file is one line of JSON describing the envelope, then the message
bytes exactly as they will be relayed. It is written to `<id>.tmp`, fsync'd,
renamed to `<id>.eml` (so a file under its final name is always whole), and
the folder is fsync'd to make the rename durable. Only then may the listener
answer 250.

The database is an index over these files: if it loses a row (a power cut
after a commit that was not fsync'd), the row is rebuilt from the file on the
next start, and the message is seen through again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpguard.envelope import Envelope

FILE_MODE = 0o600
DIR_MODE = 0o700
_SUFFIX = ".eml"
_TMP_SUFFIX = ".tmp"
_FORMAT = 1


def make_private_dir(path: Path) -> None:
    """Create a folder only the service user can read, and tighten an existing one."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


@dataclass(frozen=True)
class SpoolHeader:
    """What a spool file says about its message, enough to rebuild its record."""

    envelope: Envelope
    origin: str
    expires_at: float

    def encode(self) -> bytes:
        e = self.envelope
        fields: dict[str, Any] = {
            "format": _FORMAT,
            "sender": e.sender,
            "recipients": list(e.recipients),
            "client_address": e.client_address,
            "client_name": e.client_name,
            "received_at": e.received_at,
            "smtputf8": e.smtputf8,
            "body_8bit": e.body_8bit,
            "tls": e.tls,
            "mail_options": list(e.mail_options),
            "origin": self.origin,
            "expires_at": self.expires_at,
        }
        return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> SpoolHeader:
        fields = json.loads(line)
        envelope = Envelope(
            sender=fields["sender"],
            recipients=tuple(fields["recipients"]),
            client_address=fields["client_address"],
            client_name=fields["client_name"],
            received_at=fields["received_at"],
            smtputf8=fields["smtputf8"],
            body_8bit=fields["body_8bit"],
            tls=fields["tls"],
            mail_options=tuple(fields["mail_options"]),
        )
        return cls(envelope, fields["origin"], fields["expires_at"])


class SpoolFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        make_private_dir(path)
        # Kept open: the folder is fsync'd for every message.
        self._dir_fd: int | None = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _folder(self) -> int:
        if self._dir_fd is None:
            raise ValueError("spool folder is closed")
        return self._dir_fd

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _final(self, message_id: str) -> Path:
        return self.path / f"{message_id}{_SUFFIX}"

    def write(self, message_id: str, header: SpoolHeader, content: bytes) -> None:
        """Write the message durably: when this returns, a crash cannot lose it."""
        final = self._final(message_id)
        if final.exists():
            raise FileExistsError(f"spool file for {message_id} exists")
        tmp = self.path / f"{message_id}{_TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            chunks = [header.encode(), content]
            written = os.writev(fd, chunks)
            total = len(chunks[0]) + len(content)
            if written < total:  # a short write: finish it the slow way
                rest = memoryview(b"".join(chunks))[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, final)
        self.sync()

    def sync(self) -> None:
        """Make renames and unlinks in the folder durable."""
        os.fsync(self._folder())

    def read(self, message_id: str) -> bytes:
        """The message as it will be relayed (without the spool header)."""
        data = self._final(message_id).read_bytes()
        return data[data.index(b"\n") + 1 :]

    def read_header(self, message_id: str) -> SpoolHeader:
        with open(self._final(message_id), "rb") as spool_file:
            return SpoolHeader.decode(spool_file.readline())

    def remove(self, message_id: str) -> None:
        self._final(message_id).unlink(missing_ok=True)

    def message_ids(self) -> Iterator[str]:
        for entry in os.scandir(self.path):
            if entry.name.endswith(_SUFFIX):
                yield entry.name[: -len(_SUFFIX)]

    def remove_partial_writes(self) -> int:
        """Drop `.tmp` files left by a crash mid-write: those were never acknowledged."""
        removed = 0
        for entry in os.scandir(self.path):
            if entry.name.endswith(_TMP_SUFFIX):
                os.unlink(entry.path)
                removed += 1
        return removed

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize
