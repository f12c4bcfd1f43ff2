"""The register key: created once, readable by the relay's user only.

Every value in a register is an HMAC-SHA256 under this key, so the key is
what stands between a copied register and a dictionary attack on children's
names (names and dates of birth are guessable; keyed hashes are not). A key
file that group or others can read, or that another user owns (and so can
replace), is refused rather than used.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

KEY_BYTES = 32
_CHECK = b"smtpguard-edm-key-check"


class EdmError(ValueError):
    """A key, register or export that cannot be used; the message names the file, never a value."""


def create_key(path: Path) -> bytes:
    """Write 32 random bytes to a new file, created 0600: never readable by others, even briefly."""
    key = secrets.token_bytes(KEY_BYTES)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise EdmError(f"{path}: key file exists already; it is never overwritten") from exc
    except OSError as exc:
        raise EdmError(f"{path}: cannot create key file: {exc.strerror}") from exc
    try:
        written = 0
        while written < KEY_BYTES:
            written += os.write(fd, key[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return key


def read_key(path: Path) -> bytes:
    """The key, after checking who could have read or replaced it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise EdmError(
            f"{path}: key file not found; create one with `smtpguard edm keygen {path}`"
        ) from exc
    except OSError as exc:
        raise EdmError(f"{path}: cannot read key file: {exc.strerror}") from exc
    try:
        # fstat on the open file: the checks are about the file actually read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EdmError(f"{path}: key file is not a regular file")
        if info.st_uid != os.geteuid():
            raise EdmError(
                f"{path}: key file is owned by uid {info.st_uid}, not by the user running "
                f"smtpguard (uid {os.geteuid()}); run: chown {os.geteuid()} {path} && "
                f"chmod 600 {path}"
            )
        if info.st_mode & 0o077:
            raise EdmError(
                f"{path}: key file is readable or writable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise EdmError(
            f"{path}: key file must hold exactly {KEY_BYTES} bytes; "
            "create a new one with `smtpguard edm keygen` and rebuild the registers"
        )
    return data


def key_check(key: bytes) -> str:
    """A fingerprint stored in each register, so a register hashed under another key is refused."""
    return hmac.digest(key, _CHECK, "sha256").hex()


def _fsync_dir(folder: Path) -> None:
    """Make a new directory entry durable: a key lost in a crash orphans every register."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Keyed:
    """HMAC-SHA256 under the register key, with a purpose prefix per kind of value.

    The prefix keeps a name's hash from ever equalling an address's or a
    token's, so one kind of entry can never be mistaken for another.
    """

    TOKEN = b"tok"  # one token: the matcher's cheap first filter
    NAME = b"name"  # a name's tokens, sorted
    ORDERED = b"ord"  # a name's tokens as registered (lower-case text must keep that order)
    RECORD = b"rec"  # a name's sorted tokens with the date of birth
    MAIL = b"mail"  # an email address
    ADDRESS = b"addr"  # address tokens in order
    POSTCODE = b"pc"  # a postcode without its space
    LABEL = b"label"  # a protected address's label
    ID = b"id"  # an entry's identity

    __slots__ = ("_key", "_token")

    def __init__(self, key: bytes) -> None:
        self._key = key
        # Keyed once: copying this state saves a third of the cost of each token's HMAC.
        self._token = hmac.new(key, self.TOKEN + b"\0", "sha256")

    def token(self, token: str) -> bytes:
        mac = self._token.copy()
        mac.update(token.encode())
        return mac.digest()[:8]

    def value(self, purpose: bytes, text: str) -> bytes:
        return hmac.digest(self._key, purpose + b"\0" + text.encode(), "sha256")[:16]
