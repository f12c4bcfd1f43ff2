"""The council's domain groups (`domains.csv`): which recipients are internal, secure, webmail, ...

Columns `domain,group`, as the example council exports them; other columns
(a note, an owner) are allowed and ignored. A row names one domain exactly:
`nhs.net` covers `nhs.net` and not `mail.nhs.net`. A leading `*.` covers every
subdomain at any depth but not the bare domain: `*.gov.uk` covers
`education.gov.uk` and `a.b.gov.uk`, not `gov.uk`. That is why the example lists
`northshire.gov.uk` and `*.northshire.gov.uk` separately: a council can trust a
parent's subdomains without trusting the parent, or the reverse.

A domain may belong to several groups through different rows (`gcsx.gov.uk`
is `obsolete` exactly and `secure` through `*.gov.uk`); `groups_of` gives them
all, most specific first, so rules can tell the two apart. The same pattern in
two groups is an error: the council must say which it means.

Domains are compared in one normal form: lower case, no trailing dot, an
internationalised name in Unicode (`xn--mnchen-3ya.de` and `München.de` are
the same row). Every mistake in the file is `file:line: reason`, all of them in
one error, so an administrator fixes the export in one pass.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import idna

from smtpguard.decide.facts import EXTERNAL, INTERNAL

COLUMNS = ("domain", "group")
# A group is named in rules and in `scan --json`: a plain lower-case identifier.
_GROUP = re.compile(r"[a-z][a-z0-9_]*")
# "external" is what a recipient in no group is; a group of that name would be ambiguous.
RESERVED_GROUPS = frozenset({EXTERNAL})


def normalise_domain(domain: str) -> str:
    """The normal form of a domain name; ValueError says, in words, why it is not one."""
    text = domain.strip()
    if text.endswith("."):
        text = text[:-1]  # one: the DNS root; "nhs.net.." is a mistake, not a spelling
    if not text:
        raise ValueError("the domain is empty")
    if "@" in text:
        raise ValueError(f"{text} is an address: write only the part after @")
    if text.endswith("."):
        raise ValueError(f"{text} is not a valid domain name (Empty Label)")
    try:
        unicode_form: str = idna.decode(idna.encode(text, uts46=True, std3_rules=True))
    except idna.IDNAError as exc:
        raise ValueError(f"{text} is not a valid domain name ({exc})") from None
    if unicode_form.rpartition(".")[2].isdigit():
        raise ValueError(f"{text} is an IP address, not a domain name")
    return unicode_form


@lru_cache(maxsize=16384)
def domain_key(domain: str) -> str:
    """The normal form when there is one, else the lower-cased text: for lookups, never fails.

    Recipient domains were accepted by the listener already; an odd one must
    still be classified (as external), not crash the decision.
    """
    text = domain.strip().rstrip(".").lower()
    if text.isascii() and "xn--" not in text:
        return text  # the common case, and what IDNA would give for it
    try:
        return normalise_domain(text)
    except ValueError:
        return text


class DomainGroups:
    """Which configured groups a recipient domain belongs to."""

    __slots__ = ("_exact", "_known", "_patterns", "_wildcard")

    def __init__(self, exact: Mapping[str, str], wildcard: Mapping[str, str]) -> None:
        """`exact` maps domains, `wildcard` the bases of `*.base` entries, to groups; normalised."""
        self._exact = MappingProxyType(dict(exact))
        self._wildcard = MappingProxyType(dict(wildcard))
        self._known = frozenset(self._exact)
        self._patterns = self._known | frozenset(f"*.{base}" for base in self._wildcard)

    @property
    def exact(self) -> Mapping[str, str]:
        return self._exact

    @property
    def wildcard(self) -> Mapping[str, str]:
        """Bases of the `*.` entries: `gov.uk` for `*.gov.uk`."""
        return self._wildcard

    @property
    def known(self) -> frozenset[str]:
        """The domains listed exactly: the targets a lookalike imitates.

        One object for the life of the config, so lookalike checks cache on it.
        """
        return self._known

    @property
    def patterns(self) -> frozenset[str]:
        """Every entry, `*.` kept: what lookalike_of needs to know whose domains are whose.

        A `*.pnn.police.uk` entry names a registrant without naming one domain
        to imitate; its subdomains are that registrant's, not lookalikes.
        """
        return self._patterns

    @property
    def internal_domains(self) -> frozenset[str]:
        """The internal group's entries as written (`*.` kept); test a domain with is_internal."""
        return frozenset(d for d, g in self._exact.items() if g == INTERNAL) | frozenset(
            f"*.{d}" for d, g in self._wildcard.items() if g == INTERNAL
        )

    @property
    def group_names(self) -> frozenset[str]:
        """Every group the file uses, so config checks can refuse rules naming no group."""
        return frozenset(self._exact.values()) | frozenset(self._wildcard.values())

    def groups_of(self, domain: str) -> tuple[str, ...]:
        """Every group of `domain`: the exact entry first, then wildcards longest first."""
        key = domain_key(domain)
        found: list[str] = []
        exact = self._exact.get(key)
        if exact is not None:
            found.append(exact)
        labels = key.split(".")
        for start in range(1, len(labels)):
            group = self._wildcard.get(".".join(labels[start:]))
            if group is not None and group not in found:
                found.append(group)
        return tuple(found)

    def is_internal(self, domain: str) -> bool:
        return INTERNAL in self.groups_of(domain)


