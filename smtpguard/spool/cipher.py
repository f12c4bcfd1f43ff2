"""Encryption at rest of spool files: AES-256-GCM under a key file.

Held mail can sit on the relay for two weeks; a copied disk or backup of the
data folder must not give away what social workers sent. When
`store.encryption` is configured, each spool file is

    SMTPGUARD-ENCRYPTED 1 <key id>\\n  nonce (12 bytes)  ciphertext + tag

where the ciphertext covers the whole plain spool file (header line and
message). The key id (first 8 bytes of SHA-256 of the key, hex) says which
key to use, so old keys can be kept for reading during a rotation. The
message id is the associated data: a file renamed to another id does not
decrypt, so one message's content can never be served as another's.

Files without the magic line are plain spool files and are read as before,
so a relay that turns encryption on keeps reading what it already holds.
Errors name files, message ids and key ids, never key material or content.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from smtpguard.config.model import StoreConfig

KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
MAGIC = b"SMTPGUARD-ENCRYPTED"
VERSION = 1
# The magic line is short; a plain file's first line (JSON) can be long, so look no further.
MAGIC_LINE_MAX = 64
_KEY_ID = re.compile(rb"[0-9a-f]{16}")


class SpoolKeyError(ValueError):
    """A key file that cannot be used, or a spool file whose key is not configured.

    The message names the file (or message id and key id) and the fix, never key bytes.
    """


class SpoolDecryptError(ValueError):
    """An encrypted spool file that fails authentication: altered, cut short, or renamed."""


def key_id(key: bytes) -> str:
    """A key's public name, written in every file it encrypts: safe to show and log."""
    return hashlib.sha256(key).digest()[:8].hex()


def encrypted_key_id(data: bytes) -> str | None:
    """The key id of an encrypted spool file (from its start), or None for a plain file."""
    if not data.startswith(MAGIC + b" "):
        return None
    end = data.find(b"\n", 0, MAGIC_LINE_MAX)
    parts = data[:end].split(b" ") if end > 0 else []
    if len(parts) != 3 or not parts[1].isdigit() or not _KEY_ID.fullmatch(parts[2]):
        raise SpoolDecryptError("spool file has a damaged encryption line")
    if int(parts[1]) != VERSION:
        raise SpoolDecryptError(
            f"spool file is encrypted in format {int(parts[1])}, which this smtpguard "
            f"does not know (it reads format {VERSION}); run the newer smtpguard"
        )
    return parts[2].decode()


class SpoolCipher:
    """The current key (encrypts new files) and older keys (decrypt only, during a rotation)."""

    __slots__ = ("_current", "_keys", "_magic", "key_id")

    def __init__(self, key: bytes, old_keys: Iterable[bytes] = ()) -> None:
        for candidate in (key, *old_keys):
            if len(candidate) != KEY_BYTES:
                raise SpoolKeyError(f"a spool key must be {KEY_BYTES} bytes")
        self.key_id = key_id(key)
        self._current = AESGCM(key)
        self._keys = {key_id(old): AESGCM(old) for old in old_keys}
        self._keys[self.key_id] = self._current
        self._magic = b"%s %d %s\n" % (MAGIC, VERSION, self.key_id.encode())

    @classmethod
    def from_files(cls, key_file: Path, old_key_files: Iterable[Path] = ()) -> SpoolCipher:
        """Read and check every key file; the first problem is raised as SpoolKeyError."""
        return cls(read_spool_key(key_file), [read_spool_key(p) for p in old_key_files])

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id this cipher can decrypt."""
        return frozenset(self._keys)

    def is_current(self, data: bytes) -> bool:
        """Whether a spool file (its first bytes suffice) is encrypted under the current key."""
        return data.startswith(self._magic)

    def seal(self, message_id: str, plain: bytes) -> list[bytes]:
        """The encrypted file as chunks for one writev: magic line, nonce, ciphertext."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return [self._magic, nonce, self._current.encrypt(nonce, plain, message_id.encode())]

    def open(self, message_id: str, data: bytes) -> bytes:
        """The plain spool file (header line and message) from an encrypted one."""
        kid = encrypted_key_id(data)
        if kid is None:
            raise SpoolDecryptError(f"spool file {message_id} is not encrypted")
        aead = self._keys.get(kid)
        if aead is None:
            raise SpoolKeyError(
                f"spool file {message_id} is encrypted under key {kid}, which is not "
                "configured: add that key's file to store.encryption.old_key_files "
                "(`smtpguard spool keygen` printed each key's id when it was made)"
            )
        body = memoryview(data)[data.index(b"\n") + 1 :]
        if len(body) < NONCE_BYTES + _TAG_BYTES:
            raise SpoolDecryptError(f"spool file {message_id} (key {kid}) is cut short")
        try:
            return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], message_id.encode())
        except InvalidTag:
            raise SpoolDecryptError(
                f"spool file {message_id} (key {kid}) does not decrypt: it was altered, "
                "cut short, or renamed from another message's file"
            ) from None


def unseal(cipher: SpoolCipher | None, message_id: str, data: bytes) -> bytes:
    """A spool file's plain form: decrypted if encrypted, as it is if plain."""
    kid = encrypted_key_id(data)
    if kid is None:
        return data
    if cipher is None:
        raise SpoolKeyError(
            f"spool file {message_id} is encrypted under key {kid}, but store.encryption "
            "is not configured: set store.encryption.key_file (or old_key_files) to that key"
        )
    return cipher.open(message_id, data)


def read_spool_key(path: Path) -> bytes:
    """A spool key, refused if others could read or replace it, or if it is the wrong size.

    The ownership and mode checks are the EDM key's (`detect.edm.key.read_key`);
    a missing or wrong-sized file gets a message with the spool's own fix.
    """
    from smtpguard.detect.edm.key import EdmError, read_key

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SpoolKeyError(
            f"{path}: spool key file not found; create one with `smtpguard spool keygen {path}`"
        ) from None
    except OSError as exc:
        raise SpoolKeyError(f"{path}: cannot read spool key file: {exc.strerror}") from None
    if stat.S_ISREG(info.st_mode) and info.st_size != KEY_BYTES:
        raise SpoolKeyError(
            f"{path}: spool key file must hold exactly {KEY_BYTES} bytes, not "
            f"{info.st_size}; restore it from backup (files under a lost key cannot be read)"
        )
    try:
        return read_key(path)
    except EdmError as exc:
        raise SpoolKeyError(f"spool key: {exc}") from None


def create_spool_key(path: Path) -> str:
    """Create a new 0600 key file (never overwriting one); its key id."""
    from smtpguard.detect.edm.key import EdmError, create_key

    try:
        return key_id(create_key(path))
    except EdmError as exc:
        raise SpoolKeyError(str(exc)) from None


def spool_cipher(store_config: StoreConfig) -> SpoolCipher | None:
    """The cipher `store.encryption` asks for, or None when spool files are written plain."""
    encryption = store_config.encryption
    if encryption is None:
        return None
    return SpoolCipher.from_files(encryption.key_file, encryption.old_key_files)
