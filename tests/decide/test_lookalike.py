"""Lookalike domains against the example council's known domains: typos, homoglyphs, labels."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from smtpguard.decide.domains import load_domain_groups
from smtpguard.decide.lookalike import edit_distance, lookalike_of, max_edits, skeleton

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example" / "domains.csv"
GROUPS = load_domain_groups(EXAMPLE)
KNOWN = GROUPS.patterns  # what classify_recipient passes


@pytest.mark.parametrize(
    "domain, imitated",
    [
        # typos within the edits the name's length allows
        ("cafcas.gov.uk", "cafcass.gov.uk"),  # under *.gov.uk, still a lookalike
        ("gmial.com", "gmail.com"),
        ("northshlre.gov.uk", "northshire.gov.uk"),
        ("brigthwaterlaw.co.uk", "brightwaterlaw.co.uk"),
        ("northshyre-fosterng.org.uk", "northshire-fostering.org.uk"),  # two edits in 20
        ("mail.gmial.com", "gmail.com"),
        # homoglyphs and confusables
        ("hotmai1.com", "hotmail.com"),
        ("rnillsandco-solicitors.co.uk", "millsandco-solicitors.co.uk"),
        ("\u0441afcass.gov.uk", "cafcass.gov.uk"),  # Cyrillic es
        ("xn--afcass-hrf.gov.uk", "cafcass.gov.uk"),  # the same, as the envelope may carry it
        ("g\u043e\u043eglemail.com", "googlemail.com"),  # Cyrillic o twice
        ("\u03b1ol.com", "aol.com"),  # Greek alpha: a confusable counts even in three letters
        ("ao1.com", "aol.com"),
        ("gma\u00edl.com", "gmail.com"),  # an accent
        ("idoud.com", "icloud.com"),  # cl reads as d
        ("g00glemail.com", "googlemail.com"),
        # a label too many, or too few
        ("cafcass.gov.uk.co", "cafcass.gov.uk"),
        ("nhs.net.uk", "nhs.net"),
        ("gmail.com.mailbox.example", "gmail.com"),
        ("hotmail.co", "hotmail.co.uk"),
        ("cafcass.gov", "cafcass.gov.uk"),
        ("justice.gov", "justice.gov.uk"),
        ("live.co", "live.co.uk"),
        # the suffix one edit away
        ("nhs.nett", "nhs.net"),
        ("gmail.co", "gmail.com"),
        ("cafcass.go.uk", "cafcass.gov.uk"),
        ("aol.cm", "aol.com"),
        # the same name under an open commercial suffix
        ("gmail.co.uk", "gmail.com"),
        ("northshire.co.uk", "northshire.gov.uk"),
        ("cafcass.org.uk", "cafcass.gov.uk"),
        ("northshire-fostering.com", "northshire-fostering.org.uk"),
        ("outlook.co.uk", "outlook.com"),
        # separators
        ("cafcass-gov.uk", "cafcass.gov.uk"),
        ("mail.cafcass-gov.uk", "cafcass.gov.uk"),
        ("cafcassgov.uk", "cafcass.gov.uk"),
    ],
)
def test_lookalike_names_what_it_imitates(domain: str, imitated: str) -> None:
    assert lookalike_of(domain, KNOWN) == imitated


@pytest.mark.parametrize(
    "domain",
    [
        "education.gov.uk",  # under *.gov.uk, close to no known domain
        "hmcts.gov.uk",
        "oakfield.northshire.sch.uk",  # the county's name in a school's own domain
        "northshire.pnn.police.uk",
        "northshire.police.uk",  # police.uk cannot be registered at will
        "northshire.nhs.uk",
        "northshire.ac.uk",
        "nhs.uk",  # a public suffix, not nhs.net's lookalike
        "nhs.scot",
        "gmx.com",
        "example.org",
        "bbc.co.uk",
        "hse.gov.uk",  # one letter from gse.gov.uk: three-letter acronyms are all taken
        "dfe.gov.uk",
        "live.com",  # four letters: the suffix swap needs five
        "aol.co.uk",
        "team.northshire.gov.uk",  # subdomains belong to the known domain's owner
        "mail.nhs.net",
        "gsx.gov.uk",  # named by *.gsx.gov.uk, not a typo of gcsx.gov.uk
        "x.gsx.gov.uk",
        "met.pnn.police.uk",
        "northumberland.gov.uk",
        "localhost",
        "",
    ],
)
def test_near_misses_are_not_lookalikes(domain: str) -> None:
    assert lookalike_of(domain, KNOWN) is None


@pytest.mark.parametrize("domain", sorted(GROUPS.known))
def test_a_known_domain_is_not_its_own_lookalike(domain: str) -> None:
    assert lookalike_of(domain, KNOWN) is None
    assert lookalike_of(domain.upper() + ".", KNOWN) is None


def test_every_single_edit_of_a_known_name_is_found() -> None:
    """The index must miss no edit the threshold allows, wherever in the name it falls."""
    exempt = GROUPS.known | {p[2:] for p in GROUPS.patterns if p.startswith("*.")}
    checked = 0
    for domain in sorted(GROUPS.known):
        name, _, rest = domain.partition(".")
        if max_edits(name) == 0:
            continue
        for typo in _single_edits(name):
            candidate = f"{typo}.{rest}"
            if typo and candidate not in exempt:
                checked += 1
                assert lookalike_of(candidate, KNOWN) is not None, candidate
    assert checked > 1000


def _single_edits(name: str) -> set[str]:
    letters = "aeinorstz-"
    edits = {name[:i] + name[i + 1 :] for i in range(len(name))}
    edits |= {name[:i] + c + name[i + 1 :] for i in range(len(name)) for c in letters}
    edits |= {name[:i] + c + name[i:] for i in range(len(name) + 1) for c in letters}
    edits |= {name[:i] + name[i + 1] + name[i] + name[i + 2 :] for i in range(len(name) - 1)}
    return edits - {name}


@pytest.mark.parametrize(
    "domain, known, imitated",
    [
        ("lancastr.gov.uk", "lancaster.gov.uk", "lancaster.gov.uk"),
        ("doncaster.gov.uk", "lancaster.gov.uk", None),  # two edits in nine letters: a real place
        ("stratford.gov.uk", "stafford.gov.uk", None),
        ("northshore.gov.uk", "northshire.gov.uk", "northshire.gov.uk"),
        ("nrothshlre.gov.uk", "northshire.gov.uk", "northshire.gov.uk"),  # two in ten
        ("nrothshlrr.gov.uk", "northshire.gov.uk", None),  # three
        ("gmaiil.com", "gmail.com", "gmail.com"),
        ("gmaiill.com", "gmail.com", None),
        ("cafcas.gov.uk", "gov.uk", None),  # a listed public suffix vouches for nothing...
        ("cafcas.gov.uk", "gov.uk cafcass.gov.uk", "cafcass.gov.uk"),  # ...and exempts nothing
        ("partner.co.uk", "secure.partner.co.uk", None),  # one registrant
        ("mail.partnr.co.uk", "mail.partner.co.uk", "mail.partner.co.uk"),
        ("gsx.gov.uk", "gcsx.gov.uk", "gcsx.gov.uk"),  # without the wildcard entry
        ("comwall.gov.uk", "cornwall.gov.uk", "cornwall.gov.uk"),  # the known one has the rn
        ("cornvvall.gov.uk", "cornwall.gov.uk", "cornwall.gov.uk"),
        ("comwal.gov.uk", "cornwall.gov.uk", "cornwall.gov.uk"),  # a confusable and a typo
        ("anything.example", "", None),
    ],
)
def test_thresholds_and_owners(domain: str, known: str, imitated: str | None) -> None:
    assert lookalike_of(domain, known.split()) == imitated


@pytest.mark.parametrize(
    "name, edits",
    [("aol", 0), ("nhs", 0), ("cjsm", 1), ("gmail", 1), ("lancaster", 1), ("northshire", 2)],
)
def test_edits_allowed_grow_with_the_name(name: str, edits: int) -> None:
    assert max_edits(name) == edits


@pytest.mark.parametrize(
    "a, b, distance",
    [
        ("gmail", "gmail", 0),
        ("gmail", "gmial", 1),  # one transposition
        ("cafcass", "cafcas", 1),
        ("northshire", "northshlre", 1),
        ("northshire", "nrothshlre", 2),
        ("hotmail", "hotmial", 1),
        ("ab", "ba", 1),
        ("ca", "abc", 3),  # optimal string alignment: no edit inside a transposed pair
        ("kitten", "sitting", 3),  # capped at limit + 1
        ("", "abc", 3),
        ("abcdef", "badcfe", 3),
    ],
)
def test_edit_distance(a: str, b: str, distance: int) -> None:
    assert edit_distance(a, b, limit=2) == distance
    assert edit_distance(b, a, limit=2) == distance


def test_edit_distance_limit() -> None:
    assert edit_distance("kitten", "sitting", limit=5) == 3
    assert edit_distance("abcdef", "badcfe", limit=5) == 3


@pytest.mark.parametrize(
    "text, looks_like",
    [
        ("rnicrosoft", "microsoft"),
        ("paypa1", "paypal"),
        ("g00gle", "google"),
        ("\u0441afcass", "cafcass"),  # Cyrillic es
        ("\u0440\u0430\u0443\u0440\u0430l", "paypal"),  # Cyrillic er, a, u
        ("\u03b1\u03bfl", "aol"),  # Greek alpha, omicron
        ("\u0578\u0570s", "nhs"),  # Armenian vo, ho
        ("gma\u00edl", "gmail"),
        ("\u0131cloud", "idoud"),  # dotless i; cl reads as d
        ("vvikipedia", "wikipedia"),
        ("GMAIL", "gmail"),
    ],
)
def test_skeleton(text: str, looks_like: str) -> None:
    assert skeleton(text) == skeleton(looks_like)


def test_known_may_be_any_collection() -> None:
    as_list = sorted(KNOWN)
    assert lookalike_of("gmial.com", as_list) == "gmail.com"
    assert lookalike_of("gmial.com", set(KNOWN)) == "gmail.com"


def test_answers_hold_among_three_thousand_known_domains() -> None:
    rng = random.Random(20240611)
    filler = {
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(12, 16)))
        + rng.choice([".com", ".co.uk", ".org.uk", ".gov.uk"])
        for _ in range(3000)
    }
    big = frozenset(KNOWN | filler)
    assert lookalike_of("cafcas.gov.uk", big) == "cafcass.gov.uk"
    assert lookalike_of("\u0441afcass.gov.uk", big) == "cafcass.gov.uk"
    assert lookalike_of("nhs.net.uk", big) == "nhs.net"
    assert lookalike_of("education.gov.uk", big) is None
    some = [domain for domain in sorted(filler) if domain[0] != domain[1]][:50]
    for domain in some:
        name, _, rest = domain.partition(".")
        assert lookalike_of(f"{name[1]}{name[0]}{name[2:]}.{rest}", big) == domain
        assert lookalike_of(domain, big) is None
