"""Lookalike recipient domains: a slip of the keyboard or a homoglyph away from a known one (B2).

`lookalike_of(domain, known)` names the known domain that `domain` imitates,
or None. "Known" is every domain the council lists exactly in `domains.csv`:
its own, its partners', the webmail providers'. A real address there is the
norm; one keystroke from it is almost always a mistake (or a trap), and mail
that goes there goes to a stranger.

Never a lookalike: a known domain itself, and any subdomain of one
(`team.northshire.gov.uk`, `mail.nhs.net`): the owner of a domain owns its
subdomains. `known` may also hold the `*.base` entries of wildcard groups
(DomainGroups.patterns): a wildcard names a registrant, not one domain to
imitate, so `base` and its subdomains are not lookalikes (`*.gsx.gov.uk` makes
`gsx.gov.uk` the retired secure network it is, not a typo of `gcsx.gov.uk`),
unless `base` is a public suffix (`*.gov.uk` vouches for no one). Nor is a
domain a lookalike of its own relative: `partner.co.uk` and a listed
`secure.partner.co.uk` have one registrant.

Registrable parts come from the Public Suffix List, so `gov.uk`, `nhs.uk`,
`police.uk` and `*.sch.uk` are suffixes like `co.uk`: `nhs.uk` is a suffix, not
a lookalike of `nhs.net`, and `oakfield.northshire.sch.uk` is the school's own
name, not an imitation of `northshire.gov.uk`.

A domain that merely falls under a wildcard group (`education.gov.uk` under
`*.gov.uk`) is judged like any other: it is a lookalike only if it is close to
a domain listed exactly (`cafcas.gov.uk` is, though `*.gov.uk` covers it).

The rules, in order (3 and 4 are scored together: the edits, plus one for a
different suffix; the lowest score wins, then the first known domain by name):

1. embedded: a known domain followed by more labels: `cafcass.gov.uk.co`,
   `nhs.net.uk`, `gmail.com.mailbox.example`.
2. truncated: a known domain with its last label(s) missing: `hotmail.co`,
   `cafcass.gov` (`justice.gov` is the US Department of Justice, and still a
   lookalike: that is where a report meant for `justice.gov.uk` would go).
3. near: some label of the domain, with what follows it, is close to a known
   domain's registrable name and suffix. Names are compared as typed and as
   their confusable skeleton (below); the edits allowed grow with the length
   of the known name (`max_edits`): none for three letters or fewer, one up to
   nine, two from ten. The suffix may be the same or one edit away
   (`nhs.nett`, `gmail.co`, `cafcass.go.uk`).
4. suffix swap: the same name (or a confusable of it), five letters or more,
   registered under an open commercial suffix instead (`gmail.co.uk`,
   `northshire.co.uk`, `cafcass.org.uk`). UK senders type `.co.uk` and `.com`
   from habit and squatters register them first. Google's mail is gmail.com
   and googlemail.com; `gmail.co.uk` is nobody the council means to write to,
   so it is a lookalike. The public-sector suffixes (`police.uk`, `nhs.uk`,
   `ac.uk`, `sch.uk`) are excluded on the lookalike's side: nobody can
   register them at will, and a county's name is legitimately shared by its
   council, its police force, its NHS trust and its university.
5. separators: the registrable domain spelled with the dots of a known one
   turned into hyphens or dropped: `cafcass-gov.uk`, `mail.cafcass-gov.uk`,
   `cafcassgov.uk`.

Why the thresholds: three-letter names are acronyms and the acronym space is
full (`hse.gov.uk` is the Health and Safety Executive, one letter from the
obsolete `gse.gov.uk`; `bol.com` from `aol.com`), so only a confusable (`ao1`)
counts there. One edit in four to nine letters is the classic typo (`gmial`,
`cafcas`, `hotmial`). Two edits only from ten letters: below that two edits
join real, unrelated names (`lancaster`/`doncaster`, `stafford`/`stratford`),
above it they are still a small fraction of the name (`northshlre`,
`rnillsandco-solicitors`). Damerau-Levenshtein is computed in its optimal
string alignment form, which counts the same as the unrestricted one for
differences this small.

Confusable skeleton: after Unicode decomposition, accents are dropped (`gmaíl`
is `gmail`), and the characters that pass for ASCII letters in a domain name
are mapped to them: Cyrillic and Greek (`cafcass` with a Cyrillic U+0441 for
its `c`), Armenian, a few Latin extensions (dotless i, script g), and the ASCII
tricks `0`/`o`, `1`/`l`, `rn`/`m`, `vv`/`w`, `cl`/`d`. This is Unicode TR39's
skeleton restricted to what a lower-case IDN label can hold (IDNA has already
mapped upper case, full-width and compatibility forms), written out here so
that it is reviewable; a table covering every script would mostly add
characters that cannot appear in a valid domain label.

False positives are fixed by listing the domain: a listed domain is known and
never a lookalike (`live.com`, `yahoo.fr`, if the council writes to them).

Speed: known domains are indexed once per set (symmetric deletion: every
string within the allowed edits of a known name shares a deletion variant with
it), so one check is a few hundred dictionary look-ups whatever the size of the
set, and results are cached per domain. Measured on one core: about 30 us for
a first check against the example's 30 entries, 45 us against 3,000 (index
0.1 s and 15 MB, built once per config), 0.1 us once cached. The Public Suffix
List itself takes a quarter of a second to load, once per process.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache

from publicsuffixlist import PublicSuffixList

from smtpguard.decide.domains import domain_key

# Suffixes anyone can register and that UK senders type from habit (rule 4).
OPEN_SUFFIXES = frozenset(
    {"com", "net", "org", "info", "co", "uk", "co.uk", "org.uk", "me.uk", "ltd.uk", "plc.uk"}
)
SWAP_MIN_LENGTH = 5

# Lower-case characters that pass for ASCII letters in a domain name (TR39 confusables),
# by Unicode name so that a reviewer reads what each one is.
_CONFUSABLE_NAMES = (
    # Cyrillic
    ("CYRILLIC SMALL LETTER A", "a"),
    ("CYRILLIC SMALL LETTER VE", "b"),
    ("CYRILLIC SMALL LETTER IE", "e"),
    ("CYRILLIC SMALL LETTER KA", "k"),
    ("CYRILLIC SMALL LETTER EM", "m"),
    ("CYRILLIC SMALL LETTER O", "o"),
    ("CYRILLIC SMALL LETTER PE", "n"),
    ("CYRILLIC SMALL LETTER ER", "p"),
    ("CYRILLIC SMALL LETTER ES", "c"),
    ("CYRILLIC SMALL LETTER TE", "t"),
    ("CYRILLIC SMALL LETTER U", "y"),
    ("CYRILLIC SMALL LETTER HA", "x"),
    ("CYRILLIC SMALL LETTER SHA", "w"),
    ("CYRILLIC SMALL LETTER SOFT SIGN", "b"),
    ("CYRILLIC SMALL LETTER DZE", "s"),
    ("CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I", "i"),
    ("CYRILLIC SMALL LETTER JE", "j"),
    ("CYRILLIC SMALL LETTER IZHITSA", "v"),
    ("CYRILLIC SMALL LETTER STRAIGHT U", "y"),
    ("CYRILLIC SMALL LETTER SHHA", "h"),
    ("CYRILLIC SMALL LETTER PALOCHKA", "l"),
    ("CYRILLIC SMALL LETTER KOMI DE", "d"),
    ("CYRILLIC SMALL LETTER QA", "q"),
    ("CYRILLIC SMALL LETTER WE", "w"),
    ("CYRILLIC SMALL LETTER GHE", "r"),
    # Greek
    ("GREEK SMALL LETTER ALPHA", "a"),
    ("GREEK SMALL LETTER BETA", "b"),
    ("GREEK SMALL LETTER GAMMA", "y"),
    ("GREEK SMALL LETTER EPSILON", "e"),
    ("GREEK SMALL LETTER ETA", "n"),
    ("GREEK SMALL LETTER IOTA", "i"),
    ("GREEK SMALL LETTER KAPPA", "k"),
    ("GREEK SMALL LETTER NU", "v"),
    ("GREEK SMALL LETTER OMICRON", "o"),
    ("GREEK SMALL LETTER RHO", "p"),
    ("GREEK SMALL LETTER SIGMA", "o"),
    ("GREEK SMALL LETTER TAU", "t"),
    ("GREEK SMALL LETTER UPSILON", "u"),
    ("GREEK SMALL LETTER CHI", "x"),
    ("GREEK SMALL LETTER OMEGA", "w"),
    ("GREEK LUNATE SIGMA SYMBOL", "c"),
    ("GREEK LETTER YOT", "j"),
    # Armenian
    ("ARMENIAN SMALL LETTER AYB", "w"),
    ("ARMENIAN SMALL LETTER ZA", "q"),
    ("ARMENIAN SMALL LETTER HO", "h"),
    ("ARMENIAN SMALL LETTER VO", "n"),
    ("ARMENIAN SMALL LETTER SEH", "u"),
    ("ARMENIAN SMALL LETTER CO", "g"),
    ("ARMENIAN SMALL LETTER OH", "o"),
    # Latin letters that do not decompose to their look-alike
    ("LATIN SMALL LETTER DOTLESS I", "i"),
    ("LATIN SMALL LETTER DOTLESS J", "j"),
    ("LATIN SMALL LETTER ALPHA", "a"),
    ("LATIN SMALL LETTER SCRIPT G", "g"),
    ("LATIN SMALL LETTER IOTA", "i"),
    ("LATIN LETTER DENTAL CLICK", "l"),
    ("LATIN SMALL LETTER L WITH STROKE", "l"),
    ("LATIN SMALL LETTER O WITH STROKE", "o"),
    ("LATIN SMALL LETTER D WITH STROKE", "d"),
    ("LATIN SMALL LETTER H WITH STROKE", "h"),
    ("LATIN SMALL LETTER TONE SIX", "b"),
    ("LATIN LETTER SMALL CAPITAL Y", "y"),
    ("LATIN LETTER SMALL CAPITAL I", "i"),
    # ASCII digits that read as letters
    ("DIGIT ZERO", "o"),
    ("DIGIT ONE", "l"),
)
_CONFUSABLES = {unicodedata.lookup(name): letter for name, letter in _CONFUSABLE_NAMES}
_TABLE = str.maketrans(_CONFUSABLES)
# Letter pairs that read as one letter; after the table, so "c1" and "cl" agree.
_SEQUENCES = (("rn", "m"), ("vv", "w"), ("cl", "d"))


def skeleton(text: str) -> str:
    """What `text` looks like: equal skeletons read the same to a hurried eye."""
    if not text.isascii():
        decomposed = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    text = text.lower().translate(_TABLE)
    for pair, letter in _SEQUENCES:
        text = text.replace(pair, letter)
    return text


def max_edits(name: str) -> int:
    """Edits that still make a lookalike of the registrable name `name` (see the module doc)."""
    if len(name) <= 3:
        return 0
    return 1 if len(name) <= 9 else 2


def edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Damerau-Levenshtein (optimal string alignment) distance, or limit + 1 if above limit."""
    if a == b:
        return 0
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, 1):
            cost = char_a != char_b
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if cost and i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                value = min(value, before[j - 2] + 1)
            current[j] = value
        if min(current) > limit:
            return limit + 1
        before, previous = previous, current
    return min(previous[-1], limit + 1)


