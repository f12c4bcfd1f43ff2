"""Shared by the exact data match tests: the example council's exports and what must never leak.

The exports are the project's copies in config/example (Northshire's invented
people and addresses). `forbidden()` lists every value a register, a log
line, an exception message or an excerpt must not contain, in the forms a
careless implementation might store: as written, lower case, without spaces,
the postcode without its space, the date of birth in other forms, and each
word of a name or address of three letters or more.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import shutil
from pathlib import Path

from smtpguard.detect.edm import KINDS, Kind, build_register, create_key, write_register

COUNCIL = Path(__file__).resolve().parents[2] / "config" / "example"

# Columns that may be in clear (a case reference ties a match to its case; access is
# allowed/restricted) and, for excerpts, the label a reviewer is shown by design.
CLEAR_COLUMNS = frozenset({"case_ref", "access"})
SHOWN_IN_EXCERPTS = frozenset({"label"})
# Columns whose words are looked for one by one, not only the whole value.
WORD_COLUMNS = frozenset(
    {"subject_name", "name", "address_line_1", "address_line_2", "town", "label"}
)
# Ordinary English words in the exports ("The Lodge", "Riverside Court", "Family Court"):
# a register must not hold them, but a message may well say "the".
_COMMON_WORDS = frozenset(
    {"the", "flat", "road", "close", "court", "apartment", "family", "children", "guardian"}
    | {"primary", "school"}
)
_WORD = re.compile(r"[A-Za-z]{3,}")
_HEX_ONLY = re.compile(r"[a-f]+")


def rows(kind: Kind) -> list[dict[str, str]]:
    with (COUNCIL / f"{kind}.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def forbidden(kind: Kind, *, excerpt: bool = False) -> set[str]:
    """Lower-case strings that must appear nowhere in output derived from this export."""
    values, words = _forbidden(kind, excerpt=excerpt)
    return values | words


def _forbidden(kind: Kind, *, excerpt: bool) -> tuple[set[str], set[str]]:
    """(whole values in several forms, single words of names and addresses)."""
    values: set[str] = set()
    words: set[str] = set()
    skip = CLEAR_COLUMNS | (SHOWN_IN_EXCERPTS if excerpt else frozenset())
    for row in rows(kind):
        for column, value in row.items():
            if column in skip or not value.strip():
                continue
            lowered = value.strip().lower()
            values.update({lowered, lowered.replace(" ", "")})
            if column in WORD_COLUMNS:
                # A word made only of the letters a-f could be part of any hex digest.
                words.update(
                    word.lower()
                    for word in _WORD.findall(value)
                    if not _HEX_ONLY.fullmatch(word.lower())
                )
            if column == "subject_dob":
                date = dt.date.fromisoformat(value)
                values.update(
                    date.strftime(form) for form in ("%Y%m%d", "%d/%m/%Y", "%d.%m.%Y", "%d%m%Y")
                )
            if column == "email":
                local = lowered.partition("@")[0]
                values.update({local, local.replace(".", "")})
    # Short values ("yes", "no") of columns that are not names would match anything.
    return {v for v in values if len(v) >= 3}, words


def all_forbidden(*, excerpt: bool = False) -> set[str]:
    return set().union(*(forbidden(kind, excerpt=excerpt) for kind in KINDS))


def leaked(text: str, *, excerpt: bool = False, strict: bool = False) -> list[str]:
    """The forbidden values found in `text` (case-insensitive), for a readable failure.

    Whole values are looked for anywhere. Single words are too when `strict`
    (a register file: nothing may be hidden inside a longer string); in
    messages meant for people they must stand as words, since "Ash" is in
    "hashed" and "Ian" in "guardian" without saying anything about anyone.
    """
    lowered = text.lower()
    found: set[str] = set()
    for kind in KINDS:
        values, words = _forbidden(kind, excerpt=excerpt)
        found.update(value for value in values if value in lowered)
        for word in words:
            if strict:
                if word in lowered:
                    found.add(word)
            elif word not in _COMMON_WORDS and re.search(rf"\b{re.escape(word)}\b", lowered):
                found.add(word)
    return sorted(found)


def make_registers(folder: Path) -> tuple[Path, dict[Kind, Path]]:
    """A fresh key and the three example registers, built through the library."""
    key_file = folder / "edm.key"
    key = create_key(key_file)
    registers: dict[Kind, Path] = {}
    for kind in KINDS:
        out = folder / f"{kind}.edm"
        write_register(out, build_register(COUNCIL / f"{kind}.csv", kind, key).register)
        registers[kind] = out
    return key_file, registers


def copy_exports(folder: Path) -> dict[Kind, Path]:
    copies: dict[Kind, Path] = {}
    for kind in KINDS:
        copies[kind] = Path(shutil.copy(COUNCIL / f"{kind}.csv", folder / f"{kind}.csv"))
    return copies
