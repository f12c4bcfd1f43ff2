"""Exact data match: the council's own people and protected addresses, from hashed registers.

`smtpguard edm build` (see `build`) turns a CSV export into a register of
HMAC-SHA256 hashes under a key file (`key`); the relay loads registers with
`load_edm_detectors` and matches normalised token windows of every text
against them (`match`). Both sides normalise through `normalise`. No name,
date of birth or address is ever on disk in clear, nor in a log line, an
exception message or an excerpt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from smtpguard.detect.base import Detector
from smtpguard.detect.edm.build import COLUMNS, BuildResult, build_register
from smtpguard.detect.edm.key import EdmError, Keyed, create_key, read_key
from smtpguard.detect.edm.match import PersonDetector, ProtectedAddressDetector, TokenFilter
from smtpguard.detect.edm.register import (
    KINDS,
    PERSON_KINDS,
    Kind,
    Register,
    read_register,
    write_register,
)

__all__ = [
    "COLUMNS",
    "KINDS",
    "BuildResult",
    "EdmError",
    "Kind",
    "PersonDetector",
    "ProtectedAddressDetector",
    "Register",
    "build_register",
    "create_key",
    "load_edm_detectors",
    "read_key",
    "read_register",
    "write_register",
]

log = structlog.get_logger("smtpguard.detect.edm")


def load_edm_detectors(
    key_file: Path | None,
    registers: Sequence[Path],
    exports: Mapping[Kind, Sequence[Path]] | None = None,
) -> tuple[Detector, ...]:
    """The detectors these registers support: `edm_person` (cases, case_parties registers)
    and/or `edm_protected_address` (protected_addresses registers).

    `exports` are hashed here, in memory, under `key_file` or, without one, a key
    derived from the exports themselves: every process that reads the same files
    then hashes alike, and nothing hashed under it is ever written down.

    Raises EdmError naming the file for a key that is unsafe or unreadable, a
    register hashed under another key, an export with bad rows, or a register
    that is corrupt or of an unknown version: the relay must not start
    believing it protects what it cannot.
    """
    exported = [(kind, path) for kind, paths in (exports or {}).items() for path in paths]
    if key_file is not None:
        key = read_key(key_file)
    elif not registers and exported:
        key = _key_of_exports([path for _, path in exported])
    else:
        raise EdmError("registers need the key file they were hashed under")
    loaded = [read_register(path, key) for path in registers]
    for kind, path in exported:
        result = build_register(path, kind, key)
        if result.skipped:
            for notice in result.notices:
                log.warning("edm_export_row", notice=notice)
        log.info(
            "edm_export_hashed",
            file=str(path),
            rows=result.rows,
            notices=len(result.notices),
            skipped=result.skipped,
        )
        loaded.append(result.register)
    people = [register for register in loaded if register.kind in PERSON_KINDS]
    places = [register for register in loaded if register.kind not in PERSON_KINDS]
    keyed = Keyed(key)
    tokens = TokenFilter(
        keyed,
        {bytes.fromhex(anchor) for register in people for anchor in register.anchors},
        {bytes.fromhex(anchor) for register in places for anchor in register.anchors},
    )
    detectors: list[Detector] = []
    counts = {}
    if people:
        person = PersonDetector(keyed, people, tokens)
        detectors.append(person)
        counts["people"] = person.people
    if places:
        address = ProtectedAddressDetector(keyed, places, tokens)
        detectors.append(address)
        counts["places"] = address.places
    log.info("edm_registers_loaded", registers=len(loaded), **counts)
    return tuple(detectors)


def _key_of_exports(paths: Sequence[Path]) -> bytes:
    digest = hashlib.sha256(b"smtpguard edm exports v1\0")
    for path in paths:
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            raise EdmError(f"{path}: cannot read: {exc.strerror}") from exc
    return digest.digest()
