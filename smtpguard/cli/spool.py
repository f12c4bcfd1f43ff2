"""`smtpguard spool keygen|rekey`: keys for encryption at rest, and key rotation.

`rekey` rewrites every spool file that is not under the current key (plain
files, files under an old key) under the current key, one durable rewrite at
a time, while the relay runs. Run it as the relay's user (the key checks
refuse a key owned by anyone else). Output is counts, message ids and key
ids, never content.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtpguard.config.model import Config
    from smtpguard.spool.files import SpoolFolder

AddOption = Callable[[argparse.ArgumentParser], None]


def add_arguments(
    spool: argparse.ArgumentParser, add_config: AddOption, add_data_dir: AddOption
) -> None:
    actions = spool.add_subparsers(dest="spool_command", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="create a new spool key file (mode 0600)")
    keygen.add_argument("key", type=Path, metavar="KEYFILE")
    rekey = actions.add_parser(
        "rekey", help="rewrite every spool file not under store.encryption.key_file under it"
    )
    add_config(rekey)
    add_data_dir(rekey)


def run_spool(args: argparse.Namespace) -> int:
    from smtpguard.cli import EXIT_ERROR
    from smtpguard.spool.cipher import SpoolKeyError

    try:
        if args.spool_command == "keygen":
            return _keygen(args.key)
        return _rekey(args)
    except SpoolKeyError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR


def _keygen(path: Path) -> int:
    from smtpguard.cli import EXIT_OK
    from smtpguard.spool.cipher import create_spool_key

    kid = create_spool_key(path)
    print(f"created spool key file {path} (mode 0600), key id {kid}; back it up with the config")
    return EXIT_OK


def _rekey(args: argparse.Namespace) -> int:
    from smtpguard.cli import EXIT_ERROR, EXIT_OK
    from smtpguard.config import Overrides, default_config_path, load_config
    from smtpguard.spool.cipher import spool_cipher
    from smtpguard.spool.files import Rekeyed, SpoolFolder

    config_path = args.config or default_config_path()
    config = load_config(config_path, Overrides(data_dir=args.data_dir))
    cipher = spool_cipher(config.store)
    if cipher is None:
        print(
            f"{config_path}: store.encryption is not set: set store.encryption.key_file "
            "(create one with `smtpguard spool keygen`) and restart the relay first",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if config.store.backend == "postgresql":
        return _rekey_database(config, cipher.key_id)
    folder_path = config.store.data_dir / "spool"
    if not folder_path.is_dir():
        print(f"{folder_path}: no spool folder (check --data-dir)", file=sys.stderr)
        return EXIT_ERROR
    folder = SpoolFolder(folder_path, cipher)
    counts = dict.fromkeys(Rekeyed, 0)
    failed = 0
    try:
        for message_id in sorted(folder.message_ids()):
            try:
                counts[folder.rekey(message_id)] += 1
            except (OSError, ValueError, KeyError) as exc:
                print(f"{message_id}: not rewritten: {_reason(exc)}", file=sys.stderr)
                failed += 1
        remaining = _not_current(folder, cipher.key_id)
    finally:
        folder.close()
    print(
        f"rewrote {counts[Rekeyed.REWRITTEN]} spool files under key {cipher.key_id}; "
        f"{counts[Rekeyed.CURRENT]} were already under it; "
        f"{counts[Rekeyed.GONE]} finished meanwhile"
    )
    if remaining:
        print(f"{remaining} spool files are still not under key {cipher.key_id}")
    else:
        print(f"every spool file is under key {cipher.key_id}: older keys are no longer needed")
    return EXIT_ERROR if failed else EXIT_OK


def _rekey_database(config: Config, key: str) -> int:
    """With PostgreSQL the message bytes are rows, not files: rewrite those rows."""
    import asyncio

    from smtpguard.cli import EXIT_ERROR, EXIT_OK
    from smtpguard.spool import open_configured_store
    from smtpguard.spool.postgres import PostgresStore, Rekeying

    async def rekey() -> Rekeying:
        store = open_configured_store(config.store)
        assert isinstance(store, PostgresStore)
        await store.open()
        try:
            return await store.rekey()
        finally:
            await store.close()

    done = asyncio.run(rekey())
    for problem in done.failed:
        print(f"not rewritten: {problem}", file=sys.stderr)
    print(
        f"rewrote {done.rewritten} stored messages under key {key}; "
        f"{done.current} were already under it"
    )
    if done.remaining:
        print(f"{done.remaining} stored messages are still not under key {key}")
    else:
        print(f"every stored message is under key {key}: older keys are no longer needed")
    return EXIT_ERROR if done.failed else EXIT_OK


def _reason(exc: Exception) -> str:
    """Why a file was not rewritten, from text that never holds the file's content."""
    from smtpguard.spool.cipher import SpoolDecryptError, SpoolKeyError

    if isinstance(exc, SpoolKeyError | SpoolDecryptError):
        return str(exc)  # ids, key ids and the fix
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    # A JSON or Unicode error can quote bytes of the file: name the kind only.
    return f"not a readable spool file ({type(exc).__name__})"


def _not_current(folder: SpoolFolder, current: str) -> int:
    """How many files are still plain or under another key (read from their first bytes)."""
    remaining = 0
    for message_id in folder.message_ids():
        try:
            if folder.key_id_of(message_id) != current:
                remaining += 1
        except FileNotFoundError:
            continue  # finished meanwhile
        except (OSError, ValueError):
            remaining += 1
    return remaining
