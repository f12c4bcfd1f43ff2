"""From a council's CSV export to a register of keyed hashes.

Every row is checked before anything is written: an export with a bad date
or an empty name is refused as a whole, with `file:line: column: reason`
for each bad row, because a register that silently lacks a child protects
nobody. Messages name columns and lines, never cell values.

What is hashed, per kind (see `match` for how each is used):
- cases: the subject's name (sorted tokens; in registered order; and, for
  names of three or more words, first + last name too) and the name with
  the date of birth (a record).
- case_parties: the party's name the same way (no date of birth in the
  export), and the email address. Organisations (a court, a school, "Children's
  Guardian") and single names ("Dr A Okonjo" is "okonjo") are not names to
  look for in text: mentioning the court is not mentioning a person, and one
  word alone matches far too much. Their email is still hashed.
- protected_addresses: "strong" token sequences that alone locate the address
  (house number + street, flat + building + street in either order), "weak"
  parts (a street or building name without its number) and the postcode.
  The town is not hashed: it narrows nothing down.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smtpguard.detect.detectors import case_reference
from smtpguard.detect.edm.key import EdmError, Keyed, key_check
from smtpguard.detect.edm.normalise import (
    ADDRESS_WORDS,
    UNIT_WORDS,
    address_tokens,
    could_anchor,
    label_key,
    name_key,
    name_tokens,
    parse_date,
    postcode_key,
)
from smtpguard.detect.edm.register import (
    FORMAT_VERSION,
    MAX_WINDOW,
    Kind,
    Person,
    Place,
    Register,
)

COLUMNS: dict[Kind, tuple[str, ...]] = {
    "cases": ("case_ref", "team", "subject_name", "subject_dob", "court_proceedings"),
    "case_parties": ("case_ref", "name", "email", "role", "access"),
    "protected_addresses": ("label", "address_line_1", "address_line_2", "town", "postcode"),
}
MAX_NAME_TOKENS = 4
_MAX_REPORTED = 20

# Words that make a party's "name" an organisation's.
ORGANISATION_WORDS = frozenset(
    {
        "court", "tribunal", "school", "academy", "college", "nursery", "university",
        "council", "authority", "guardian", "cafcass", "police", "constabulary", "nhs",
        "trust", "hospital", "surgery", "practice", "clinic", "centre", "center", "service",
        "services", "team", "department", "office", "agency", "solicitors", "chambers", "llp",
        "ltd", "limited", "plc", "association", "charity", "foundation", "partnership",
        "group", "board", "housing", "refuge", "primary", "secondary",
    }
)  # fmt: skip

# Address words too common to be a token filter's anchor ("the", "road", "flat").
_GENERIC_ADDRESS_WORDS = (
    frozenset(ADDRESS_WORDS.values())
    | UNIT_WORDS
    | frozenset(
        {
            "the", "approach", "way", "walk", "grove", "hill", "row", "park", "mews", "view",
            "rise", "green", "parade", "house", "north", "south", "east", "west", "upper",
            "lower", "old", "new", "high",
        }
    )
)  # fmt: skip
_CASE_REF = re.compile(r"[A-Z0-9][A-Z0-9/_.\-]{0,63}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass
class BuildResult:
    register: Register
    rows: int  # rows read
    notices: list[str] = field(default_factory=list)  # rows kept with less hashed, and why
    skipped: int = 0  # rows with nothing to hash (named in notices)


@dataclass
class _Collector:
    keyed: Keyed
    lengths: set[int] = field(default_factory=set)
    anchors: set[str] = field(default_factory=set)
    vocabulary: set[str] = field(default_factory=set)
    ids: dict[str, int] = field(default_factory=dict)  # entry id -> line, to catch duplicates

    def hex(self, purpose: bytes, text: str) -> str:
        return self.keyed.value(purpose, text).hex()

    def anchor(self, token: str) -> None:
        assert could_anchor(token)  # the matcher hashes no other token
        self.anchors.add(self.keyed.token(token).hex())

    def words(self, tokens: Iterable[str]) -> None:
        """Tokens a match may contain: the matcher stops reading at any other."""
        self.vocabulary.update(self.keyed.token(token).hex() for token in tokens)


class _RowError(Exception):
    """One bad cell: the column and why, never the value."""


def build_register(csv_path: Path, kind: Kind, key: bytes) -> BuildResult:
    """Hash every row of the export, or raise EdmError listing every bad row."""
    collector = _Collector(Keyed(key))
    people: list[Person] = []
    places: list[Place] = []
    notices: list[str] = []
    problems: list[str] = []
    rows = skipped = 0
    for line, row in _rows(csv_path, COLUMNS[kind]):
        rows += 1
        try:
            if kind == "cases":
                people.append(_subject(row, collector, line))
            elif kind == "case_parties":
                party, notice = _party(row, collector, line)
                if notice:
                    notices.append(f"{csv_path}:{line}: {notice}")
                if party is not None:
                    people.append(party)
                else:
                    skipped += 1
            else:
                places.append(_place(row, collector, line))
        except _RowError as exc:
            problems.append(f"{csv_path}:{line}: {exc}")
    if problems:
        shown = problems[:_MAX_REPORTED]
        if len(problems) > _MAX_REPORTED:
            shown.append(f"{csv_path}: ... and {len(problems) - _MAX_REPORTED} more bad rows")
        raise EdmError("\n".join(shown))
    if not people and not places:
        raise EdmError(f"{csv_path}: no rows to hash")
    register = Register(
        smtpguard_edm=FORMAT_VERSION,
        kind=kind,
        key_check=key_check(key),
        lengths=tuple(sorted(collector.lengths)),
        anchors=tuple(sorted(collector.anchors)),
        vocabulary=tuple(sorted(collector.vocabulary)),
        people=tuple(sorted(people, key=lambda p: (p.id, p.case))),
        places=tuple(sorted(places, key=lambda p: p.id)),
    )
    return BuildResult(register, rows, notices, skipped)


def _rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) for each non-blank row, after checking the header has every column."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise EdmError(f"{path}:1: empty file; expected the header {','.join(columns)}")
            names = [name.strip().lower() for name in header]
            missing = [column for column in columns if column not in names]
            if missing:
                raise EdmError(f"{path}:1: missing column {', '.join(missing)}")
            index = {name: names.index(name) for name in columns}
            for fields in reader:
                if not any(cell.strip() for cell in fields):
                    continue
                if len(fields) > len(names) and any(c.strip() for c in fields[len(names) :]):
                    raise EdmError(f"{path}:{reader.line_num}: more fields than the header has")
                row = {
                    name: fields[at].strip() if at < len(fields) else ""
                    for name, at in index.items()
                }
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise EdmError(f"{path}: not UTF-8 text; save the export as CSV UTF-8") from exc
    except csv.Error as exc:
        raise EdmError(f"{path}: not readable as CSV: {exc}") from exc
    except OSError as exc:
        raise EdmError(f"{path}: cannot read: {exc.strerror}") from exc


def _case(value: str) -> str:
    """The case reference as the case_reference detector writes it, so the two agree."""
    if not value:
        raise _RowError("case_ref: empty")
    hits = case_reference.DETECTOR.scan(value)
    if len(hits) == 1 and hits[0].start == 0 and hits[0].end == len(value):
        return hits[0].value
    upper = value.upper()
    if _CASE_REF.fullmatch(upper) is None:
        raise _RowError("case_ref: not a case reference (letters, digits and / _ . - only)")
    return upper


def _aliases(tokens: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The forms to look for: the whole name, and first + last name ("Mary Ann Smith")."""
    aliases = [tokens] if len(tokens) <= MAX_NAME_TOKENS else []
    if len(tokens) > 2:
        aliases.append((tokens[0], tokens[-1]))
    return aliases


