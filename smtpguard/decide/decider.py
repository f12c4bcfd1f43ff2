"""Everything decide needs from the config, loaded once, and the facts it gathers.

The relay (and `smtpguard scan`) hands a `Decider` what the workers read —
subject, headers, attachments, findings, the cases referred to — plus which
recipients the sender has written to before (the store knows that); the
Decider classifies each recipient, binds them to the case register and
evaluates the policy. Without a policy file every recipient passes, but the
facts are still gathered so that `scan` shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smtpguard.config.model import Config
from smtpguard.config.staff import StaffRegister, load_staff
from smtpguard.decide import RecipientVerdict, Verdict
from smtpguard.decide.domains import DomainGroups, load_domain_groups
from smtpguard.decide.facts import Attachment, MessageFacts, RecipientFacts
from smtpguard.decide.policy import Policy, evaluate, load_policy
from smtpguard.decide.recipients import (
    classify_recipient,
    count_external_visible,
    visible_addresses,
)
from smtpguard.detect import Finding
from smtpguard.detect.edm.match import PersonDetector
from smtpguard.detect.registry import configured_detectors
from smtpguard.envelope import Envelope

# Groups every council has, whether or not domains.csv names them.
_BUILTIN_GROUPS = ("internal", "external")


@dataclass(frozen=True)
class Reading:
    """What a worker hands back: what decide needs of the message, not its text.

    The extracted text stays in the worker: it can be megabytes, and the relay
    process should hold no more of a message's content than it must.
    """

    subject: str
    headers: tuple[tuple[str, str], ...]
    attachments: tuple[Attachment, ...]
    findings: tuple[Finding, ...]
    cases: tuple[str, ...]


class Decider:
    def __init__(
        self,
        groups: DomainGroups,
        staff: StaffRegister | None,
        policy: Policy | None,
        register: PersonDetector | None,
    ) -> None:
        self.groups = groups
        self.staff = staff
        self.policy = policy
        self._register = register

    @classmethod
    def from_config(cls, config: Config) -> Decider:
        """Raises ValueError (file:line: reason) for a broken register or policy."""
        council = config.council
        groups = (
            load_domain_groups(council.domains)
            if council.domains is not None
            else DomainGroups({}, {})
        )
        staff = load_staff(council.staff) if council.staff is not None else None
        policy = None
        if config.policy.file is not None:
            policy = load_policy(
                config.policy.file,
                groups=set(groups.group_names) | set(_BUILTIN_GROUPS),
                routes=set(config.policy.routes),
            )
        person = next(
            (
                d
                for d in configured_detectors(config.detect).detectors
                if isinstance(d, PersonDetector)
            ),
            None,
        )
        return cls(groups, staff, policy, person)

    def facts(
        self, envelope: Envelope, read: Reading, correspondents: frozenset[str]
    ) -> tuple[MessageFacts, tuple[RecipientFacts, ...]]:
        visible = visible_addresses(read.headers)
        message = MessageFacts(
            sender=envelope.sender,
            sender_team=self.staff.team_of(envelope.sender) if self.staff else None,
            subject=read.subject,
            headers=read.headers,
            findings=read.findings,
            cases=read.cases,
            attachments=read.attachments,
            external_visible=count_external_visible(visible, self.groups),
            tls=envelope.tls,
        )
        recipients = tuple(
            classify_recipient(
                address,
                self.groups,
                visible=visible,
                # The store keeps addresses as the envelope spelled them, lower-cased.
                first_time=address.strip().lower() not in correspondents,
                parties=self._parties(address),
                cases=read.cases,
            )
            for address in envelope.recipients
        )
        return message, recipients

    def decide(self, envelope: Envelope, read: Reading, correspondents: frozenset[str]) -> Verdict:
        message, recipients = self.facts(envelope, read, correspondents)
        if self.policy is None:
            return Verdict(
                recipients={
                    r.address: RecipientVerdict(classes=r.classes, facts=tuple(sorted(r.facts)))
                    for r in recipients
                },
                findings=read.findings,
                cases=read.cases,
            )
        return evaluate(self.policy, message, recipients)

    def _parties(self, address: str) -> Sequence[tuple[str, str]]:
        """(case, access) for every case the register lists this address in."""
        if self._register is None:
            return ()
        pairs = []
        for value in self._register.recipient_parties(address):
            case = self._register.case_of(value)
            access = self._register.access_of(value)
            if case is not None and access is not None:
                pairs.append((case, access))
        return pairs
