"""Recipient facts: who each envelope recipient is, for the rules to read (B2, B3, B4, B7).

The relay calls `classify_recipient` once per envelope recipient with what it
knows from elsewhere (the sender's delivery history, the case register's
entries for this address, the cases the message refers to) and hands the
results to the policy. Nothing here raises on a strange address: the listener
accepted it, so it is classified (as external, if nothing better can be said)
rather than allowed to stop the decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from email.utils import getaddresses
from functools import lru_cache

from email_validator import validate_email

from smtpguard.decide.domains import DomainGroups, domain_key
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
    RecipientFacts,
)
from smtpguard.decide.lookalike import lookalike_of

VISIBLE_HEADERS = frozenset({"to", "cc"})
ALLOWED = "allowed"
# For a header the stdlib parser gives up on: anything shaped like an address.
_LOOSE_ADDRESS = re.compile(r"[^\s<>,;:\"()\[\]@]+@[^\s<>,;:\"()\[\]@]+")


def address_key(address: str) -> str:
    """One spelling per mailbox: lower case, the domain in its normal form."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{local.lower()}@{domain_key(domain)}"


@lru_cache(maxsize=16384)
def recipient_domain(address: str) -> str:
    """The domain of an envelope address in normal form; the raw part after @ if invalid."""
    try:
        checked = validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=True,
            allow_quoted_local=True,
            globally_deliverable=False,
        )
    except ValueError:  # EmailNotValidError, and IDNA errors underneath it
        _, at, domain = address.strip().strip("<>").rpartition("@")
        return domain_key(domain) if at else ""
    return domain_key(checked.domain)


def visible_addresses(headers: Sequence[tuple[str, str]]) -> frozenset[str]:
    """Every address in To and Cc (not Bcc), each as address_key spells it (B7)."""
    found: set[str] = set()
    for name, value in headers:
        if name.strip().lower() in VISIBLE_HEADERS:
            found.update(address_key(a) for a in _addresses(value))
    return frozenset(found)


def _addresses(value: str) -> Iterable[str]:
    """Addresses in one header value; garbage yields what can be read, never an error.

    Reading too many is the safe side: a visible address missed would let a
    mailing that exposes its recipients through (B7).
    """
    try:
        parsed = [address for _, address in getaddresses([value]) if "@" in address]
    except Exception:  # the parser's failures on hostile input are not worth a 451
        parsed = []
    if not parsed and "@" in value:
        return _LOOSE_ADDRESS.findall(value)  # unparseable, but an address is an address
    found: list[str] = []
    for address in parsed:
        # `"Smith <j@x.org>` (an unclosed quote) comes back whole: take the address out.
        loose = _LOOSE_ADDRESS.findall(address) if re.search(r"[\s<>]", address) else []
        found.extend(loose or [address])
    return found


def classify_recipient(
    address: str,
    groups: DomainGroups,
    *,
    visible: frozenset[str],
    first_time: bool,
    parties: Sequence[tuple[str, str]],
    cases: Sequence[str],
) -> RecipientFacts:
    """The classes and facts of one envelope recipient.

    `parties` are the (case reference, access) pairs the case register lists
    for this address; `cases` the cases the message refers to. An access other
    than `allowed` counts as restricted: a register the loader let through
    with an odd value must hold mail, not release it.
    """
    domain = recipient_domain(address)
    classes = groups.groups_of(domain) or (EXTERNAL,)
    internal = INTERNAL in classes
    facts: set[str] = set()
    imitated = None if internal or not domain else lookalike_of(domain, groups.patterns)
    if imitated is not None:
        facts.add(LOOKALIKE)
    if first_time and not internal:
        facts.add(FIRST_TIME)
    allowed, restricted = _case_access(parties, cases)
    if allowed:
        facts.add(CASE_ALLOWED)
    if restricted:
        facts.add(CASE_RESTRICTED)
    if cases and parties and not allowed and not restricted:
        facts.add(CASE_UNLISTED)
    if OBSOLETE in classes:
        facts.add(OBSOLETE)
    if address_key(address) in visible:
        facts.add(VISIBLE)
    return RecipientFacts(
        address=address,
        domain=domain,
        classes=classes,
        facts=frozenset(facts),
        lookalike_of=imitated,
        cases_allowed=allowed,
        cases_restricted=restricted,
    )


def _case_access(
    parties: Sequence[tuple[str, str]], cases: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The message's cases that list this address as allowed, and as restricted."""
    spelled = {case.strip().upper(): case for case in cases}
    allowed: set[str] = set()
    restricted: set[str] = set()
    for case_ref, access in parties:
        case = spelled.get(case_ref.strip().upper())
        if case is None:
            continue
        (allowed if access.strip().lower() == ALLOWED else restricted).add(case)
    return tuple(sorted(allowed)), tuple(sorted(restricted))


def count_external_visible(visible: frozenset[str], groups: DomainGroups) -> int:
    """Distinct addresses in To and Cc outside the internal domains (B7: "use Bcc")."""
    return sum(1 for key in visible if not groups.is_internal(key.rpartition("@")[2]))