def _hash_names(
    tokens: tuple[str, ...], collector: _Collector
) -> tuple[tuple[str, ...], tuple[str, ...], list[tuple[str, ...]]]:
    aliases = _aliases(tokens)
    for alias in aliases:
        collector.lengths.add(len(alias))
        collector.words(alias)
        # The longest word is the rarest in text: only windows around it are hashed.
        collector.anchor(max(filter(could_anchor, alias), key=lambda token: (len(token), token)))
    names = tuple(collector.hex(Keyed.NAME, name_key(alias)) for alias in aliases)
    ordered = tuple(collector.hex(Keyed.ORDERED, " ".join(alias)) for alias in aliases)
    return names, ordered, aliases


def _entry_id(collector: _Collector, line: int, *parts: str) -> str:
    entry_id = collector.keyed.value(Keyed.ID, "\0".join(parts)).hex()[:10]
    first = collector.ids.setdefault(entry_id, line)
    if first != line:
        raise _RowError(f"the same entry as line {first}")
    return entry_id


def _subject(row: dict[str, str], collector: _Collector, line: int) -> Person:
    case = _case(row["case_ref"])
    if not row["subject_name"]:
        raise _RowError("subject_name: empty")
    tokens = name_tokens(row["subject_name"])
    if len(tokens) < 2 or not any(map(could_anchor, tokens)):
        raise _RowError("subject_name: needs a forename and a surname of two or more letters")
    if not row["subject_dob"]:
        raise _RowError("subject_dob: empty")
    dob = parse_date(row["subject_dob"])
    if dob is None:
        raise _RowError("subject_dob: not a date (write YYYY-MM-DD or DD/MM/YYYY)")
    if dob > dt.date.today():
        raise _RowError("subject_dob: in the future")
    names, ordered, aliases = _hash_names(tokens, collector)
    records = tuple(
        collector.hex(Keyed.RECORD, f"{name_key(alias)}|{dob.isoformat()}") for alias in aliases
    )
    entry_id = _entry_id(collector, line, "cases", case, name_key(tokens))
    return Person(id=entry_id, case=case, names=names, ordered=ordered, records=records)


