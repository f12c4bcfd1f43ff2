"""The spool folder: one self-describing file per message, the durable truth.

A spool file is one line of JSON describing the envelope, then the message
bytes exactly as they will be relayed. It is written to `<id>.tmp`, fsync'd,
renamed to `<id>.eml` (so a file under its final name is always whole), and
the folder is fsync'd to make the rename durable. Only then may the listener
answer 250.

The database is an index over these files: if it loses a row (a power cut
after a commit that was not fsync'd), the row is rebuilt from the file on the
next start, and the message is seen through again.

With a `SpoolCipher` the same bytes are written encrypted (see `cipher`);
plain files already in the folder are still read, and `rekey` rewrites a file
under the current key without ever leaving it partial or bringing back one
the relay has removed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from smtpguard.envelope import Envelope
from smtpguard.spool.cipher import MAGIC_LINE_MAX, SpoolCipher, encrypted_key_id, unseal

FILE_MODE = 0o600
DIR_MODE = 0o700
_SUFFIX = ".eml"
_TMP_SUFFIX = ".tmp"
# Ends in .tmp, so a rewrite cut short by a crash is cleared like any partial write.
_REKEY_SUFFIX = ".rekey.tmp"
_FORMAT = 1
_RENAME_EXCHANGE = 2  # linux/fs.h


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


class Rekeyed(Enum):
    """What `SpoolFolder.rekey` did with one file."""

    REWRITTEN = "rewritten"
    CURRENT = "current"  # already under the current key
    GONE = "gone"  # finished and removed by the relay meanwhile


class SpoolFolder:
    def __init__(self, path: Path, cipher: SpoolCipher | None = None) -> None:
        self.path = path
        self.cipher = cipher  # None: new files are written plain
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
        if self.cipher is None:
            chunks = [header.encode(), content]
        else:
            chunks = self.cipher.seal(message_id, header.encode() + content)
        _write_new(tmp, chunks)
        os.rename(tmp, final)
        self.sync()

    def sync(self) -> None:
        """Make renames and unlinks in the folder durable."""
        os.fsync(self._folder())

    def _read_plain(self, message_id: str) -> bytes:
        """The whole file in its plain form (decrypted if it is encrypted)."""
        return unseal(self.cipher, message_id, self._final(message_id).read_bytes())

    def read(self, message_id: str) -> bytes:
        """The message as it will be relayed (without the spool header)."""
        data = self._read_plain(message_id)
        return data[data.index(b"\n") + 1 :]

    def read_header(self, message_id: str) -> SpoolHeader:
        with open(self._final(message_id), "rb") as spool_file:
            line = spool_file.readline()
        if encrypted_key_id(line) is not None:
            # Only recovery reads headers, so decrypting the whole file here is fine.
            plain = self._read_plain(message_id)
            line = plain[: plain.index(b"\n") + 1]
        return SpoolHeader.decode(line)

    def key_id_of(self, message_id: str) -> str | None:
        """The key a file is encrypted under (read from its first bytes), None if plain."""
        with open(self._final(message_id), "rb") as spool_file:
            return encrypted_key_id(spool_file.readline(MAGIC_LINE_MAX))

    def rekey(self, message_id: str) -> Rekeyed:
        """Rewrite one file under the current key, durably; safe while the relay runs.

        The new file replaces the old one only if the old one is still there
        (an atomic exchange of names), so a message the relay finishes and
        removes meanwhile is not brought back.
        """
        if self.cipher is None:
            raise ValueError("rekey needs a cipher")
        final = self._final(message_id)
        try:
            data = final.read_bytes()
        except FileNotFoundError:
            return Rekeyed.GONE
        if self.cipher.is_current(data):
            return Rekeyed.CURRENT
        plain = unseal(self.cipher, message_id, data)
        SpoolHeader.decode(plain[: plain.index(b"\n") + 1])  # never re-encrypt a broken file
        tmp = self.path / f"{message_id}{_REKEY_SUFFIX}"
        tmp.unlink(missing_ok=True)  # left by a rekey that was killed
        _write_new(tmp, self.cipher.seal(message_id, plain))
        try:
            replaced = _replace_existing(self._folder(), tmp.name, final.name)
        finally:
            tmp.unlink(missing_ok=True)  # the old file after an exchange, or the unused new one
        self.sync()
        return Rekeyed.REWRITTEN if replaced else Rekeyed.GONE

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


def _write_new(tmp: Path, chunks: list[bytes]) -> None:
    """Create `tmp` (0600, never an existing file) holding `chunks`, fsync'd."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        written = os.writev(fd, chunks)
        if written < sum(len(chunk) for chunk in chunks):  # a short write: finish it slowly
            rest = memoryview(b"".join(chunks))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)


def _renameat2() -> Any:
    """glibc's renameat2, or None where there is none (not Linux, old libc)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    path = ctypes.c_char_p
    function.argtypes = (ctypes.c_int, path, ctypes.c_int, path, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def _replace_existing(dir_fd: int, new: str, old: str) -> bool:
    """Put `new` in place of `old` only if `old` still exists; False if it is gone.

    With RENAME_EXCHANGE the check and the replacement are one step, and `new`
    then names the old file. Without it (another OS, a filesystem that lacks
    it) the check comes just before the rename: a file the relay removes in
    that instant comes back, under a record that says finished, until an
    administrator deletes it.
    """
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(dir_fd, os.fsencode(new), dir_fd, os.fsencode(old), _RENAME_EXCHANGE) == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.ENOENT:
            if not _exists(old, dir_fd):
                return False
            # The new file went (the relay's start clears *.tmp): the old one is not rewritten.
            raise FileNotFoundError(code, os.strerror(code), new)
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), old)
    if not _exists(old, dir_fd):
        return False
    os.rename(new, old, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return True


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
