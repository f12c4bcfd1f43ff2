"""What the decide stage knows about a message and each of its recipients.

The relay gathers these facts (recipient classes from the domain groups,
recipient history from the store, case parties from the exact-data-match
register, findings from the workers) and the policy's rules read them. They
are plain values so that a rule can be tested without a relay, and so that
`smtpguard scan` shows the same facts the relay used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpguard.detect import Finding

# Classes a recipient can have besides the configured domain groups.
INTERNAL = "internal"
EXTERNAL = "external"

# Recipient facts, spelled as rules and `scan --json` spell them.
LOOKALIKE = "lookalike"
FIRST_TIME = "first_time"
CASE_ALLOWED = "case_allowed"
CASE_RESTRICTED = "case_restricted"
CASE_UNLISTED = "case_unlisted"  # a case party, but not of the cases this message refers to
OBSOLETE = "obsolete"
VISIBLE = "visible"  # in To or Cc (not only Bcc)


@dataclass(frozen=True)
class RecipientFacts:
    address: str  # as in the envelope
    domain: str  # lower case, IDN as Unicode ("münchen.de")
    classes: tuple[str, ...]  # "internal", configured groups ("secure", "webmail"), or "external"
    facts: frozenset[str] = frozenset()  # LOOKALIKE, FIRST_TIME, CASE_ALLOWED, ...
    lookalike_of: str | None = None  # the known domain it imitates
    cases_allowed: tuple[str, ...] = ()  # case references listing this address as allowed
    cases_restricted: tuple[str, ...] = ()  # ... as must-never-receive

    @property
    def is_internal(self) -> bool:
        return INTERNAL in self.classes


@dataclass(frozen=True)
class Attachment:
    path: str  # "attachment:bundle.zip/annex.docx"
    kind: str  # the sniffed kind: "pdf", "docx", "uninspectable", ...
    size: int
    flags: frozenset[str] = frozenset()  # parse flags: "hidden_sheet", "encrypted", ...


@dataclass(frozen=True)
class MessageFacts:
    sender: str
    sender_team: str | None  # from the staff register, when the sender is staff
    subject: str  # in memory only: rules may match it, nothing logs it
    headers: tuple[tuple[str, str], ...]
    findings: tuple[Finding, ...]
    cases: tuple[str, ...]  # case references the message refers to, sorted
    attachments: tuple[Attachment, ...] = field(default=())
    external_visible: int = 0  # distinct external addresses visible in To and Cc
    tls: bool = False  # the message reached smtpguard over TLS

    @property
    def mixed_cases(self) -> bool:
        """Material of two different cases in one message (B4)."""
        return len(self.cases) > 1
