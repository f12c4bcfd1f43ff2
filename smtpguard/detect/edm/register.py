"""The register file: what `edm build` writes and the relay reads.

JSON, so an administrator can see what is in it: the kind, a key
fingerprint, the window lengths and token filter the matcher needs, and one
entry per person or address holding only keyed hashes. In clear it holds
only case references (to tie a match to a case) and a party's access
(`allowed`/`restricted`); never a name, date of birth, email, address line,
town, postcode, role or label. Entries are sorted by their hashed id, so
not even the export's row order survives.

Every hash is HMAC-SHA256 under the key with a purpose prefix (see
`key.Keyed`), cut to 16 bytes (32 hex) for entries and 8 bytes for tokens.

Format (version 1):

    {"smtpguard_edm": 1, "kind": "cases" | "case_parties" | "protected_addresses",
     "key_check": hex(HMAC(key, "smtpguard-edm-key-check")),
     "lengths": [2, 3],                  # token counts of the hashed windows
     "anchors": ["<16 hex>", ...],       # per-token hashes: one distinctive token per entry
     "vocabulary": ["<16 hex>", ...],    # per-token hashes of every token a match can hold
     "people": [{"id": "<10 hex>", "case": "CS-204817", "access": null | "allowed"
                 | "restricted", "names": [...], "ordered": [...], "records": [...],
                 "mail": null | "<32 hex>"}],
     "places": [{"id": "<10 hex>", "label": "<32 hex>", "strong": [...], "weak": [...],
                 "pc": null | "<32 hex>"}]}
"""

from __future__ import annotations

import hmac
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from smtpguard.detect.edm.key import EdmError, key_check

FORMAT_VERSION: Literal[1] = 1
Kind = Literal["cases", "case_parties", "protected_addresses"]
KINDS: tuple[Kind, ...] = ("cases", "case_parties", "protected_addresses")
PERSON_KINDS = frozenset({"cases", "case_parties"})
MAX_WINDOW = 8  # tokens: a name has at most 4, an address fact a few more

Hex16 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
EntryId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{10}$")]
# Case references as the case_reference detector normalises them; no ':' (values are split on it).
CaseRef = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9/_.\-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Person(_Strict):
    """A case subject (cases) or a party (case_parties)."""

    id: EntryId
    case: CaseRef
    access: Literal["allowed", "restricted"] | None = None
    names: tuple[Hex32, ...] = ()  # NAME hashes: the full name, and first + last if longer
    ordered: tuple[Hex32, ...] = ()  # ORDERED hashes, one per name above
    records: tuple[Hex32, ...] = ()  # RECORD hashes: name + date of birth (subjects)
    mail: Hex32 | None = None  # MAIL hash (parties)


class Place(_Strict):
    """A protected address."""

    id: EntryId
    label: Hex32  # LABEL hash; the relay recognises a small vocabulary of labels
    strong: tuple[Hex32, ...]  # ADDRESS hashes that alone locate the address
    weak: tuple[Hex32, ...] = ()  # ADDRESS hashes of parts that locate it only together
    pc: Hex32 | None = None  # POSTCODE hash


class Register(_Strict):
    smtpguard_edm: Literal[1]
    kind: Kind
    key_check: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    lengths: tuple[Annotated[int, Field(ge=1, le=MAX_WINDOW)], ...]
    anchors: tuple[Hex16, ...]
    vocabulary: tuple[Hex16, ...]
    people: tuple[Person, ...] = ()
    places: tuple[Place, ...] = ()


def write_register(path: Path, register: Register) -> None:
    """Atomically: a crash leaves the old register or the new one, never half of one."""
    data = (register.model_dump_json(indent=1) + "\n").encode()
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp creates it 0600
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_register(path: Path, key: bytes) -> Register:
    """A register hashed under `key`, or EdmError saying what is wrong with the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EdmError(f"{path}: cannot read register: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdmError(f"{path}: not an EDM register (not JSON: corrupt or truncated)") from exc
    if not isinstance(data, dict) or "smtpguard_edm" not in data:
        raise EdmError(f"{path}: not an EDM register (no smtpguard_edm version)")
    version = data["smtpguard_edm"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise EdmError(
            f"{path}: unknown EDM register version {json.dumps(version)[:20]} "
            f"(this smtpguard reads version {FORMAT_VERSION}); "
            "rebuild it with `smtpguard edm build`"
        )
    stored = data.get("key_check")
    if not isinstance(stored, str) or not hmac.compare_digest(stored, key_check(key)):
        raise EdmError(
            f"{path}: register was hashed with a different key than the one configured; "
            "rebuild it with `smtpguard edm build` and this key"
        )
    try:
        register = Register.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise EdmError(f"{path}: corrupt EDM register: {where}: {first['msg']}") from exc
    if register.kind in PERSON_KINDS and register.places:
        raise EdmError(f"{path}: corrupt EDM register: a {register.kind} register with places")
    if register.kind not in PERSON_KINDS and register.people:
        raise EdmError(f"{path}: corrupt EDM register: a {register.kind} register with people")
    return register
