"""Decide: findings and recipients in, one action per recipient out."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from smtpguard.detect import Finding
from smtpguard.envelope import Envelope


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


@dataclass(frozen=True)
class RecipientVerdict:
    action: Action = Action.PASS
    rules: tuple[str, ...] = ()
    approvals: int = 0
    reason: str = ""  # plain words for the sender and the reviewer


@dataclass(frozen=True)
class Verdict:
    recipients: Mapping[str, RecipientVerdict]
    findings: tuple[Finding, ...] = field(default=())

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
