"""Recipient facts for the example council: classes, lookalikes, case parties, To/Cc against Bcc."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest

from smtpguard.decide.domains import load_domain_groups
from smtpguard.decide.facts import (
    CASE_ALLOWED,
    CASE_RESTRICTED,
    CASE_UNLISTED,
    FIRST_TIME,
    LOOKALIKE,
    OBSOLETE,
    VISIBLE,
    RecipientFacts,
)
from smtpguard.decide.recipients import (
    classify_recipient,
    count_external_visible,
    recipient_domain,
    visible_addresses,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example"
GROUPS = load_domain_groups(EXAMPLE / "domains.csv")


def _parties() -> dict[str, list[tuple[str, str]]]:
    """The example case register, by address, as the relay hands it over."""
    by_address: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with (EXAMPLE / "case_parties.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            by_address[row["email"].lower()].append((row["case_ref"], row["access"]))
    return by_address


PARTIES = _parties()


def classify(
    address: str,
    *,
    cases: tuple[str, ...] = (),
    first_time: bool = False,
    visible: frozenset[str] = frozenset(),
) -> RecipientFacts:
    return classify_recipient(
        address,
        GROUPS,
        visible=visible,
        first_time=first_time,
        parties=PARTIES.get(address.lower(), []),
        cases=cases,
    )


@pytest.mark.parametrize(
    "address, classes, facts, imitated",
    [
        ("j.okafor@northshire.gov.uk", ("internal", "secure"), set(), None),
        ("duty@children.northshire.gov.uk", ("internal", "secure"), set(), None),
        ("a.okonjo@nhs.net", ("secure",), {FIRST_TIME}, None),
        ("dsl@oakfield.northshire.sch.uk", ("partner",), {FIRST_TIME}, None),
        ("ian.royce@northshire.pnn.police.uk", ("secure",), {FIRST_TIME}, None),
        ("dan.hart77@gmail.com", ("webmail",), {FIRST_TIME}, None),
        ("someone@example.org", ("external",), {FIRST_TIME}, None),
        ("guardian@cafcas.gov.uk", ("secure",), {FIRST_TIME, LOOKALIKE}, "cafcass.gov.uk"),
        ("x@\u0441afcass.gov.uk", ("secure",), {FIRST_TIME, LOOKALIKE}, "cafcass.gov.uk"),
        ("x@XN--AFCASS-HRF.GOV.UK", ("secure",), {FIRST_TIME, LOOKALIKE}, "cafcass.gov.uk"),
        ("dan.hart77@gmial.com", ("external",), {FIRST_TIME, LOOKALIKE}, "gmail.com"),
        ("dan.hart77@gmail.co.uk", ("external",), {FIRST_TIME, LOOKALIKE}, "gmail.com"),
        ("k@northshlre.gov.uk", ("secure",), {FIRST_TIME, LOOKALIKE}, "northshire.gov.uk"),
        ("old.team@northshire.gcsx.gov.uk", ("obsolete", "secure"), {FIRST_TIME, OBSOLETE}, None),
        ("old.team@gsi.gov.uk", ("obsolete", "secure"), {FIRST_TIME, OBSOLETE}, None),
    ],
)
def test_class_and_facts_of_each_recipient(
    address: str, classes: tuple[str, ...], facts: set[str], imitated: str | None
) -> None:
    result = classify(address, first_time=True)
    assert result.address == address
    assert result.classes == classes
    assert result.facts == facts
    assert result.lookalike_of == imitated


def test_internal_recipients_are_never_first_time_or_lookalikes() -> None:
    result = classify("new.starter@northshire.gov.uk", first_time=True)
    assert result.is_internal
    assert result.facts == frozenset()


@pytest.mark.parametrize(
    "address, domain",
    [
        ("Dan.Hart77@GMAIL.com", "gmail.com"),
        ("x@XN--MNCHEN-3YA.DE", "münchen.de"),
        ('"quoted local"@nhs.net', "nhs.net"),
        ("two..dots@gmail.com", "gmail.com"),  # refused by email-validator: raw domain
        ("x@nhs.net.", "nhs.net"),
        ("x@foo_bar.example.org", "foo_bar.example.org"),
        ("x@localhost", "localhost"),
        ("no-at-sign", ""),
        ("", ""),
    ],
)
def test_domain_is_normalised_and_never_raises(address: str, domain: str) -> None:
    assert recipient_domain(address) == domain


@pytest.mark.parametrize(
    "address, classes",
    [
        ("two..dots@gmail.com", ("webmail",)),
        ("x@nhs.net.", ("secure",)),
        ("no-at-sign", ("external",)),
        ("x@[10.0.0.1]", ("external",)),
        ("x@localhost", ("external",)),
    ],
)
def test_an_address_email_validator_refuses_is_still_classified(
    address: str, classes: tuple[str, ...]
) -> None:
    assert classify(address).classes == classes


@pytest.mark.parametrize(
    "address, cases, facts, allowed, restricted",
    [
        # B3: the alleged perpetrator, on a message about his case
        ("dan.hart77@gmail.com", ("CS-204817",), {CASE_RESTRICTED}, (), ("CS-204817",)),
        ("karen.hart84@hotmail.co.uk", ("CS-204817",), {CASE_ALLOWED}, ("CS-204817",), ()),
        # B4: the mother of case CS-204817 sent case CS-311092's material
        ("karen.hart84@hotmail.co.uk", ("CS-311092",), {CASE_UNLISTED}, (), ()),
        # a solicitor in two cases, one of them this message's
        (
            "s.mills@millsandco-solicitors.co.uk",
            ("CS-275530", "CS-311092"),
            {CASE_ALLOWED},
            ("CS-275530",),
            (),
        ),
        (
            "s.mills@millsandco-solicitors.co.uk",
            ("CS-204817", "CS-275530"),
            {CASE_ALLOWED},
            ("CS-204817", "CS-275530"),
            (),
        ),
        # restricted in one of the message's cases, allowed in none
        (
            "shane.doyle@yahoo.co.uk",
            ("CS-311092", "CS-204817"),
            {CASE_RESTRICTED},
            (),
            ("CS-311092",),
        ),
        # no case in the message: the register says nothing about it
        ("dan.hart77@gmail.com", (), set(), (), ()),
        # not in the register at all: not "unlisted", just not a party
        ("someone@example.org", ("CS-204817",), set(), (), ()),
        # the register is matched case-insensitively; the message's spelling is kept
        ("DAN.HART77@gmail.com", ("cs-204817",), {CASE_RESTRICTED}, (), ("cs-204817",)),
    ],
)
def test_case_facts(
    address: str,
    cases: tuple[str, ...],
    facts: set[str],
    allowed: tuple[str, ...],
    restricted: tuple[str, ...],
) -> None:
    result = classify(address, cases=cases)
    assert result.facts == facts
    assert result.cases_allowed == allowed
    assert result.cases_restricted == restricted


def test_both_allowed_and_restricted_in_one_case_shows_both() -> None:
    result = classify_recipient(
        "x@example.org",
        GROUPS,
        visible=frozenset(),
        first_time=False,
        parties=[("CS-1", "allowed"), ("CS-1", "restricted")],
        cases=["CS-1"],
    )
    assert result.facts == {CASE_ALLOWED, CASE_RESTRICTED}


def test_an_unreadable_access_counts_as_restricted() -> None:
    result = classify_recipient(
        "x@example.org",
        GROUPS,
        visible=frozenset(),
        first_time=False,
        parties=[("CS-1", " Allowed "), ("CS-2", "allowd")],
        cases=["CS-1", "CS-2"],
    )
    assert result.cases_allowed == ("CS-1",)
    assert result.cases_restricted == ("CS-2",)


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([("To", "Karen Hart <Karen.Hart84@Hotmail.co.uk>")], {"karen.hart84@hotmail.co.uk"}),
        (
            [("to", '"Hart, Karen" <karen.hart84@hotmail.co.uk>, p.ash@brightwaterlaw.co.uk')],
            {"karen.hart84@hotmail.co.uk", "p.ash@brightwaterlaw.co.uk"},
        ),
        (
            [("CC", "a@nhs.net"), ("Cc", "b@nhs.net"), ("To", "a@NHS.NET")],
            {"a@nhs.net", "b@nhs.net"},
        ),
        ([("Bcc", "hidden@gmail.com"), ("From", "j.okafor@northshire.gov.uk")], set()),
        ([("Reply-To", "r@gmail.com"), ("Resent-To", "s@gmail.com")], set()),
        ([("To", "undisclosed-recipients:;")], set()),
        ([("To", "family: a@gmail.com, b@gmail.com;")], {"a@gmail.com", "b@gmail.com"}),
        ([("To", "=?utf-8?q?J=C3=B6?= <jo@example.org>")], {"jo@example.org"}),
        ([("To", '"x@gmail.com" <real@nhs.net>')], {"real@nhs.net"}),  # a name is not an address
        ([("To", "x@XN--AFCASS-HRF.GOV.UK")], {"x@\u0441afcass.gov.uk"}),
        ([("To", "<<<>>>@@, ;;")], set()),
        ([("To", "(unclosed comment j@example.org")], {"j@example.org"}),
        ([("To", '"Smith <j@example.org>')], {"j@example.org"}),
        ([("To", "a b c j@example.org")], {"j@example.org"}),
        ([("To", "j@example.org; k@example.org")], {"j@example.org", "k@example.org"}),
        ([("To", "")], set()),
        ([], set()),
    ],
)
def test_visible_addresses_are_to_and_cc(
    headers: list[tuple[str, str]], expected: set[str]
) -> None:
    assert visible_addresses(headers) == expected


def test_visible_fact_is_to_and_cc_not_bcc() -> None:
    visible = visible_addresses(
        [
            ("To", "Karen Hart <karen.hart84@hotmail.co.uk>"),
            ("Cc", "j.okafor@northshire.gov.uk"),
            ("Bcc", "p.ash@brightwaterlaw.co.uk"),
        ]
    )
    assert VISIBLE in classify("KAREN.HART84@hotmail.co.uk", visible=visible).facts
    assert VISIBLE in classify("j.okafor@northshire.gov.uk", visible=visible).facts
    assert VISIBLE not in classify("p.ash@brightwaterlaw.co.uk", visible=visible).facts


@pytest.mark.parametrize(
    "to, expected",
    [
        ("", 0),
        ("j.okafor@northshire.gov.uk, duty@children.northshire.gov.uk", 0),
        ("j.okafor@northshire.gov.uk, a@gmail.com", 1),
        ("a@gmail.com, A@GMAIL.COM, Someone <a@gmail.com>", 1),  # distinct addresses
        ("a@gmail.com, b@gmail.com, c@nhs.net, d@northshire.gcsx.gov.uk", 4),
        ("a@northshire.gov.uk.evil.example", 1),  # internal only by its first labels
    ],
)
def test_count_of_external_visible_addresses(to: str, expected: int) -> None:
    visible = visible_addresses([("To", to), ("Bcc", "z1@gmail.com, z2@gmail.com")])
    assert count_external_visible(visible, GROUPS) == expected
