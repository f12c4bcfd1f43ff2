"""`smtpguard edm build|keygen`: hash a council export into an exact data match register.

Run where the export is, by the administrator who owns the relay's key: the
CSV (names, dates of birth, refuge addresses) need never reach the relay,
only the `.edm` file of keyed hashes does. Output names files, lines and
counts, never a value from the export.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def add_arguments(
    edm: argparse.ArgumentParser, add_config: Callable[[argparse.ArgumentParser], None]
) -> None:
    from smtpguard.detect.edm import KINDS

    actions = edm.add_subparsers(dest="edm_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="hash a council CSV export into a register")
    build.add_argument("csv", type=Path, metavar="CSV")
    build.add_argument("--kind", required=True, choices=KINDS, help="what the export holds")
    add_config(build)
    build.add_argument(
        "--key",
        type=Path,
        default=None,
        help="key file; created (mode 0600) if missing (default: detect.edm.key_file)",
    )
    build.add_argument(
        "--out", type=Path, default=None, help="register to write (default: CSV with .edm)"
    )
    keygen = actions.add_parser("keygen", help="create a new key file (mode 0600)")
    keygen.add_argument("key", type=Path, metavar="KEYFILE")


def run_edm(args: argparse.Namespace) -> int:
    from smtpguard.cli import EXIT_ERROR
    from smtpguard.detect.edm import EdmError

    try:
        if args.edm_command == "keygen":
            return _keygen(args.key)
        return _build(args)
    except EdmError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR


def _keygen(path: Path) -> int:
    from smtpguard.cli import EXIT_OK
    from smtpguard.detect.edm import create_key

    create_key(path)
    print(f"created key file {path} (mode 0600); back it up with the config")
    return EXIT_OK


def _configured_key(config_path: Path | None) -> Path:
    """The key the relay uses, so a register built here is one the relay can read."""
    from smtpguard.config import default_config_path, load_config
    from smtpguard.detect.edm import EdmError

    path = config_path or default_config_path()
    edm = load_config(path).detect.edm
    if edm is None or edm.key_file is None:
        raise EdmError(f"no key file: give --key FILE, or set detect.edm.key_file in {path}")
    return edm.key_file


def _build(args: argparse.Namespace) -> int:
    from smtpguard.cli import EXIT_OK
    from smtpguard.detect.edm import (
        EdmError,
        build_register,
        create_key,
        read_key,
        write_register,
    )

    key_path: Path = args.key or _configured_key(args.config)
    csv_path: Path = args.csv
    out: Path = args.out or csv_path.with_suffix(".edm")
    if out.resolve() == csv_path.resolve():
        raise EdmError(f"{out}: the register would overwrite the export; give another --out")
    if key_path.exists():
        key = read_key(key_path)
    else:
        key = create_key(key_path)
        print(f"created key file {key_path} (mode 0600); the relay needs this same key")
    result = build_register(csv_path, args.kind, key)
    for notice in result.notices:
        print(notice, file=sys.stderr)
    write_register(out, result.register)
    register = result.register
    if register.places:
        entries = f"{len(register.places)} addresses"
    else:
        entries = f"{len(register.people)} people"
    print(f"{out}: {entries} from {result.rows} rows of {csv_path} ({args.kind}), hashed only")
    return EXIT_OK