def _party(
    row: dict[str, str], collector: _Collector, line: int
) -> tuple[Person | None, str | None]:
    case = _case(row["case_ref"])
    if not row["name"]:
        raise _RowError("name: empty")
    access = row["access"].lower()
    if access not in ("allowed", "restricted"):
        raise _RowError("access: must be allowed or restricted")
    email = row["email"]
    if email and _EMAIL.fullmatch(email) is None:
        raise _RowError("email: not an email address")
    tokens = name_tokens(row["name"])
    notice = None
    names: tuple[str, ...] = ()
    ordered: tuple[str, ...] = ()
    if (
        len(tokens) < 2
        or not any(map(could_anchor, tokens))
        or ORGANISATION_WORDS.intersection(tokens)
    ):
        notice = "name: not hashed as a person (an organisation, or fewer than two names)"
        if not email:
            return None, notice + "; row skipped, it has no email either"
        notice += "; its email is hashed"
    else:
        names, ordered, _ = _hash_names(tokens, collector)
    mail = collector.hex(Keyed.MAIL, email.casefold()) if email else None
    entry_id = _entry_id(collector, line, "case_parties", case, name_key(tokens), email.casefold())
    person = Person(
        id=entry_id,
        case=case,
        access="restricted" if access == "restricted" else "allowed",
        names=names,
        ordered=ordered,
        mail=mail,
    )
    return person, notice


def _is_number(token: str) -> bool:
    return token[0].isdigit()


def _unit_only(line: tuple[str, ...]) -> bool:
    return all(token in UNIT_WORDS or _is_number(token) for token in line)


def _strip_leading(line: tuple[str, ...]) -> tuple[str, ...]:
    """Without leading flat and house numbers: "flat 2 14 elmwood road" -> "elmwood road"."""
    at = 0
    while at < len(line) and (line[at] in UNIT_WORDS or _is_number(line[at])):
        at += 1
    return line[at:]