def load_domain_groups(path: Path) -> DomainGroups:
    """Read `domains.csv`; ValueError with every problem, each as `path:line: reason`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text") from None
    return parse_domain_groups(text, str(path))


def parse_domain_groups(text: str, source: str = "<domains>") -> DomainGroups:
    """The rows of a `domains.csv` already read; `source` names it in each problem."""
    problems: list[str] = []
    exact: dict[str, str] = {}
    wildcard: dict[str, str] = {}
    seen: dict[str, tuple[str, int]] = {}  # "nhs.net" / "*.gov.uk" -> (group, line)
    rows = _rows(text)
    header = next(rows, None)
    if header is None:
        raise ValueError(f"{source}:1: the file is empty: expected the header domain,group")
    header_line, names = header
    columns = [name.strip().lower() for name in names]
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"{source}:{header_line}: missing column(s) {', '.join(missing)}"
            " (the header must name domain,group)"
        )
    twice = sorted({c for c in COLUMNS if columns.count(c) > 1})
    if twice:
        raise ValueError(f"{source}:{header_line}: column(s) {', '.join(twice)} named twice")
    at_domain, at_group = columns.index("domain"), columns.index("group")
    for line, cells in rows:
        where = f"{source}:{line}"
        if cells[0].lstrip().startswith("#"):
            continue  # a comment row
        if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns) :]):
            problems.append(
                f"{where}: {len(cells)} values but the header has {len(columns)} columns"
            )
            continue
        raw_domain = cells[at_domain].strip() if at_domain < len(cells) else ""
        group = cells[at_group].strip() if at_group < len(cells) else ""
        pattern = _pattern(raw_domain, where, problems)
        if not _group_ok(group, where, problems) or pattern is None:
            continue
        previous = seen.get(pattern)
        if previous is not None:
            other_group, other_line = previous
            if other_group == group:
                problems.append(
                    f"{where}: duplicate row: {pattern} is already on line {other_line}"
                )
            else:
                problems.append(
                    f"{where}: {pattern} is listed in two groups:"
                    f" {other_group} (line {other_line}) and {group}"
                )
            continue
        seen[pattern] = (group, line)
        if pattern.startswith("*."):
            wildcard[pattern[2:]] = group
        else:
            exact[pattern] = group
    if problems:
        raise ValueError("\n".join(problems))
    return DomainGroups(exact, wildcard)


def _rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records with the line each starts on."""
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if any(cell.strip() for cell in cells):
            yield line, cells


def _pattern(raw: str, where: str, problems: list[str]) -> str | None:
    """`nhs.net` or `*.gov.uk` in normal form, or None with the problem recorded."""
    wild = raw.startswith("*.")
    name = raw[2:] if wild else raw
    if "*" in name:
        problems.append(f"{where}: {raw}: a wildcard is only allowed as a leading *. (*.gov.uk)")
        return None
    try:
        domain = normalise_domain(name)
    except ValueError as exc:
        problems.append(f"{where}: {'the wildcard base is empty' if wild and not name else exc}")
        return None
    if not wild and "." not in domain:
        problems.append(f"{where}: {domain} is not a mail domain (it needs at least two labels)")
        return None
    return f"*.{domain}" if wild else domain


def _group_ok(group: str, where: str, problems: list[str]) -> bool:
    if not group:
        problems.append(f"{where}: the group is empty")
        return False
    if not _GROUP.fullmatch(group):
        problems.append(
            f"{where}: group {group!r} must be a lower-case name like secure"
            " (letters, digits and _)"
        )
        return False
    if group in RESERVED_GROUPS:
        problems.append(f"{where}: group {group} is reserved: a domain in no group is {group}")
        return False
    return True
