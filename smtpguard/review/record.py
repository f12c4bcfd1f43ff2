"""What a reviewer is shown of a held message, recorded when it is held.

The record is the verdict in the words the reviewer reads: per recipient the
action, the rules that fired with their explanation, the approvals a release
needs; for the message the findings with their redacted excerpts, the cases
it refers to and its attachments. It never holds the text of the message:
`quarantine show --content` reads that from the spool, and is audited.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smtpguard.decide import Action, RecipientVerdict, Verdict
from smtpguard.decide.facts import Attachment
from smtpguard.detect import Confidence, Finding

FORMAT = 1


@dataclass(frozen=True)
class RuleShown:
    name: str
    severity: str
    explanation: str
    action: str = ""  # the rule's own action: the copy's action if this rule decided it


@dataclass(frozen=True)
class RecipientShown:
    action: str  # "pass", "delay", "quarantine", "reject"
    reason: str  # the winning rules' descriptions
    approvals: int  # distinct reviewers a release needs
    approver: bool  # one of them must be an approver
    classes: tuple[str, ...]
    facts: tuple[str, ...]
    rules: tuple[RuleShown, ...]


@dataclass(frozen=True)
class ReviewRecord:
    held_at: float
    review_until: float | None
    cases: tuple[str, ...]
    findings: tuple[Finding, ...]
    attachments: tuple[Attachment, ...]
    recipients: Mapping[str, RecipientShown]
    message_id: str | None = None  # the Message-ID header: notices refer to it

    @classmethod
    def of(
        cls,
        verdict: Verdict,
        attachments: Sequence[Attachment],
        held_at: float,
        review_until: float | None,
        message_id: str | None,
    ) -> ReviewRecord:
        return cls(
            message_id=message_id,
            held_at=held_at,
            review_until=review_until,
            cases=verdict.cases,
            findings=verdict.findings,
            attachments=tuple(attachments),
            recipients={a: _shown(v) for a, v in verdict.recipients.items()},
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types: what is stored, and what `quarantine show --json` prints."""
        return {
            "format": FORMAT,
            "message_id": self.message_id,
            "held_at": self.held_at,
            "review_until": self.review_until,
            "cases": list(self.cases),
            "findings": [finding_json(f) for f in self.findings],
            "attachments": [
                {"path": a.path, "kind": a.kind, "size": a.size, "flags": sorted(a.flags)}
                for a in self.attachments
            ],
            "recipients": {
                address: {
                    "action": r.action,
                    "reason": r.reason,
                    "approvals": r.approvals,
                    "approver": r.approver,
                    "classes": list(r.classes),
                    "facts": list(r.facts),
                    "rules": [
                        {
                            "name": x.name,
                            "action": x.action,
                            "severity": x.severity,
                            "explanation": x.explanation,
                        }
                        for x in r.rules
                    ],
                }
                for address, r in self.recipients.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReviewRecord:
        data: dict[str, Any] = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"review record format {data.get('format')!r} is not {FORMAT}")
        return cls(
            message_id=data.get("message_id"),
            held_at=data["held_at"],
            review_until=data["review_until"],
            cases=tuple(data["cases"]),
            findings=tuple(
                Finding(
                    detector=f["detector"],
                    location=f["location"],
                    confidence=Confidence[f["confidence"].upper()],
                    count=f["count"],
                    excerpt=f["excerpt"],
                    theme=f.get("theme"),
                )
                for f in data["findings"]
            ),
            attachments=tuple(
                Attachment(a["path"], a["kind"], a["size"], frozenset(a["flags"]))
                for a in data["attachments"]
            ),
            recipients={
                address: RecipientShown(
                    action=r["action"],
                    reason=r["reason"],
                    approvals=r["approvals"],
                    approver=r["approver"],
                    classes=tuple(r["classes"]),
                    facts=tuple(r["facts"]),
                    rules=tuple(
                        RuleShown(x["name"], x["severity"], x["explanation"], x.get("action", ""))
                        for x in r["rules"]
                    ),
                )
                for address, r in data["recipients"].items()
            },
        )

    def rules(self) -> tuple[str, ...]:
        """Every rule that fired for any recipient, each once."""
        return tuple(dict.fromkeys(rule.name for r in self.recipients.values() for rule in r.rules))

    def deciding_rules(self) -> tuple[str, ...]:
        """The rules that held, delayed or refused a copy (not those that only rode along)."""
        return tuple(
            dict.fromkeys(
                rule.name
                for r in self.recipients.values()
                for rule in r.rules
                if r.action != "pass" and rule.action == r.action
            )
        )


def finding_json(finding: Finding) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "detector": finding.detector,
        "location": finding.location,
        "confidence": finding.confidence.label,
        "count": finding.count,
        "excerpt": finding.excerpt,
    }
    if finding.theme:
        shown["theme"] = finding.theme
    return shown


def _shown(verdict: RecipientVerdict) -> RecipientShown:
    return RecipientShown(
        action=verdict.action.value,
        reason=verdict.reason,
        approvals=verdict.approvals if verdict.action is Action.QUARANTINE else 0,
        approver=verdict.approver,
        classes=verdict.classes,
        facts=verdict.facts,
        rules=tuple(
            RuleShown(rule.name, rule.severity.label, rule.explanation, rule.action.value)
            for rule in verdict.fired
        ),
    )