def _strong_facts(first: tuple[str, ...], second: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Token sequences that alone say which door: each needs a number or a named building."""
    lines = [line for line in (first, second) if line]
    facts: set[tuple[str, ...]] = set()
    if len(lines) == 2:
        facts.update({first + second, second + first})
    for line in lines:
        for at, token in enumerate(line):
            rest = line[at + 1 :]
            if _is_number(token) and any(t.isalpha() and t not in UNIT_WORDS for t in rest):
                facts.add(line[at:])  # house number + street: "14 elmwood road"
    if first and second and _unit_only(first) and not any(map(_is_number, second)):
        # "Apartment 11, Riverside Court" is also written "11 Riverside Court".
        numbers = [token for token in first if _is_number(token)]
        if numbers:
            facts.add((numbers[-1], *second))
    named_building = first and not any(map(_is_number, first)) and not _unit_only(first)
    if named_building and second and _is_number(second[0]):
        # "The Lodge, Station Approach": the building's name stands in for its number.
        facts.add(first + _strip_leading(second))
    return {fact for fact in facts if len(fact) <= MAX_WINDOW}


def _weak_facts(first: tuple[str, ...], second: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Street and building names without numbers: "elmwood road", "the lodge"."""
    facts: set[tuple[str, ...]] = set()
    for line in (first, second):
        run: list[str] = []
        for token in (*line, "0"):  # a number ends the last run too
            if _is_number(token) or token in UNIT_WORDS:
                if run and _address_anchor(tuple(run), generic=False):
                    facts.add(tuple(run))
                run = []
            else:
                run.append(token)
    return {fact for fact in facts if len(fact) <= MAX_WINDOW}


def _address_anchor(fact: tuple[str, ...], *, generic: bool) -> str | None:
    """The fact's rarest-looking word; a generic one ("road") only if allowed and nothing else."""
    words = [t for t in fact if t.isalpha() and t not in UNIT_WORDS and t != "the"]
    distinctive = [t for t in words if t not in _GENERIC_ADDRESS_WORDS]
    pool = distinctive or (words if generic else [])
    return max(pool, key=lambda token: (len(token), token)) if pool else None


def _place(row: dict[str, str], collector: _Collector, line: int) -> Place:
    first = address_tokens(row["address_line_1"])
    second = address_tokens(row["address_line_2"])
    if not first and not second:
        raise _RowError("address_line_1: empty, and address_line_2 too")
    postcode = None
    if row["postcode"]:
        postcode = postcode_key(row["postcode"])
        if postcode is None:
            raise _RowError("postcode: not a UK postcode")
    strong, weak = [], []
    for fact in sorted(_strong_facts(first, second)):
        anchor = _address_anchor(fact, generic=True)
        if anchor:
            collector.anchor(anchor)
            collector.words(fact)
            collector.lengths.add(len(fact))
            strong.append(collector.hex(Keyed.ADDRESS, " ".join(fact)))
    for fact in sorted(_weak_facts(first, second)):
        anchor = _address_anchor(fact, generic=False)
        if anchor:
            collector.anchor(anchor)
            collector.words(fact)
            collector.lengths.add(len(fact))
            weak.append(collector.hex(Keyed.ADDRESS, " ".join(fact)))
    if not strong and not weak:
        raise _RowError("address_line_1: no house number, building or street name to match on")
    pc = None
    if postcode:
        collector.anchor(postcode)  # written without its space
        collector.anchor(postcode[:-3])  # the outward code of "NS4 7QJ"
        collector.words((postcode, postcode[:-3], postcode[-3:]))
        pc = collector.hex(Keyed.POSTCODE, postcode)
    entry_id = _entry_id(
        collector, line, "protected_addresses", " ".join(first), " ".join(second), postcode or ""
    )
    return Place(
        id=entry_id,
        label=collector.hex(Keyed.LABEL, label_key(row["label"])),
        strong=tuple(strong),
        weak=tuple(weak),
        pc=pc,
    )
