"""The conditions a rule's `when` is built from, as compiled by `decide.policy`.

Each condition answers yes or no for one message and one recipient, and
when yes, says why: its evidence is the findings it used and short phrases a
reviewer reads. Evidence never carries a value: findings are already
redacted, case references are masked, and subject and header conditions
name the rule's pattern, never the text it matched.

Conditions that do not depend on the recipient (findings, sender, subject,
headers, attachments, message facts) are evaluated once per message and
remembered for the other recipients.

Subject and header patterns are the administrator's, the text they run on is
the sender's, and they run on the relay's event loop: each runs under the
`regex` module with a time limit (`REGEX_TIMEOUT` per condition per message).
A pattern that does not finish in time counts as matched, and so does a `not`
over it, so a slow pattern fails closed; the evidence says the pattern took
too long (and `decide.policy` logs `policy.regex_timeout` with the rule's name).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import regex

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
    MessageFacts,
    RecipientFacts,
)
from smtpguard.detect import Confidence, Finding
from smtpguard.detect.detectors.case_reference import DETECTOR as CASE_REFERENCES

# What a true condition used: findings, and phrases in reviewer words.
Evidence = tuple[Finding | str, ...]
Outcome = tuple[bool, Evidence]
NO: Outcome = (False, ())

# Where a finding was, as `where:` names it: the part of its location before ":".
PLACES = ("subject", "body", "header", "attachment", "message")

# How long one subject or header condition may run its pattern on one message.
REGEX_TIMEOUT = 0.05


class RegexTimedOut(str):
    """Evidence that a pattern did not finish in time, so its condition counted as matched."""


@dataclass(frozen=True)
class Context:
    """One recipient of one message; `memo` is shared by all its recipients."""

    message: MessageFacts
    recipient: RecipientFacts
    memo: dict[int, Outcome]


class Condition(ABC):
    per_recipient: bool = False

    @abstractmethod
    def test(self, ctx: Context) -> Outcome:
        """Whether it holds here, and the evidence when it does."""

    @abstractmethod
    def describe(self) -> str:
        """What it asks, in words, for the explanation of a `not`."""


def check(condition: Condition, ctx: Context) -> Outcome:
    """Evaluate, remembering message-level answers across recipients."""
    if condition.per_recipient:
        return condition.test(ctx)
    key = id(condition)
    known = ctx.memo.get(key)
    if known is None:
        known = ctx.memo[key] = condition.test(ctx)
    return known


def mask(case: str) -> str:
    """A case reference as excerpts show it: "CS-2***17"."""
    return CASE_REFERENCES.redact(case)


def _either(words: Iterable[str]) -> str:
    return " or ".join(words)


# -- combinators ---------------------------------------------------------------------


class AllOf(Condition):
    def __init__(self, children: tuple[Condition, ...]) -> None:
        self.children = children
        self.per_recipient = any(c.per_recipient for c in children)

    def test(self, ctx: Context) -> Outcome:
        parts = []
        for child in self.children:
            holds, used = check(child, ctx)
            if not holds:
                return NO
            if used:
                parts.append(used)
        return True, _merged(parts)

    def describe(self) -> str:
        return " and ".join(_grouped(c) for c in self.children)


class AnyOf(Condition):
    """Every true branch contributes evidence: a reviewer sees all the findings that counted."""

    def __init__(self, children: tuple[Condition, ...]) -> None:
        self.children = children
        self.per_recipient = any(c.per_recipient for c in children)

    def test(self, ctx: Context) -> Outcome:
        holds = False
        parts = []
        for child in self.children:
            child_holds, used = check(child, ctx)
            if child_holds:
                holds = True
                if used:
                    parts.append(used)
        return (True, _merged(parts)) if holds else NO

    def describe(self) -> str:
        return " or ".join(_grouped(c) for c in self.children)


class NotOf(Condition):
    def __init__(self, child: Condition) -> None:
        self.child = child
        self.per_recipient = child.per_recipient
        self._evidence: Evidence = (self.describe(),)  # the words never change

    def test(self, ctx: Context) -> Outcome:
        holds, used = check(self.child, ctx)
        if not holds:
            return True, self._evidence
        # A pattern that timed out is not known to match either: fail closed.
        timed_out = tuple(item for item in used if isinstance(item, RegexTimedOut))
        return (True, timed_out) if timed_out else NO

    def describe(self) -> str:
        return f"not ({self.child.describe()})"


def _merged(parts: list[Evidence]) -> Evidence:
    """Each piece of evidence once, however many branches (or YAML aliases) reach it:
    without this, evidence would double at every level of a nested alias."""
    if len(parts) <= 1:
        return parts[0] if parts else ()
    evidence: list[Finding | str] = []
    seen: set[int] = set()
    for used in parts:
        for item in used:
            if id(item) not in seen:
                seen.add(id(item))
                evidence.append(item)
    return tuple(evidence)


def _grouped(condition: Condition) -> str:
    """A part of a longer description, bracketed when it is itself a choice or a list."""
    text = condition.describe()
    several = isinstance(condition, AllOf | AnyOf) or " or " in text
    return f"({text})" if several else text


# -- findings -------------------------------------------------------------------------


class FindingMatch(Condition):
    """Findings of some detectors, each meeting the count, confidence and place on its own.

    A finding's count is of distinct values in one place (the body, one
    attachment): the same NHS number in the body and an attachment cannot be
    told apart from two, so counts are never added across places.
    """

    def __init__(
        self,
        detectors: frozenset[str],
        min_count: int = 1,
        min_confidence: Confidence = Confidence.LOW,
        where: frozenset[str] | None = None,
        themes: frozenset[str] | None = None,
    ) -> None:
        self.detectors = detectors
        self.min_count = min_count
        self.min_confidence = min_confidence
        self.where = where
        self.themes = themes

    def test(self, ctx: Context) -> Outcome:
        used = tuple(
            finding
            for finding in ctx.message.findings
            if finding.detector in self.detectors
            and finding.confidence >= self.min_confidence
            and finding.count >= self.min_count
            and (self.where is None or finding.location.partition(":")[0] in self.where)
            and (self.themes is None or finding.theme in self.themes)
        )
        return (True, used) if used else NO

    def describe(self) -> str:
        text = f"a finding of {_either(sorted(self.detectors))}"
        if self.themes is not None:
            text += f" ({_either(sorted(self.themes))})"
        if self.min_confidence > Confidence.LOW:
            text += f" at {self.min_confidence.label} confidence or above"
        if self.min_count > 1:
            text += f" with {self.min_count} or more distinct values in one place"
        if self.where is not None:
            text += f" in the {_either(p for p in PLACES if p in self.where)}"
        return text


# -- the recipient ---------------------------------------------------------------------


class RecipientClass(Condition):
    per_recipient = True

    def __init__(self, classes: frozenset[str]) -> None:
        self.classes = classes

    def test(self, ctx: Context) -> Outcome:
        found = tuple(_class_phrase(c) for c in ctx.recipient.classes if c in self.classes)
        return (True, found) if found else NO

    def describe(self) -> str:
        plain = [c for c in (INTERNAL, EXTERNAL) if c in self.classes]
        groups = sorted(self.classes - {INTERNAL, EXTERNAL})
        said = [f"recipient is {_either(plain)}"] if plain else []
        if groups:
            said.append(f"recipient's domain is in the {_either(groups)} group")
        return " or ".join(said)


def _class_phrase(name: str) -> str:
    if name in (INTERNAL, EXTERNAL):
        return f"recipient is {name}"
    return f"recipient's domain is in the {name} group"


class RecipientFact(Condition):
    per_recipient = True

    def __init__(self, facts: frozenset[str]) -> None:
        self.facts = facts

    def test(self, ctx: Context) -> Outcome:
        found = tuple(
            _fact_evidence(fact, ctx) for fact in sorted(self.facts) if fact in ctx.recipient.facts
        )
        return (True, found) if found else NO

    def describe(self) -> str:
        return _either(_FACT_WORDS[f] for f in sorted(self.facts))


_FACT_WORDS = {
    LOOKALIKE: "recipient's domain looks like a known domain",
    FIRST_TIME: "first mail from this sender to this recipient",
    CASE_ALLOWED: "recipient is listed as allowed for a case this message refers to",
    CASE_RESTRICTED: "recipient is listed as restricted for a case this message refers to",
    CASE_UNLISTED: "recipient is a party of a case this message does not refer to",
    OBSOLETE: "recipient's domain is a retired secure-mail domain that no longer delivers",
    VISIBLE: "recipient is visible in To or Cc",
}
FACTS = frozenset(_FACT_WORDS)


def _fact_evidence(fact: str, ctx: Context) -> str:
    recipient = ctx.recipient
    if fact == LOOKALIKE and recipient.lookalike_of:
        return f"recipient's domain {recipient.domain} looks like {recipient.lookalike_of}"
    if fact == CASE_ALLOWED and recipient.cases_allowed:
        return f"recipient is listed as allowed for {_cases(recipient.cases_allowed)}"
    if fact == CASE_RESTRICTED and recipient.cases_restricted:
        return f"recipient is listed as restricted for {_cases(recipient.cases_restricted)}"
    if fact == OBSOLETE:
        return f"recipient's domain {recipient.domain} is a retired secure-mail domain"
    return _FACT_WORDS[fact]


def _cases(cases: Iterable[str]) -> str:
    return ", ".join(mask(case) for case in sorted(cases))


# -- the sender ------------------------------------------------------------------------


class SenderAddress(Condition):
    def __init__(self, addresses: frozenset[str]) -> None:
        self.addresses = frozenset(a.lower() for a in addresses)

    def test(self, ctx: Context) -> Outcome:
        sender = ctx.message.sender.lower()
        return (True, (f"sender is {sender}",)) if sender in self.addresses else NO

    def describe(self) -> str:
        return f"sender is {_either(sorted(self.addresses))}"


class SenderDomain(Condition):
    """`example.org` is that domain only; `*.example.org` is its subdomains."""

    def __init__(self, domains: frozenset[str]) -> None:
        self.domains = frozenset(d.lower() for d in domains)
        self._exact = frozenset(d for d in self.domains if not d.startswith("*."))
        self._suffixes = tuple(d[1:] for d in self.domains if d.startswith("*."))

    def test(self, ctx: Context) -> Outcome:
        domain = ctx.message.sender.rpartition("@")[2].lower()
        if domain and (domain in self._exact or domain.endswith(self._suffixes)):
            return True, (f"sender's domain is {domain}",)
        return NO

    def describe(self) -> str:
        return f"sender's domain is {_either(sorted(self.domains))}"


class SenderTeam(Condition):
    def __init__(self, teams: frozenset[str]) -> None:
        self.teams = teams

    def test(self, ctx: Context) -> Outcome:
        team = ctx.message.sender_team
        return (True, (f"sender is in the {team} team",)) if team in self.teams else NO

    def describe(self) -> str:
        return f"sender is in the {_either(sorted(self.teams))} team"


# -- subject, headers, attachments -----------------------------------------------------


def _too_slow(what: str, pattern: regex.Pattern[str]) -> Outcome:
    return True, (
        RegexTimedOut(
            f"{what} pattern /{pattern.pattern}/ took too long on this message (counted as a match)"
        ),
    )


class SubjectMatches(Condition):
    """Case-insensitive search; the explanation names the pattern, never the subject."""

    def __init__(self, pattern: regex.Pattern[str]) -> None:
        self.pattern = pattern

    def test(self, ctx: Context) -> Outcome:
        try:
            found = self.pattern.search(ctx.message.subject, timeout=REGEX_TIMEOUT)
        except TimeoutError:
            return _too_slow("subject", self.pattern)
        if found:
            return True, (self.describe(),)
        return NO

    def describe(self) -> str:
        return f"subject matches /{self.pattern.pattern}/"


class HeaderMatches(Condition):
    def __init__(self, name: str, pattern: regex.Pattern[str]) -> None:
        self.name = name
        self._key = name.lower()
        self.pattern = pattern

    def test(self, ctx: Context) -> Outcome:
        # One time limit for all the headers of that name: a message can carry thousands.
        deadline = time.monotonic() + REGEX_TIMEOUT
        for name, value in ctx.message.headers:
            if name.lower() != self._key:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return self._too_slow()
            try:
                found = self.pattern.search(value, timeout=left)
            except TimeoutError:
                return self._too_slow()
            if found:
                return True, (self.describe(),)
        return NO

    def _too_slow(self) -> Outcome:
        return _too_slow(f"header {self.name}", self.pattern)

    def describe(self) -> str:
        return f"header {self.name} matches /{self.pattern.pattern}/"


class HeaderPresent(Condition):
    def __init__(self, name: str, present: bool) -> None:
        self.name = name
        self._key = name.lower()
        self.present = present

    def test(self, ctx: Context) -> Outcome:
        found = any(name.lower() == self._key for name, _ in ctx.message.headers)
        return (True, (self.describe(),)) if found == self.present else NO

    def describe(self) -> str:
        return f"header {self.name} is {'present' if self.present else 'absent'}"


class AttachmentMatch(Condition):
    """An attachment of one of the kinds (if given) carrying one of the flags (if given)."""

    def __init__(self, kinds: frozenset[str] | None, flags: frozenset[str] | None) -> None:
        self.kinds = kinds
        self.flags = flags

    def test(self, ctx: Context) -> Outcome:
        evidence = []
        for attachment in ctx.message.attachments:
            if self.kinds is not None and attachment.kind not in self.kinds:
                continue
            if self.flags is None:
                evidence.append(f"{attachment.path} is {attachment.kind}")
                continue
            flags = sorted(attachment.flags & self.flags)
            if flags:
                evidence.append(f"{attachment.path} ({attachment.kind}) has {', '.join(flags)}")
        return (True, tuple(evidence)) if evidence else NO

    def describe(self) -> str:
        text = "an attachment"
        if self.kinds is not None:
            text += f" of kind {_either(sorted(self.kinds))}"
        if self.flags is not None:
            text += f" with {_either(sorted(self.flags))}"
        return text


# -- the message as a whole ------------------------------------------------------------


class ExternalVisibleMin(Condition):
    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def test(self, ctx: Context) -> Outcome:
        count = ctx.message.external_visible
        if count >= self.minimum:
            return True, (f"{count} external addresses visible in To/Cc ({self.minimum} or more)",)
        return NO

    def describe(self) -> str:
        return f"{self.minimum} or more external addresses visible in To/Cc"


class CasesMin(Condition):
    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def test(self, ctx: Context) -> Outcome:
        cases = ctx.message.cases
        if len(cases) >= self.minimum:
            return True, (f"refers to {len(cases)} case(s): {_cases(cases)}",)
        return NO

    def describe(self) -> str:
        return f"refers to {self.minimum} or more cases"


class MixedCases(Condition):
    def __init__(self, mixed: bool) -> None:
        self.mixed = mixed

    def test(self, ctx: Context) -> Outcome:
        message = ctx.message
        if message.mixed_cases != self.mixed:
            return NO
        if self.mixed:
            return True, (f"mixes material of {len(message.cases)} cases: {_cases(message.cases)}",)
        return True, ("does not mix material of several cases",)

    def describe(self) -> str:
        return "mixes material of several cases" if self.mixed else "refers to one case at most"


class ArrivedOverTls(Condition):
    def __init__(self, tls: bool) -> None:
        self.tls = tls

    def test(self, ctx: Context) -> Outcome:
        return (True, (self.describe(),)) if ctx.message.tls == self.tls else NO

    def describe(self) -> str:
        return "arrived over TLS" if self.tls else "did not arrive over TLS"
