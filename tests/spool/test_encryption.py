"""Encryption at rest of spool files: what is on disk, what can read it, and key rotation.

Real files in tmp_path throughout: real key files (with their modes), a real
SQLite store and spool folder, `smtpguard spool` as a real subprocess, and
one relay end to end over SMTP.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from smtpguard.config import ConfigError, load_config
from smtpguard.envelope import Envelope
from smtpguard.spool import MessageState, Origin, SQLiteStore, Store, new_message_id
from smtpguard.spool import files as spool_files
from smtpguard.spool.cipher import (
    SpoolCipher,
    SpoolDecryptError,
    SpoolKeyError,
    create_spool_key,
    key_id,
    read_spool_key,
    spool_cipher,
)
from smtpguard.spool.files import Rekeyed, SpoolFolder, SpoolHeader
from tests.conftest import RelayRunner
from tests.sink import CaptureSink

EXPIRES = 2_000_000_000.0
SENDER = "j.okafor@northshire.gov.uk"
RECIPIENTS = ("s.mills@millsandco-solicitors.co.uk", "guardian.team@cafcass.gov.uk")
CONTENT = (
    b"From: Joy Okafor <j.okafor@northshire.gov.uk>\r\n"
    b"To: Sarah Mills <s.mills@millsandco-solicitors.co.uk>\r\n"
    b"Subject: Amelia Hart - strategy meeting notes\r\n"
    b"\r\n"
    b"Amelia is staying with her grandmother at 14 Elmwood Road.\r\n"
    b"NHS number 943 476 5919\r\n"
)
# Whatever else is on disk, none of these may be.
SECRETS = (
    b"Amelia",
    b"Hart",
    b"Elmwood",
    b"943 476 5919",
    b"strategy meeting",
    b"j.okafor",
    b"northshire",
    b"s.mills",
    b"millsandco",
    b"guardian.team",
    b"cafcass",
)


def make_envelope() -> Envelope:
    return Envelope(
        sender=SENDER,
        recipients=RECIPIENTS,
        client_address="127.0.0.1",
        client_name="mail.northshire.gov.uk",
        received_at=1_700_000_000.25,
    )


def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def spool_file(tmp_path: Path, message_id: str) -> Path:
    return data_dir(tmp_path) / "spool" / f"{message_id}.eml"


def make_key(tmp_path: Path, name: str = "spool.key") -> Path:
    path = tmp_path / "keys" / name
    path.parent.mkdir(exist_ok=True)
    create_spool_key(path)
    return path


def cipher_of(current: Path, *old: Path) -> SpoolCipher:
    return SpoolCipher.from_files(current, old)


async def opened(tmp_path: Path, cipher: SpoolCipher | None) -> SQLiteStore:
    store = SQLiteStore(data_dir(tmp_path), cipher)
    await store.open()
    return store


async def accept(store: Store, content: bytes = CONTENT) -> str:
    message_id = new_message_id()
    await store.accept(
        message_id,
        make_envelope(),
        content,
        state=MessageState.QUEUED,
        origin=Origin.RELAY,
        expires_at=EXPIRES,
    )
    return message_id


async def write_with(tmp_path: Path, cipher: SpoolCipher | None, count: int = 1) -> list[str]:
    """Messages accepted by a store with `cipher`, then the store closed (as at a restart)."""
    store = await opened(tmp_path, cipher)
    try:
        return [await accept(store, CONTENT + f"{i}\r\n".encode()) for i in range(count)]
    finally:
        await store.close()


def assert_no_key_material(text: str, *keys: Path) -> None:
    for key_file in keys:
        key = key_file.read_bytes()
        for form in (key.hex(), repr(key), key.decode("latin-1")):
            assert form not in text


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return make_key(tmp_path)


@pytest.fixture
async def store(tmp_path: Path, key_file: Path) -> AsyncIterator[SQLiteStore]:
    encrypted = await opened(tmp_path, cipher_of(key_file))
    yield encrypted
    await encrypted.close()


# -- what is on disk ---------------------------------------------------------------


async def test_encrypted_spool_file_holds_no_text_sender_or_recipient(
    store: SQLiteStore, tmp_path: Path, key_file: Path
) -> None:
    message_id = await accept(store)
    data = spool_file(tmp_path, message_id).read_bytes()
    kid = key_id(key_file.read_bytes())
    assert data.startswith(f"SMTPGUARD-ENCRYPTED 1 {kid}\n".encode())
    for secret in SECRETS:
        assert secret not in data, secret
        assert secret.lower() not in data.lower(), secret
    assert oct(spool_file(tmp_path, message_id).stat().st_mode & 0o777) == oct(0o600)


async def test_same_message_twice_is_two_different_ciphertexts(store: SQLiteStore) -> None:
    first, second = await accept(store), await accept(store)
    folder = store.spool
    a = (folder.path / f"{first}.eml").read_bytes()
    b = (folder.path / f"{second}.eml").read_bytes()
    # A fresh nonce per file: equal messages do not show as equal files.
    assert a.split(b"\n", 1)[1][:12] != b.split(b"\n", 1)[1][:12]
    assert a.split(b"\n", 1)[1] != b.split(b"\n", 1)[1]


# -- reading it back -------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(CONTENT, id="text"),
        pytest.param(b"Subject: x\r\n\r\n" + bytes(range(256)) * 4 + b"\r\n", id="8bit"),
        pytest.param(b"Subject: x\r\n\r\n" + b"line of text\r\n" * 100_000, id="1.4MB"),
    ],
)
async def test_round_trip_through_accept_load_and_content(
    store: SQLiteStore, content: bytes
) -> None:
    message_id = await accept(store, content)
    assert await store.content(message_id) == content
    record = await store.load(message_id)
    assert record is not None and record.envelope == make_envelope()
    assert record.size == len(content)


async def test_recovery_rebuilds_a_lost_row_from_an_encrypted_file(
    tmp_path: Path, key_file: Path
) -> None:
    [kept, lost] = await write_with(tmp_path, cipher_of(key_file), count=2)
    with sqlite3.connect(data_dir(tmp_path) / "smtpguard.db", isolation_level=None) as db:
        db.execute("DELETE FROM recipients WHERE message_id = ?", (lost,))
        db.execute("DELETE FROM messages WHERE id = ?", (lost,))
    store = await opened(tmp_path, cipher_of(key_file))
    try:
        assert await store.load(lost) is None
        assert sorted(await store.recover()) == sorted([kept, lost])
        record = await store.load(lost)
        assert record is not None
        assert record.envelope == make_envelope()
        assert record.state is MessageState.RECEIVED  # to be scanned again
        assert record.expires_at == EXPIRES
        assert await store.content(lost) == CONTENT + b"1\r\n"
    finally:
        await store.close()


async def test_recovery_without_the_key_leaves_the_file_for_an_administrator(
    tmp_path: Path, key_file: Path
) -> None:
    [message_id] = await write_with(tmp_path, cipher_of(key_file))
    (data_dir(tmp_path) / "smtpguard.db").unlink()
    store = await opened(tmp_path, None)
    try:
        assert await store.recover() == []
        assert await store.load(message_id) is None
        assert spool_file(tmp_path, message_id).exists()
    finally:
        await store.close()


async def test_a_file_renamed_to_another_id_does_not_decrypt(
    store: SQLiteStore, tmp_path: Path, key_file: Path
) -> None:
    message_id = await accept(store)
    other = new_message_id()
    spool_file(tmp_path, message_id).rename(spool_file(tmp_path, other))
    with pytest.raises(SpoolDecryptError) as caught:
        store.spool.read(other)
    message = str(caught.value)
    assert other in message and key_id(key_file.read_bytes()) in message
    assert "renamed" in message
    with pytest.raises(SpoolDecryptError):
        store.spool.read_header(other)


async def test_an_altered_file_does_not_decrypt(store: SQLiteStore, tmp_path: Path) -> None:
    message_id = await accept(store)
    path = spool_file(tmp_path, message_id)
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolDecryptError, match=message_id):
        store.spool.read(message_id)
    path.write_bytes(bytes(data[:60]))
    with pytest.raises(SpoolDecryptError, match="cut short"):
        store.spool.read(message_id)


async def test_wrong_key_is_a_clear_error_naming_the_message_and_key_not_the_key(
    tmp_path: Path, key_file: Path
) -> None:
    [message_id] = await write_with(tmp_path, cipher_of(key_file))
    other_key = make_key(tmp_path, "other.key")
    folder = SpoolFolder(data_dir(tmp_path) / "spool", cipher_of(other_key))
    try:
        with pytest.raises(SpoolKeyError) as caught:
            folder.read(message_id)
    finally:
        folder.close()
    message = str(caught.value)
    assert message_id in message
    assert key_id(key_file.read_bytes()) in message
    assert "old_key_files" in message
    assert_no_key_material(message, key_file, other_key)


async def test_missing_key_is_a_clear_error(tmp_path: Path, key_file: Path) -> None:
    [message_id] = await write_with(tmp_path, cipher_of(key_file))
    store = await opened(tmp_path, None)
    try:
        with pytest.raises(SpoolKeyError) as caught:
            await store.content(message_id)
    finally:
        await store.close()
    message = str(caught.value)
    assert message_id in message and key_id(key_file.read_bytes()) in message
    assert "store.encryption" in message
    assert_no_key_material(message, key_file)


async def test_plain_files_are_still_read_after_encryption_is_turned_on(
    tmp_path: Path, key_file: Path
) -> None:
    [plain] = await write_with(tmp_path, None)
    assert spool_file(tmp_path, plain).read_bytes().startswith(b"{")
    (data_dir(tmp_path) / "smtpguard.db").unlink()  # and rebuilt from the plain file
    store = await opened(tmp_path, cipher_of(key_file))
    try:
        assert await store.recover() == [plain]
        assert await store.content(plain) == CONTENT + b"0\r\n"
        new = await accept(store)
        assert spool_file(tmp_path, new).read_bytes().startswith(b"SMTPGUARD-ENCRYPTED 1 ")
        assert await store.content(new) == CONTENT
    finally:
        await store.close()


# -- key files -------------------------------------------------------------------


def test_a_new_key_file_is_32_bytes_mode_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = make_key(tmp_path)
    assert len(path.read_bytes()) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    with pytest.raises(SpoolKeyError, match="never overwritten"):
        create_spool_key(path)
    assert path.read_bytes() == before


def test_a_key_file_others_can_read_is_refused(tmp_path: Path, key_file: Path) -> None:
    key_file.chmod(0o644)
    with pytest.raises(SpoolKeyError) as caught:
        read_spool_key(key_file)
    message = str(caught.value)
    assert str(key_file) in message and "chmod 600" in message
    assert_no_key_material(message, key_file)


def test_a_key_file_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"0123456789abcdef")
    os.close(fd)
    with pytest.raises(SpoolKeyError, match="exactly 32 bytes") as caught:
        read_spool_key(path)
    assert "0123456789abcdef" not in str(caught.value)


def test_a_missing_key_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SpoolKeyError, match="smtpguard spool keygen"):
        read_spool_key(tmp_path / "nowhere.key")


# -- config ---------------------------------------------------------------------------


def write_config(tmp_path: Path, encryption: str) -> Path:
    text = textwrap.dedent(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
        store:
          data_dir: data
        """
    ) + textwrap.indent(textwrap.dedent(encryption), "  ")
    path = tmp_path / "smtpguard.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_paths_resolve_next_to_the_config_file(tmp_path: Path) -> None:
    make_key(tmp_path, "new.key")
    make_key(tmp_path, "old.key")
    path = write_config(
        tmp_path,
        """\
        encryption:
          key_file: keys/new.key
          old_key_files: [keys/old.key]
        """,
    )
    encryption = load_config(path).store.encryption
    assert encryption is not None
    assert encryption.key_file == tmp_path / "keys" / "new.key"
    assert encryption.old_key_files == (tmp_path / "keys" / "old.key",)
    cipher = spool_cipher(load_config(path).store)
    assert cipher is not None and len(cipher.key_ids) == 2