def lookalike_of(domain: str, known: Collection[str]) -> str | None:
    """The known domain that `domain` imitates without being it or one of its subdomains.

    Pass the same frozenset each time (DomainGroups.patterns, or .known):
    answers are cached on it, and its index is built once.
    """
    targets = known if isinstance(known, frozenset) else frozenset(known)
    return _lookalike_of(domain, targets)


@lru_cache(maxsize=65536)
def _lookalike_of(domain: str, known: frozenset[str]) -> str | None:
    return _index(known).match(domain_key(domain))


@lru_cache(maxsize=8)
def _index(known: frozenset[str]) -> _Index:
    return _Index(known)


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@dataclass(frozen=True, slots=True)
class _Target:
    domain: str  # the known domain, reported as what is imitated
    registrable: str  # "cafcass.gov.uk" for "mail.cafcass.gov.uk"
    name: str  # "cafcass": the registrable label
    suffix: str  # "gov.uk"
    name_skeleton: str
    edits: int


class _Index:
    """The known domains arranged for the rules above."""

    def __init__(self, known: frozenset[str]) -> None:
        psl = _psl()
        bases = frozenset(domain_key(d[2:]) for d in known if d.startswith("*."))
        self.known = frozenset(domain_key(d) for d in known if not d.startswith("*."))
        # Listed names that are not a public suffix: they, and their subdomains, are theirs.
        self.owners = frozenset(d for d in self.known | bases if psl.privatesuffix(d) is not None)
        self.truncated: dict[str, str] = {}
        self.flat: dict[str, str] = {}
        self.targets: list[_Target] = []
        # Deletion variant -> the target it came from; `shared` lists any others.
        # One int per key (not a set) keeps a 3,000-domain index to tens of MB.
        self.variants: dict[str, int] = {}
        shared: dict[str, set[int]] = {}
        for domain in sorted(self.known):
            labels = domain.split(".")
            for end in range(2, len(labels)):
                self.truncated.setdefault(".".join(labels[:end]), domain)
            registrable = psl.privatesuffix(domain)
            if registrable is None:
                continue
            self.flat.setdefault(_flat(skeleton(domain)), domain)
            name, _, suffix = registrable.partition(".")
            target = _Target(domain, registrable, name, suffix, skeleton(name), max_edits(name))
            self.targets.append(target)
            number = len(self.targets) - 1
            for form in {name, target.name_skeleton}:
                for variant in _deletions(form, target.edits):
                    held = self.variants.setdefault(variant, number)
                    if held != number:
                        shared.setdefault(variant, {held}).add(number)
        self.shared = {variant: tuple(numbers) for variant, numbers in shared.items()}
        self.depth = max((t.edits for t in self.targets), default=0)

    def match(self, domain: str) -> str | None:
        if "." not in domain or domain in self.known:
            return None
        labels = domain.split(".")
        if any(".".join(labels[i:]) in self.owners for i in range(len(labels))):
            return None
        return self._embedded(labels) or self._truncated(labels) or self._near(labels)

    def _embedded(self, labels: list[str]) -> str | None:
        """Rule 1: the longest known domain inside, with labels after it."""
        for size in range(len(labels) - 1, 1, -1):
            for start in range(len(labels) - size):
                run = ".".join(labels[start : start + size])
                if run in self.known:
                    return run
        return None

    def _truncated(self, labels: list[str]) -> str | None:
        """Rule 2: ends with the leading labels of a known domain."""
        for start in range(len(labels) - 1):
            target = self.truncated.get(".".join(labels[start:]))
            if target is not None:
                return target
        return None

    def _near(self, labels: list[str]) -> str | None:
        """Rules 3 to 5: compare registrable names, then the separators."""
        domain = ".".join(labels)
        registrable = _psl().privatesuffix(domain)
        best: tuple[int, str] | None = None
        for at in range(len(labels) - 1):
            name, suffix = labels[at], ".".join(labels[at + 1 :])
            is_registrable = registrable is not None and ".".join(labels[at:]) == registrable
            name_skeleton = skeleton(name)
            for number in self._candidates(name, name_skeleton):
                target = self.targets[number]
                if target.registrable == registrable:
                    continue  # the same registrant
                edits = min(
                    edit_distance(name, target.name, target.edits),
                    edit_distance(name_skeleton, target.name_skeleton, target.edits),
                )
                if edits > target.edits:
                    continue
                if suffix == target.suffix:
                    score = edits
                elif edit_distance(suffix, target.suffix, 1) <= 1:
                    score = edits + 1
                elif (
                    is_registrable
                    and edits == 0
                    and len(target.name) >= SWAP_MIN_LENGTH
                    and suffix in OPEN_SUFFIXES
                ):
                    score = 1
                else:
                    continue
                if best is None or (score, target.domain) < best:
                    best = (score, target.domain)
        if best is not None:
            return best[1]
        if registrable is not None:
            return self.flat.get(_flat(skeleton(registrable)))
        return None

    def _candidates(self, name: str, name_skeleton: str) -> set[int]:
        found: set[int] = set()
        for form in {name, name_skeleton}:
            for variant in _deletions(form, self.depth):
                number = self.variants.get(variant)
                if number is not None:
                    found.add(number)
                    found.update(self.shared.get(variant, ()))
        return found


def _deletions(text: str, depth: int) -> Iterator[str]:
    """`text` and every string made from it by deleting up to `depth` characters."""
    level = {text}
    yield text
    for _ in range(depth):
        level = {v[:i] + v[i + 1 :] for v in level for i in range(len(v))} - {""}
        yield from level


def _flat(text: str) -> str:
    return text.replace(".", "").replace("-", "")
