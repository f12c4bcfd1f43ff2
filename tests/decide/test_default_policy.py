"""The shipped policy (config/policy.yaml) over hand-built facts: B1-B8 caught, ordinary mail not.

Facts are built the way the decide stage builds them for the example
council: each recipient's class from `config/example/domains.csv` (an exact
domain before the longest wildcard), its case facts from
`config/example/case_parties.csv` for the cases the message refers to. A
false hold in a control is a failing test.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from smtpguard.decide import NOTIFY_REVIEWERS, NOTIFY_SENDER, Action, Verdict
from smtpguard.decide.facts import (
    CASE_ALLOWED,
    CASE_RESTRICTED,
    CASE_UNLISTED,
    EXTERNAL,
    FIRST_TIME,
    INTERNAL,
    LOOKALIKE,
    OBSOLETE,
    VISIBLE,
    Attachment,
    MessageFacts,
    RecipientFacts,
)
from smtpguard.decide.policy import Policy, evaluate, load_policy
from smtpguard.detect import Confidence, Finding

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "config" / "policy.yaml"
EXAMPLE = ROOT / "config" / "example"
HIGH, MEDIUM, LOW = Confidence.HIGH, Confidence.MEDIUM, Confidence.LOW


def _rows(name: str) -> list[dict[str, str]]:
    with (EXAMPLE / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@cache
def domain_groups() -> dict[str, str]:
    return {row["domain"]: row["group"] for row in _rows("domains.csv")}


@cache
def policy() -> Policy:
    return load_policy(POLICY, groups=set(domain_groups().values()), routes={"secure-gateway"})


def classify(domain: str) -> tuple[str, ...]:
    """Every group of a domain, as the decide stage gives them: the exact entry, then
    the wildcards longest first (so northshire.gov.uk is internal and secure)."""
    groups = domain_groups()
    found = [groups[domain]] if domain in groups else []
    labels = domain.split(".")
    for start in range(1, len(labels)):
        group = groups.get("*." + ".".join(labels[start:]))
        if group is not None and group not in found:
            found.append(group)
    return tuple(found) or (EXTERNAL,)


def person(
    address: str,
    cases: tuple[str, ...] = (),
    *,
    first: bool = False,
    visible: bool = True,
    lookalike_of: str | None = None,
) -> RecipientFacts:
    """A recipient of a message about `cases`, with the facts the case register gives it."""
    domain = address.rpartition("@")[2]
    classes = classify(domain)
    internal = INTERNAL in classes
    facts: set[str] = set()
    if first and not internal:
        facts.add(FIRST_TIME)
    if visible:
        facts.add(VISIBLE)
    if lookalike_of:
        facts.add(LOOKALIKE)
    if "obsolete" in classes:
        facts.add(OBSOLETE)
    listed = [r for r in _rows("case_parties.csv") if r["email"].lower() == address.lower()]
    ours = [r for r in listed if r["case_ref"] in cases]
    allowed = tuple(sorted({r["case_ref"] for r in ours if r["access"] == "allowed"}))
    restricted = tuple(sorted({r["case_ref"] for r in ours if r["access"] != "allowed"}))
    if allowed:
        facts.add(CASE_ALLOWED)
    if restricted:
        facts.add(CASE_RESTRICTED)
    if cases and listed and not ours:
        facts.add(CASE_UNLISTED)
    return RecipientFacts(
        address, domain, classes, frozenset(facts), lookalike_of, allowed, restricted
    )


def mail(
    *findings: Finding,
    cases: tuple[str, ...] = (),
    subject: str = "Update",
    headers: tuple[tuple[str, str], ...] = (),
    attachments: tuple[Attachment, ...] = (),
    external_visible: int = 0,
    sender: str = "j.okafor@northshire.gov.uk",
) -> MessageFacts:
    return MessageFacts(
        sender=sender,
        sender_team="children",
        subject=subject,
        headers=headers,
        findings=findings,
        cases=tuple(sorted(cases)),
        attachments=attachments,
        external_visible=external_visible,
        tls=True,
    )


# Findings as the detectors report them for the example council.
CASE_REF = Finding("case_reference", "attachment:report.docx", HIGH, 1, "CS-2***17")
CHILD_IN_ZIP = Finding(
    "edm_person",
    "attachment:bundle.zip/annex.docx",
    HIGH,
    1,
    "case subject of CS-2***17 (name and date of birth)",
)
CHILD_NAME = Finding("edm_person", "body", MEDIUM, 1, "case subject of CS-2***17 (name)")
PARTY_NAME = Finding("edm_person", "body", LOW, 1, "party of CS-2***17 (name)")
NHS = Finding("nhs_number", "attachment:referral.pdf", HIGH, 1, "NHS number *** *** 5919")
DOB = Finding("date_of_birth", "body", HIGH, 1, "**/**/2015")
MARKING = Finding("protective_marking", "subject", HIGH, 1, "OFFICIAL-SENSITIVE")
PLAIN_OFFICIAL = Finding("protective_marking", "body", LOW, 1, "OFFICIAL")
SECTION_47 = Finding("keywords", "body", HIGH, 1, "keyword (child protection): section 47 enquiry")
REFUGE_WORD = Finding("keywords", "body", LOW, 1, "keyword (domestic abuse): refuge")
REFUGE_ADDRESS = Finding(
    "edm_protected_address",
    "attachment:statement.pdf",
    HIGH,
    1,
    "protected address (refuge), street line matched",
)
REFUGE_POSTCODE = Finding(
    "edm_protected_address", "body", LOW, 1, "protected address (refuge), postcode only"
)
SECURE_SUBJECT = Finding("encryption_request", "subject", HIGH, 1, "[secure]")
HIDDEN_SHEET = Finding(
    "hidden_content", "attachment:caseload.xlsx", HIGH, 2, "hidden rows, hidden sheet"
)
HIDDEN_COMMENTS = Finding("hidden_content", "attachment:draft.docx", HIGH, 1, "comments")
PREHEADER = Finding("hidden_content", "body", HIGH, 1, "hidden text")
REDACTION = Finding(
    "redaction_failure", "attachment:statement.pdf", HIGH, 1, "text under a redaction box"
)
BULK = Finding(
    "bulk_identifiers",
    "attachment:caseload.xlsx",
    HIGH,
    240,
    "240 distinct identifiers: 120 NHS numbers, 120 dates of birth",
)
CONTACT_LIST = Finding(
    "bulk_identifiers", "body", LOW, 25, "25 distinct identifiers: 20 phone numbers, 5 postcodes"
)
UNREADABLE = Finding("uninspectable", "attachment:notes.zip", HIGH, 1, "encrypted archive")
PHONE = Finding("phone_number", "body", LOW, 2, "01632 ***890")
POSTCODE = Finding("postcode", "body", MEDIUM, 1, "NS1 ***")

HART = ("CS-204817",)
COURT = "northshire.familycourt@justice.gov.uk"
MILLS = "s.mills@millsandco-solicitors.co.uk"
ASH = "p.ash@brightwaterlaw.co.uk"
GUARDIAN = "guardian.team@cafcass.gov.uk"
POLICE = "ian.royce@northshire.pnn.police.uk"
FATHER = "dan.hart77@gmail.com"
MOTHER = "karen.hart84@hotmail.co.uk"
COLLEAGUE = "m.patel@northshire.gov.uk"
MANAGER = "d.clarke@northshire.gov.uk"


@dataclass(frozen=True)
class Expect:
    action: Action
    rule: str | None = None  # a rule that must be among those fired
    approvals: int = 0
    route: str | None = None
    require_tls: bool | None = None


@dataclass(frozen=True)
class Scenario:
    message: MessageFacts
    recipients: tuple[RecipientFacts, ...]
    expect: Mapping[str, Expect] = field(default_factory=dict)


def quarantine(
    rule: str, approvals: int = 1, *, route: str | None = None, require_tls: bool | None = None
) -> Expect:
    return Expect(Action.QUARANTINE, rule, approvals, route, require_tls)


def delay(rule: str = "sensitive-to-first-time-recipient") -> Expect:
    return Expect(Action.DELAY, rule)


PASS = Expect(Action.PASS)
CLEAN = Expect(Action.PASS, require_tls=False)
TLS = Expect(Action.PASS, "sensitive-needs-verified-tls", require_tls=True)
RESTRICTED = quarantine("case-material-to-restricted-party", 2)
PROTECTED = quarantine("protected-address-outside-council", 2)


def scenario(message: MessageFacts, *recipients: RecipientFacts, **expect: Expect) -> Scenario:
    """`expect` by position: r0, r1, ... in the order of `recipients`."""
    return Scenario(
        message,
        recipients,
        {recipients[int(k.removeprefix("r"))].address: v for k, v in expect.items()},
    )


SCENARIOS: dict[str, Scenario] = {
    # -- B1: case data leaves only over verified TLS or the secure route
    "b1-case-material-to-unknown-domain-requires-tls": scenario(
        mail(CASE_REF, cases=HART),
        person("reviewer@independent-review.co.uk", HART),
        r0=TLS,
    ),
    "b1-secure-subject-routes-through-the-gateway": scenario(
        mail(CASE_REF, SECURE_SUBJECT, cases=HART, subject="[secure] report"),
        person("reviewer@independent-review.co.uk", HART),
        person(COURT, HART),
        r0=Expect(Action.PASS, "encryption-requested", route="secure-gateway", require_tls=True),
        r1=Expect(Action.PASS, "encryption-requested", route="secure-gateway", require_tls=True),
    ),
    "b1-secure-subject-never-lifts-a-hold": scenario(
        mail(CASE_REF, SECURE_SUBJECT, cases=HART, subject="[encrypt] report"),
        person(FATHER, HART),
        r0=quarantine("case-material-to-restricted-party", 2, route="secure-gateway"),
    ),
    # -- B2: the wrong address
    "b2-lookalike-matching-a-wildcard-group": scenario(
        mail(CASE_REF, cases=HART),
        person("guardian.team@cafcas.gov.uk", HART, first=True, lookalike_of="cafcass.gov.uk"),
        r0=quarantine("sensitive-to-lookalike-domain"),
    ),
    "b2-lookalike-with-an-extra-label": scenario(
        mail(NHS),
        person("a.okonjo@nhs.net.uk", lookalike_of="nhs.net"),
        r0=quarantine("sensitive-to-lookalike-domain"),
    ),
    "b2-lookalike-of-a-partner-held-beside-the-real-partner": scenario(
        mail(CASE_REF, CHILD_NAME, cases=HART),
        person(MILLS, HART),
        person(
            "s.mills@millsandco-solicitor.co.uk", HART, lookalike_of="millsandco-solicitors.co.uk"
        ),
        r0=TLS,
        r1=quarantine("sensitive-to-lookalike-domain"),
    ),
    "b2-autocomplete-picked-the-wrong-j-smith-at-webmail": scenario(
        mail(NHS, DOB),
        person("j.smith1975@gmail.com", first=True),
        r0=quarantine("sensitive-to-unlisted-webmail"),
    ),
    "b2-forwarding-case-material-home": scenario(
        mail(CASE_REF, SECTION_47, cases=HART),
        person("joy.okafor@outlook.com"),
        r0=quarantine("sensitive-to-unlisted-webmail"),
    ),
    "b2-first-time-external-recipient": scenario(
        mail(SECTION_47),
        person("duty@independent-fostering.org.uk", first=True),
        r0=delay(),
    ),
    "b2-first-time-secure-address-no-case-lists": scenario(
        mail(CASE_REF, cases=HART),
        person("health.visitor@nhs.net", HART, first=True),
        r0=delay(),
    ),
    "b2-first-time-allowed-parent-on-webmail-is-delayed": scenario(
        mail(CASE_REF, cases=HART),
        person(MOTHER, HART, first=True),
        r0=delay(),
    ),
    "b2-marked-first-time-to-a-partner": scenario(
        mail(MARKING),
        person("placements@northshire-fostering.org.uk", first=True),
        r0=delay(),
    ),
    # -- B3: the accused person
    "b3-restricted-party-in-to": scenario(
        mail(CASE_REF, cases=HART),
        person(FATHER, HART),
        person(MILLS, HART),
        r0=RESTRICTED,
        r1=TLS,
    ),
    "b3-restricted-party-in-cc-beside-the-court": scenario(
        mail(CASE_REF, CHILD_NAME, cases=HART, external_visible=2),
        person(COURT, HART),
        person(FATHER, HART),
        r0=TLS,
        r1=RESTRICTED,
    ),
    "b3-restricted-party-in-bcc": scenario(
        mail(CASE_REF, cases=HART),
        person(GUARDIAN, HART),
        person(FATHER, HART, visible=False),
        r0=TLS,
        r1=RESTRICTED,
    ),
    "b3-case-named-only-by-child-and-birth-date-in-a-docx-in-a-zip": scenario(
        mail(CHILD_IN_ZIP, cases=HART),
        person(FATHER, HART, visible=False),
        person(POLICE, HART),
        r0=RESTRICTED,
        r1=TLS,
    ),
    "b3-adult-safeguarding-enquiry-to-the-son": scenario(
        mail(
            Finding("case_reference", "body", HIGH, 1, "AS-1***04"),
            cases=("AS-118204",),
        ),
        person("martin.price@gmail.com", ("AS-118204",)),
        person("helen.price@btinternet.com", ("AS-118204",)),
        r0=RESTRICTED,
        r1=TLS,
    ),
    "b3-restricted-partner-of-another-family": scenario(
        mail(Finding("case_reference", "body", HIGH, 1, "CS-3***92"), cases=("CS-311092",)),
        person("shane.doyle@yahoo.co.uk", ("CS-311092",)),
        person("dsl@oakfield.northshire.sch.uk", ("CS-311092",)),
        r0=RESTRICTED,
        r1=TLS,
    ),
    # -- B4: the wrong case
    "b4-two-cases-material-to-a-court-listed-for-both": scenario(
        mail(
            Finding("case_reference", "attachment:report.docx", HIGH, 2, "CS-2***17"),
            cases=("CS-204817", "CS-275530"),
        ),
        person(COURT, ("CS-204817", "CS-275530")),
        person(COLLEAGUE, ("CS-204817", "CS-275530")),
        r0=quarantine("mixed-cases-outside-council"),
        r1=CLEAN,
    ),
    "b4-case-material-to-another-familys-parent": scenario(
        mail(CASE_REF, cases=HART),
        person("claire.brennan@outlook.com", HART),
        r0=quarantine("case-material-to-other-case-party"),
    ),
    "b4-mixed-cases-and-a-restricted-party-of-one": scenario(
        mail(CASE_REF, cases=("CS-204817", "CS-311092")),
        person("shane.doyle@yahoo.co.uk", ("CS-204817", "CS-311092"), visible=False),
        r0=RESTRICTED,
    ),
    # -- B5: family-court documents to the wrong party
    "b5-court-bundle-to-a-partner-address-the-case-does-not-list": scenario(
        mail(CASE_REF, CHILD_IN_ZIP, cases=HART),
        person("j.doe@brightwaterlaw.co.uk", HART),
        person(COURT, HART),
        r0=quarantine("case-material-to-unlisted-partner"),
        r1=TLS,
    ),
    "b5-solicitor-listed-only-for-another-case": scenario(
        mail(Finding("case_reference", "body", HIGH, 1, "CS-2***30"), cases=("CS-275530",)),
        person(ASH, ("CS-275530",)),
        person(MILLS, ("CS-275530",)),
        r0=quarantine("case-material-to-other-case-party"),
        r1=TLS,
    ),
    "b5-school-of-another-case": scenario(
        mail(CASE_REF, cases=HART),
        person("dsl@oakfield.northshire.sch.uk", HART),
        r0=quarantine("case-material-to-unlisted-partner"),
    ),
    # -- B6: a refuge address
    "b6-refuge-address-to-an-allowed-solicitor-on-a-partner-domain": scenario(
        mail(CASE_REF, REFUGE_ADDRESS, cases=HART),
        person(MILLS, HART),
        r0=PROTECTED,
    ),
    "b6-refuge-address-to-an-allowed-party-on-a-secure-domain": scenario(
        mail(CASE_REF, REFUGE_ADDRESS, cases=HART),
        person(GUARDIAN, HART),
        person(COURT, HART, visible=False),
        r0=PROTECTED,
        r1=PROTECTED,
    ),
    "b6-refuge-postcode-only-to-a-housing-association": scenario(
        mail(REFUGE_POSTCODE),
        person("lettings@northtown-homes.org.uk"),
        r0=PROTECTED,
    ),
    "b6-refuge-address-internal-copy-passes-outside-copy-held": scenario(
        mail(REFUGE_ADDRESS),
        person(COLLEAGUE),
        person(MOTHER),
        r0=CLEAN,
        r1=PROTECTED,
    ),
    "b6-refuge-address-with-secure-subject-is-still-held": scenario(
        mail(REFUGE_ADDRESS, SECURE_SUBJECT, subject="[secure] statement"),
        person(POLICE),
        r0=quarantine("protected-address-outside-council", 2, route="secure-gateway"),
    ),
    # -- B7: everyone visible to everyone
    "b7-many-visible-external-recipients": scenario(
        mail(external_visible=14),
        person("parent1@gmail.com"),
        person("parent2@hotmail.co.uk"),
        person("carer@external.org.uk", visible=False),
        person(COLLEAGUE),
        r0=quarantine("many-visible-external-recipients"),
        r1=quarantine("many-visible-external-recipients"),
        r2=quarantine("many-visible-external-recipients"),
        r3=CLEAN,
    ),
    "b7-just-under-the-threshold-passes": scenario(
        mail(external_visible=9),
        person("parent1@gmail.com"),
        r0=CLEAN,
    ),
    # -- B8: caseloads and failed redactions
    "b8-hidden-sheet-to-a-partner": scenario(
        mail(HIDDEN_SHEET),
        person("placements@northshire-fostering.org.uk"),
        r0=quarantine("hidden-content-outside-council"),
    ),
    "b8-tracked-comments-in-a-statement-to-the-court": scenario(
        mail(CASE_REF, HIDDEN_COMMENTS, cases=HART),
        person(COURT, HART),
        r0=quarantine("hidden-content-outside-council", require_tls=True),
    ),
    "b8-text-under-redaction-to-the-mothers-solicitor": scenario(
        mail(CASE_REF, REDACTION, cases=HART),
        person(MILLS, HART),
        r0=quarantine("redaction-failure-outside-council"),
    ),
    "b8-caseload-spreadsheet-to-a-secure-domain": scenario(
        mail(BULK, NHS),
        person("commissioning@nhs.net"),
        person(MANAGER),
        r0=quarantine("bulk-identifiers-outside-council"),
        r1=CLEAN,
    ),
    "b8-hidden-content-sent-internally-passes": scenario(
        mail(HIDDEN_SHEET, REDACTION, BULK),
        person(COLLEAGUE),
        r0=CLEAN,
    ),
    # -- scanning fails closed
    "uninspectable-part-going-outside": scenario(
        mail(UNREADABLE),
        person("reviewer@independent-review.co.uk"),
        person(COLLEAGUE),
        r0=quarantine("uninspectable-outside-council"),
        r1=CLEAN,
    ),
    "uninspectable-part-sent-only-internally-is-a-finding-not-a-hold": scenario(
        mail(UNREADABLE),
        person(COLLEAGUE),
        person(MANAGER, visible=False),
        r0=CLEAN,
        r1=CLEAN,
    ),
    # -- retired secure-mail domains
    "obsolete-gcsx-address-refused-whatever-the-content": scenario(
        mail(),
        person("housing@northshire.gcsx.gov.uk"),
        person("duty.team@gsi.gov.uk"),
        r0=Expect(Action.REJECT, "obsolete-secure-domain"),
        r1=Expect(Action.REJECT, "obsolete-secure-domain"),
    ),
    "obsolete-address-with-case-material-refused-not-held": scenario(
        mail(CASE_REF, cases=HART),
        person("cafcass@cafcass.gsi.gov.uk", HART, first=True),
        person(COURT, HART),
        r0=Expect(Action.REJECT, "obsolete-secure-domain"),
        r1=TLS,
    ),
}


def check(verdict: Verdict, expect: Mapping[str, Expect]) -> None:
    for address, wanted in expect.items():
        got = verdict.recipients[address]
        assert got.action is wanted.action, (address, got.rules, got.explanation)
        if wanted.rule is not None:
            assert wanted.rule in got.rules, (address, got.rules)
        assert got.approvals == wanted.approvals, address
        assert got.route == wanted.route, address
        if wanted.require_tls is not None:
            assert got.require_tls is wanted.require_tls, address


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_breach_scenario(name: str) -> None:
    case = SCENARIOS[name]
    assert set(case.expect) == {r.address for r in case.recipients}, "every recipient expected"
    check(evaluate(policy(), case.message, case.recipients), case.expect)


def test_every_rule_of_the_policy_is_exercised_by_a_scenario() -> None:
    expected = {e.rule for case in SCENARIOS.values() for e in case.expect.values()}
    assert {r.name for r in policy().rules} <= expected


# -- controls: ordinary council mail passes untouched --------------------------------------

# Second and later sends: no recipient is new unless the control says so.
CONTROLS: dict[str, tuple[MessageFacts, tuple[RecipientFacts, ...]]] = {
    "internal-mail-with-case-material": (
        mail(CASE_REF, CHILD_IN_ZIP, NHS, SECTION_47, MARKING, cases=HART),
        (person(COLLEAGUE, HART, first=True), person(MANAGER, HART, visible=False)),
    ),
    "internal-mail-about-two-cases": (
        mail(CASE_REF, cases=("CS-204817", "CS-311092")),
        (person(MANAGER, ("CS-204817", "CS-311092")),),
    ),
    "court-bundle-to-the-cases-own-court-and-solicitors-first-time": (
        mail(
            CASE_REF,
            CHILD_IN_ZIP,
            MARKING,
            Finding("keywords", "attachment:bundle.zip/annex.docx", HIGH, 2, "keyword"),
            cases=HART,
            external_visible=4,
            subject="CS-204817 court bundle",
        ),
        (
            person(COURT, HART, first=True),
            person(MILLS, HART, first=True),
            person(ASH, HART, first=True),
            person(GUARDIAN, HART, first=True, visible=False),
        ),
    ),
    "newsletter-without-personal-data-to-many-bcc-recipients": (
        mail(PHONE, POSTCODE, PREHEADER, PLAIN_OFFICIAL, CONTACT_LIST, external_visible=0),
        tuple(
            person(address, first=True, visible=False)
            for address in (
                [f"reader{n}@gmail.com" for n in range(40)]
                + [f"reader{n}@community-group{n}.org.uk" for n in range(40)]
                + ["office@northshire-fostering.org.uk", "head@oakfield.northshire.sch.uk"]
            )
        ),
    ),
    "out-of-office-reply": (
        mail(
            PHONE,
            POSTCODE,
            headers=(("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All")),
            subject="Automatic reply: referral",
            sender="t.wright@northshire.gov.uk",
        ),
        (person("someone@gmail.com", first=True), person("info@care-provider.co.uk", first=True)),
    ),
    "refuge-mentioned-in-a-signature": (
        mail(REFUGE_WORD, PHONE, POSTCODE),
        (
            person(MOTHER, first=True),
            person("support@safehaven-refuge.org.uk", first=True),
            person("new.contact@example.org", first=True),
        ),
    ),
    "a-party-named-in-a-letter-without-case-material": (
        mail(PARTY_NAME, PHONE),
        (person(ASH, first=True),),
    ),
    "allowed-parent-on-webmail-again": (
        mail(CASE_REF, CHILD_NAME, cases=HART),
        (person(MOTHER, HART),),
    ),
}


@pytest.mark.parametrize("name", list(CONTROLS))
def test_control_passes(name: str) -> None:
    message, recipients = CONTROLS[name]
    verdict = evaluate(policy(), message, recipients)
    for address, got in verdict.recipients.items():
        held = [f.name for f in got.fired if f.action.severity > 0]
        assert got.action is Action.PASS and not held, (address, got.explanation)
        assert got.notify == frozenset(), address
        assert got.route is None, address
    assert verdict.action is Action.PASS


@pytest.mark.parametrize(
    "name",
    [
        "newsletter-without-personal-data-to-many-bcc-recipients",
        "out-of-office-reply",
        "refuge-mentioned-in-a-signature",
        "a-party-named-in-a-letter-without-case-material",
        "internal-mail-with-case-material",
    ],
)
def test_control_without_sensitive_content_outside_is_untouched(name: str) -> None:
    message, recipients = CONTROLS[name]
    verdict = evaluate(policy(), message, recipients)
    assert {v.rules for v in verdict.recipients.values()} == {()}


def test_court_bundle_to_its_own_parties_only_carries_the_tls_instruction() -> None:
    message, recipients = CONTROLS["court-bundle-to-the-cases-own-court-and-solicitors-first-time"]
    verdict = evaluate(policy(), message, recipients)
    for got in verdict.recipients.values():
        assert got.rules == ("sensitive-needs-verified-tls",)
        assert got.require_tls is True


# -- what the sender and the reviewer read -----------------------------------------------


def test_restricted_party_verdict_explains_in_reviewer_words_without_values() -> None:
    message = mail(CASE_REF, cases=HART)
    verdict = evaluate(policy(), message, [person(FATHER, HART, visible=False)])
    got = verdict.recipients[FATHER]
    assert got.notify == {NOTIFY_SENDER, NOTIFY_REVIEWERS}
    assert "case-material-to-restricted-party (critical): " in got.explanation[0]
    assert "case_reference in attachment:report.docx, 1 distinct, high" in got.explanation[0]
    assert "recipient is listed as restricted for CS-2***17" in got.explanation[0]
    assert "two reviewers" in got.reason
    everything = " ".join(got.explanation) + got.reason
    assert "204817" not in everything and "Hart" not in everything
    assert verdict.cases == HART
    assert got.facts == (CASE_RESTRICTED,)
    assert got.classes == ("webmail",)


def test_internal_addresses_are_also_secure_by_wildcard_and_still_pass() -> None:
    colleague = person(COLLEAGUE, HART)
    assert colleague.classes == ("internal", "secure")
    verdict = evaluate(policy(), mail(CASE_REF, REFUGE_ADDRESS, cases=HART), [colleague])
    assert verdict.recipients[COLLEAGUE].rules == ()


def test_obsolete_domain_reason_says_what_to_do() -> None:
    verdict = evaluate(policy(), mail(), [person("housing@northshire.gcsx.gov.uk")])
    reason = verdict.recipients["housing@northshire.gcsx.gov.uk"].reason
    assert "no longer delivers" in reason
    assert "current address" in reason


def test_first_time_delay_is_fifteen_minutes() -> None:
    recipient = person("duty@independent-fostering.org.uk", first=True)
    got = evaluate(policy(), mail(SECTION_47), [recipient]).recipients[recipient.address]
    assert (got.action, got.delay_seconds) == (Action.DELAY, 900.0)
    assert got.notify == {NOTIFY_SENDER}


def test_the_policy_loads_with_the_example_groups_and_names_every_rule_uniquely() -> None:
    names = [r.name for r in policy().rules]
    assert len(names) == len(set(names)) >= 16
    assert all(r.description for r in policy().rules)


def test_the_default_policy_wants_an_approver_for_restricted_parties_and_refuges() -> None:
    rules = {r.name: r for r in policy().rules}
    assert rules["case-material-to-restricted-party"].approver
    assert rules["protected-address-outside-council"].approver
    assert not any(r.approver for r in policy().rules if r.approvals < 2)