def test_without_encryption_config_no_cipher(tmp_path: Path) -> None:
    assert spool_cipher(load_config(write_config(tmp_path, "")).store) is None


def test_config_with_a_missing_key_file_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """\
        encryption:
          key_file: keys/missing.key
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert (problem.file, problem.line) == (path, 6)
    assert "store.encryption.key_file: no such file" in problem.reason
    assert str(problem).startswith(f"{path}:6: ")


def test_config_with_a_key_others_can_read_is_refused_with_file_and_line(
    tmp_path: Path,
) -> None:
    make_key(tmp_path, "new.key")
    make_key(tmp_path, "old.key").chmod(0o640)
    path = write_config(
        tmp_path,
        """\
        encryption:
          key_file: keys/new.key
          old_key_files:
            - keys/old.key
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.line == 8
    assert problem.reason.startswith("store.encryption.old_key_files: ")
    assert "chmod 600" in problem.reason


def test_config_with_a_missing_old_key_is_refused(tmp_path: Path) -> None:
    make_key(tmp_path, "new.key")
    path = write_config(
        tmp_path,
        """\
        encryption:
          key_file: keys/new.key
          old_key_files: [keys/gone.key]
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.line == 7
    assert "not found" in problem.reason


# -- rotation ---------------------------------------------------------------------


def smtpguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpguard.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keygen_creates_a_private_key_and_prints_its_id(tmp_path: Path) -> None:
    path = tmp_path / "spool.key"
    result = smtpguard("spool", "keygen", str(path))
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert key_id(path.read_bytes()) in result.stdout
    again = smtpguard("spool", "keygen", str(path))
    assert again.returncode == 2 and "never overwritten" in again.stderr


async def test_rotation_old_key_files_read_then_rekey_moves_everything_to_the_new_key(
    tmp_path: Path,
) -> None:
    old_key = make_key(tmp_path, "old.key")
    plain = await write_with(tmp_path, None, count=2)
    under_old = await write_with(tmp_path, cipher_of(old_key), count=3)
    new_key = make_key(tmp_path, "new.key")
    path = write_config(
        tmp_path,
        """\
        encryption:
          key_file: keys/new.key
          old_key_files: [keys/old.key]
        """,
    )
    # Restarted with the new key and the old one kept for reading.
    rotating = spool_cipher(load_config(path).store)
    assert rotating is not None
    store = await opened(tmp_path, rotating)
    try:
        for message_id in plain + under_old:
            assert (await store.content(message_id)).startswith(CONTENT)
        current = await accept(store)  # under the new key already
    finally:
        await store.close()

    result = smtpguard("spool", "rekey", "--config", str(path))
    assert result.returncode == 0, result.stderr
    new_id = key_id(new_key.read_bytes())
    assert f"rewrote 5 spool files under key {new_id}" in result.stdout
    assert "1 were already under it" in result.stdout
    assert "older keys are no longer needed" in result.stdout
    for secret in SECRETS:
        assert secret.decode() not in result.stdout + result.stderr

    # The new key alone reads everything; nothing is plain or under the old key.
    store = await opened(tmp_path, cipher_of(new_key))
    try:
        for i, message_id in enumerate(plain + under_old):
            expected = CONTENT + f"{i % 2 if i < 2 else i - 2}\r\n".encode()
            assert await store.content(message_id) == expected
            data = spool_file(tmp_path, message_id).read_bytes()
            assert data.startswith(f"SMTPGUARD-ENCRYPTED 1 {new_id}\n".encode())
            assert store.spool.read_header(message_id).envelope == make_envelope()
        assert await store.content(current) == CONTENT
    finally:
        await store.close()
    assert not list((data_dir(tmp_path) / "spool").glob("*.tmp"))

    again = smtpguard(
        "spool", "rekey", "--config", str(path), "--data-dir", str(data_dir(tmp_path))
    )
    assert again.returncode == 0, again.stderr
    assert "rewrote 0 spool files" in again.stdout and "6 were already under it" in again.stdout


async def test_rekey_reports_a_file_it_cannot_read_and_leaves_it(tmp_path: Path) -> None:
    lost_key = make_key(tmp_path, "lost.key")
    [orphan] = await write_with(tmp_path, cipher_of(lost_key))
    make_key(tmp_path, "new.key")
    path = write_config(tmp_path, "encryption:\n  key_file: keys/new.key\n")
    before = spool_file(tmp_path, orphan).read_bytes()
    result = smtpguard("spool", "rekey", "--config", str(path))
    assert result.returncode == 2
    assert orphan in result.stderr and key_id(lost_key.read_bytes()) in result.stderr
    assert "1 spool files are still not under key" in result.stdout
    assert spool_file(tmp_path, orphan).read_bytes() == before


def test_rekey_without_encryption_configured_is_refused(tmp_path: Path) -> None:
    result = smtpguard("spool", "rekey", "--config", str(write_config(tmp_path, "")))
    assert result.returncode == 2
    assert "store.encryption is not set" in result.stderr


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "check-then-rename"])
async def test_rekey_skips_a_file_the_relay_removes_meanwhile_and_does_not_bring_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    [message_id] = await write_with(tmp_path, None)
    folder = SpoolFolder(data_dir(tmp_path) / "spool", cipher_of(make_key(tmp_path)))
    if not exchange:
        monkeypatch.setattr(spool_files, "_RENAMEAT2", None)
    write_new = spool_files._write_new

    def relay_finishes_meanwhile(tmp: Path, chunks: list[bytes]) -> None:
        write_new(tmp, chunks)
        folder.remove(message_id)

    monkeypatch.setattr(spool_files, "_write_new", relay_finishes_meanwhile)
    try:
        assert folder.rekey(message_id) is Rekeyed.GONE
        assert folder.rekey(message_id) is Rekeyed.GONE  # and when already gone
    finally:
        folder.close()
    assert list((data_dir(tmp_path) / "spool").iterdir()) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "check-then-rename"])
async def test_rekey_rewrites_in_place_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(spool_files, "_RENAMEAT2", None)
    [message_id] = await write_with(tmp_path, None)
    cipher = cipher_of(make_key(tmp_path))
    folder = SpoolFolder(data_dir(tmp_path) / "spool", cipher)
    try:
        assert folder.key_id_of(message_id) is None
        assert folder.rekey(message_id) is Rekeyed.REWRITTEN
        assert folder.key_id_of(message_id) == cipher.key_id
        assert folder.rekey(message_id) is Rekeyed.CURRENT
        assert folder.read(message_id) == CONTENT + b"0\r\n"
        assert folder.read_header(message_id) == SpoolHeader(make_envelope(), "relay", EXPIRES)
    finally:
        folder.close()
    assert [p.name for p in (data_dir(tmp_path) / "spool").iterdir()] == [f"{message_id}.eml"]


# -- end to end --------------------------------------------------------------------


async def test_relay_with_encryption_keeps_a_deferred_message_encrypted_then_delivers_it(
    relays: RelayRunner, sink: CaptureSink, tmp_path: Path
) -> None:
    key = make_key(tmp_path)
    accepting = asyncio.Event()

    def refuse_until_accepting(message: Any) -> str | None:
        return None if accepting.is_set() else "451 4.3.0 try later"

    sink.handler.data_reply = refuse_until_accepting
    service = await relays.start({"store": {"encryption": {"key_file": str(key)}}})
    assert service.address is not None
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.address[1], start_tls=False)
    await client.connect()
    try:
        _, reply = await client.sendmail(SENDER, [RECIPIENTS[0]], CONTENT)
    finally:
        await client.quit()
    message_id = reply.rsplit(" ", 1)[1]

    async with asyncio.timeout(10):
        while True:
            record = await service.store.load(message_id)
            if record is not None and record.attempts >= 1:
                break
            await asyncio.sleep(0.05)
    path = data_dir(tmp_path) / "spool" / f"{message_id}.eml"
    data = path.read_bytes()
    assert data.startswith(f"SMTPGUARD-ENCRYPTED 1 {key_id(key.read_bytes())}\n".encode())
    for secret in SECRETS:
        assert secret.lower() not in data.lower(), secret

    accepting.set()
    [captured] = await sink.handler.wait_for(1, timeout=20)
    assert captured.recipients == [RECIPIENTS[0]]
    assert captured.content.endswith(CONTENT)
    async with asyncio.timeout(5):
        while path.exists():  # finished: its bytes are not kept
            await asyncio.sleep(0.05)
