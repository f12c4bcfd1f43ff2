"""Decide: findings and recipients in, one verdict per recipient out.

The verdict model lives here; `decide.policy` loads the YAML rules and
evaluates them into it. A recipient's `action` is the most severe of `pass`,
`delay`, `quarantine` and `reject`; `tag`, `route` and `require_tls` are
delivery instructions that ride along with whatever is finally delivered.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from smtpguard.detect import Finding
from smtpguard.envelope import Envelope

__all__ = [
    "NOTIFY_REVIEWERS",
    "NOTIFY_SENDER",
    "Action",
    "FiredRule",
    "RecipientVerdict",
    "Severity",
    "Verdict",
    "decide_verdict",
]

# Who a verdict tells, without sensitive content.
NOTIFY_SENDER = "sender"
NOTIFY_REVIEWERS = "reviewers"


class Action(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - an action, not a password
    TAG = "tag"
    DELAY = "delay"
    ROUTE = "route"
    REQUIRE_TLS = "require_tls"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


# Only these four compete; the others are delivery instructions that ride along.
_SEVERITY = {
    Action.PASS: 0,
    Action.TAG: 0,
    Action.ROUTE: 0,
    Action.REQUIRE_TLS: 0,
    Action.DELAY: 1,
    Action.QUARANTINE: 2,
    Action.REJECT: 3,
}


class Severity(enum.IntEnum):
    """How bad a rule's breach would be: for the reviewer's eye, not for the action."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class FiredRule:
    """One rule that fired for one recipient, with what it used (for the audit log)."""

    name: str
    action: Action
    severity: Severity
    findings: tuple[Finding, ...] = ()  # the findings that satisfied its finding conditions
    explanation: str = ""  # one line in reviewer words, never a value


@dataclass(frozen=True)
class RecipientVerdict:
    action: Action = Action.PASS  # pass, delay, quarantine or reject
    rules: tuple[str, ...] = ()  # every rule that fired, in policy order
    approvals: int = 0  # quarantine: distinct reviewers a release needs
    approver: bool = False  # quarantine: one of them must have the approver role
    reason: str = ""  # plain words for the sender and the reviewer, from the winning rules
    delay_seconds: float = 0.0  # delay: how long before delivery
    route: str | None = None  # a named next hop instead of the upstream
    require_tls: bool = False  # deliver only over verified TLS, else hold
    tag: bool = False  # add the verdict headers
    subject_prefix: str | None = None  # with tag: prefix the subject
    notify: frozenset[str] = frozenset()  # NOTIFY_SENDER, NOTIFY_REVIEWERS
    classes: tuple[str, ...] = ()  # the recipient's classes, for `scan --json`
    facts: tuple[str, ...] = ()  # the recipient's facts, sorted, for `scan --json`
    explanation: tuple[str, ...] = ()  # one line per fired rule
    fired: tuple[FiredRule, ...] = ()


@dataclass(frozen=True)
class Verdict:
    recipients: Mapping[str, RecipientVerdict]
    findings: tuple[Finding, ...] = field(default=())
    cases: tuple[str, ...] = ()  # case references the message refers to, sorted

    @property
    def action(self) -> Action:
        """The most severe action over all recipients."""
        return max(
            (v.action for v in self.recipients.values()),
            key=lambda action: action.severity,
            default=Action.PASS,
        )


def decide_verdict(envelope: Envelope, findings: tuple[Finding, ...]) -> Verdict:
    """No rules are loaded yet: every recipient passes."""
    return Verdict(
        recipients={address: RecipientVerdict() for address in envelope.recipients},
        findings=findings,
    )
