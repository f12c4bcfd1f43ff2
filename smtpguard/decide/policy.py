"""The policy: YAML rules, refused with file:line for every mistake, and evaluated.

The file's format is documented where administrators read it, in the header
of `config/policy.yaml`. Loading walks the YAML node tree itself (not a
pydantic model) so that every problem points at the line of the very key or
value at fault, and so that each kind of mistake can say in its own words what
is wrong; every problem in the file is reported at once.

`evaluate` runs every rule for every recipient. Per recipient the most severe
action wins (`reject` > `quarantine` > `delay` > `pass`); `tag`, `route` and
`require_tls` ride along with whatever is delivered; each fired rule is kept
with the findings it used and one line of explanation. A rule that fired
because a subject or header pattern took too long is logged as
`policy.regex_timeout`, with the rule's name only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import regex
import structlog
import yaml

from smtpguard.config import ConfigError, Problem, _compose
from smtpguard.config.model import DETECTOR_NAMES, _parse_duration
from smtpguard.decide import (
    NOTIFY_REVIEWERS,
    NOTIFY_SENDER,
    Action,
    FiredRule,
    RecipientVerdict,
    Severity,
    Verdict,
)
from smtpguard.decide.conditions import (
    FACTS,
    PLACES,
    AllOf,
    AnyOf,
    ArrivedOverTls,
    AttachmentMatch,
    CasesMin,
    Condition,
    Context,
    Evidence,
    ExternalVisibleMin,
    FindingMatch,
    HeaderMatches,
    HeaderPresent,
    MixedCases,
    NotOf,
    Outcome,
    RecipientClass,
    RecipientFact,
    RegexTimedOut,
    SenderAddress,
    SenderDomain,
    SenderTeam,
    SubjectMatches,
    check,
)
from smtpguard.decide.facts import EXTERNAL, INTERNAL, MessageFacts, RecipientFacts
from smtpguard.detect import Confidence, Finding
from smtpguard.parse.model import Flag

__all__ = ["DETECTORS", "Policy", "PolicyError", "Rule", "evaluate", "load_policy"]

log = structlog.get_logger("smtpguard.decide")

# Detectors a rule can name: the configurable ones and the parse stage's flags.
DETECTORS = DETECTOR_NAMES | {"hidden_content", "redaction_failure", "uninspectable"}
FLAGS = frozenset(v for k, v in vars(Flag).items() if k.isupper() and isinstance(v, str))

MAX_APPROVALS = 5
MIN_DELAY = 1.0
MAX_DELAY = 86400.0  # longer than a day is a hold: use quarantine
MAX_DEPTH = 16  # deeper than any policy needs; also stops an alias that contains itself

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_TOP_KEYS = ("conditions", "rules")
_RULE_KEYS = (
    "name",
    "description",
    "when",
    "action",
    "severity",
    "approvals",
    "approver",
    "delay",
    "route",
    "subject_prefix",
    "notify",
)
_REQUIRED = {
    "name": "lower-case words joined by hyphens",
    "description": "plain words: they become the reason the sender and reviewer read",
    "when": "the condition",
    "action": f"one of {', '.join(a.value for a in Action)}",
    "severity": f"one of {', '.join(s.label for s in Severity)}",
}
_COMBINATORS = ("all", "any", "not", "use")
_LEAVES = ("finding", "recipient", "sender", "subject", "header", "attachment", "message")
_CONFIDENCES = {c.label: c for c in Confidence}
_SEVERITIES = {s.label: s for s in Severity}
_ACTIONS = {a.value: a for a in Action}
_NOTIFY = (NOTIFY_SENDER, NOTIFY_REVIEWERS)
_BY_SEVERITY = {
    Action.PASS.severity: Action.PASS,
    Action.DELAY.severity: Action.DELAY,
    Action.QUARANTINE.severity: Action.QUARANTINE,
    Action.REJECT.severity: Action.REJECT,
}


_THEME = re.compile(r"[a-z][a-z0-9_]*")


class PolicyError(ValueError):
    """The policy cannot be used; carries every problem found, each `file:line: reason`."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    when: Condition
    action: Action
    severity: Severity
    approvals: int = 0  # quarantine only
    approver: bool = False  # quarantine only: one of the approvals must be an approver's
    delay_seconds: float = 0.0  # delay only
    route: str | None = None  # route only
    subject_prefix: str | None = None  # tag only
    notify: frozenset[str] = frozenset()
    line: int = 0


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    source: Path | None = None


# -- evaluation -----------------------------------------------------------------------


def evaluate(
    policy: Policy, message: MessageFacts, recipients: Sequence[RecipientFacts]
) -> Verdict:
    """Every rule for every recipient; one verdict per recipient."""
    memo: dict[int, Outcome] = {}
    words: dict[int, str] = {}  # each finding put in words once per message
    verdicts: dict[str, RecipientVerdict] = {}
    too_slow: set[str] = set()  # rules that fired on a pattern that timed out, logged once
    for recipient in recipients:
        context = Context(message, recipient, memo)
        fired: list[tuple[Rule, Evidence]] = []
        for rule in policy.rules:
            holds, evidence = check(rule.when, context)
            if holds:
                fired.append((rule, evidence))
                if rule.name not in too_slow and any(
                    isinstance(item, RegexTimedOut) for item in evidence
                ):
                    too_slow.add(rule.name)
                    # The rule's name only: never the subject or header it ran on.
                    log.warning("policy.regex_timeout", rule=rule.name)
        verdicts[recipient.address] = _recipient_verdict(recipient, fired, words)
    return Verdict(verdicts, message.findings, tuple(sorted(message.cases)))


def _recipient_verdict(
    recipient: RecipientFacts, fired: list[tuple[Rule, Evidence]], words: dict[int, str]
) -> RecipientVerdict:
    if not fired:
        return RecipientVerdict(classes=recipient.classes, facts=tuple(sorted(recipient.facts)))
    rules = [rule for rule, _ in fired]
    top = max(rule.action.severity for rule in rules)
    action = _BY_SEVERITY[top]
    winners = [rule for rule in rules if rule.action.severity == top]
    notify = frozenset().union(*(rule.notify for rule in rules))
    if top > 0:  # a held or refused message tells its sender at once
        notify |= {NOTIFY_SENDER}
    records = tuple(_fired(rule, evidence, words) for rule, evidence in fired)
    return RecipientVerdict(
        action=action,
        rules=tuple(rule.name for rule in rules),
        approvals=max(r.approvals for r in winners) if action is Action.QUARANTINE else 0,
        approver=action is Action.QUARANTINE and any(r.approver for r in winners),
        reason=" ".join(dict.fromkeys(rule.description for rule in winners)),
        delay_seconds=max(r.delay_seconds for r in winners) if action is Action.DELAY else 0.0,
        route=next((rule.route for rule in rules if rule.action is Action.ROUTE), None),
        require_tls=any(rule.action is Action.REQUIRE_TLS for rule in rules),
        tag=any(rule.action is Action.TAG for rule in rules),
        subject_prefix=next(
            (rule.subject_prefix for rule in rules if rule.subject_prefix is not None), None
        ),
        notify=notify,
        classes=recipient.classes,
        facts=tuple(sorted(recipient.facts)),
        explanation=tuple(record.explanation for record in records),
        fired=records,
    )


def _fired(rule: Rule, evidence: Evidence, words: dict[int, str]) -> FiredRule:
    """The rule with its findings (each once) and one line of explanation."""
    findings: list[Finding] = []  # evidence holds each one once (see conditions._merged)
    phrases: list[str] = []
    for item in evidence:
        if isinstance(item, str):
            phrase = item
        else:
            findings.append(item)
            phrase = words.get(id(item)) or words.setdefault(id(item), _phrase(item))
        if phrase not in phrases:
            phrases.append(phrase)
    explanation = f"{rule.name} ({rule.severity.label})"
    if phrases:
        explanation += ": " + "; ".join(phrases)
    return FiredRule(rule.name, rule.action, rule.severity, tuple(findings), explanation)


def _phrase(finding: Finding) -> str:
    """A finding in reviewer words: where, how many distinct values, how sure; never the excerpt."""
    return (
        f"{finding.detector}{f' ({finding.theme})' if finding.theme else ''}"
        f" in {finding.location}, {finding.count} distinct, "
        f"{finding.confidence.label}"
    )


# -- loading --------------------------------------------------------------------------


def load_policy(path: Path, *, groups: Collection[str], routes: Collection[str]) -> Policy:
    """Read and check a policy file; raise PolicyError with every problem in it.

    `groups` are the configured recipient domain groups (besides `internal`
    and `external`), `routes` the configured next hops rules may name.
    """
    try:
        root = _compose(path)
    except ConfigError as exc:
        raise PolicyError(list(exc.problems)) from None
    reader = _Reader(path, groups, routes)
    rules = reader.policy(root)
    if reader.problems:
        raise PolicyError(sorted(reader.problems, key=lambda p: p.line))
    return Policy(rules, path)


@dataclass(frozen=True)
class _Where:
    """Where in the file a value sits, as a problem names it: "rule x: when.all[1].finding"."""

    label: str
    path: str = ""

    def key(self, key: str) -> _Where:
        return _Where(self.label, f"{self.path}.{key}" if self.path else key)

    def index(self, index: int) -> _Where:
        return _Where(self.label, f"{self.path}[{index}]")

    def __str__(self) -> str:
        if not self.path:
            return self.label
        return f"{self.label}: {self.path}" if self.label else self.path


_Fields = dict[str, tuple[yaml.Node, yaml.Node]]
_T = TypeVar("_T")
_INVALID = object()


class _Reader:
    def __init__(self, path: Path, groups: Collection[str], routes: Collection[str]) -> None:
        self.path = path
        self.classes = frozenset({INTERNAL, EXTERNAL, *groups})
        self.routes = frozenset(routes)
        self.problems: list[Problem] = []
        self.named: dict[str, Condition] = {}
        self.broken: set[str] = set()  # named conditions already reported as wrong
        self.read: dict[int, Condition | None] = {}  # by YAML node: aliases share nodes
        self._constructor = yaml.constructor.SafeConstructor()

    def problem(self, node: yaml.Node, where: _Where | str, reason: str) -> None:
        text = f"{where}: {reason}" if str(where) else reason
        self.problems.append(Problem(self.path, node.start_mark.line + 1, text))

    # -- the file and its rules

    def policy(self, root: yaml.Node | None) -> tuple[Rule, ...]:
        if root is None:
            self.problems.append(Problem(self.path, 1, "the policy is empty: it needs `rules:`"))
            return ()
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, "", "a policy is a mapping with `rules:` (and `conditions:`)")
            return ()
        fields = self.mapping(root, _Where(""), _TOP_KEYS)
        if "conditions" in fields:
            self.conditions(fields["conditions"][1])
        if "rules" not in fields:
            self.problem(root, "", "`rules:` is missing (the list of rules)")
            return ()
        return self.rules(fields["rules"][1])

    def conditions(self, node: yaml.Node) -> None:
        """Named conditions; each may `use` those above it, so none can refer to itself."""
        where = _Where("conditions")
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, "must be a mapping of names to conditions")
            return
        for name, (key_node, value) in self.mapping(node, where, None).items():
            if not _NAME.fullmatch(name):
                self.problem(key_node, where, f"{name!r}: {_name_rule()}")
                continue
            condition = self.condition(value, _Where(f"condition {name}"), 0)
            if condition is None:
                self.broken.add(name)
            else:
                self.named[name] = condition

    def rules(self, node: yaml.Node) -> tuple[Rule, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, "rules", "must be a list of rules (each item starts with `- `)")
            return ()
        rules: list[Rule] = []
        first: dict[str, int] = {}
        for index, item in enumerate(node.value):
            rule = self.rule(item, index, first)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def rule(self, node: yaml.Node, index: int, first: dict[str, int]) -> Rule | None:
        if not isinstance(node, yaml.MappingNode):
            where = _Where(f"rules[{index}]")
            self.problem(node, where, "a rule must be a mapping (name:, description:, when:, ...)")
            return None
        where = _Where(_label(node, index))
        fields = self.mapping(node, where, _RULE_KEYS)
        name = self.rule_name(fields, where, first)
        for key, hint in _REQUIRED.items():
            if key not in fields:
                self.problem(node, where, f"{key} is missing ({hint})")
        description = self.field(fields, "description", where, self.text)
        action = self.field(fields, "action", where, self.action)
        severity = self.field(fields, "severity", where, self.severity)
        when = None
        if "when" in fields:
            when = self.condition(fields["when"][1], where.key("when"), 0)
        settings = self.action_settings(fields, where, action)
        if not (
            name is not None
            and description is not None
            and action is not None
            and severity is not None
            and when is not None
            and settings is not None
        ):
            return None
        approvals, approver, delay, route, prefix, notify = settings
        return Rule(
            name=name,
            description=description,
            when=when,
            action=action,
            severity=severity,
            approvals=approvals,
            approver=approver,
            delay_seconds=delay,
            route=route,
            subject_prefix=prefix,
            notify=notify,
            line=node.start_mark.line + 1,
        )

    def rule_name(self, fields: _Fields, where: _Where, first: dict[str, int]) -> str | None:
        if "name" not in fields:
            return None
        key_node, node = fields["name"]
        name = self.text(node, where.key("name"))
        if name is None:
            return None
        if not _NAME.fullmatch(name):
            self.problem(node, where.key("name"), f"{name!r}: {_name_rule()}")
            return None
        line = key_node.start_mark.line + 1
        if name in first:
            self.problem(
                node,
                where.key("name"),
                f"rule name {name!r} given twice (first at line {first[name]})",
            )
            return None
        first[name] = line
        return name

    def action_settings(
        self, fields: _Fields, where: _Where, action: Action | None
    ) -> tuple[int, bool, float, str | None, str | None, frozenset[str]] | None:
        """The settings that belong to one action: each refused on any other."""
        ok = True
        owners = {
            "approvals": Action.QUARANTINE,
            "approver": Action.QUARANTINE,
            "delay": Action.DELAY,
            "route": Action.ROUTE,
            "subject_prefix": Action.TAG,
        }
        for key, owner in owners.items():
            if key in fields and action is not None and action is not owner:
                self.problem(
                    fields[key][0],
                    where.key(key),
                    f"only a {owner.value} rule takes {key} (this rule's action is {action.value})",
                )
                ok = False
        approvals = 1 if action is Action.QUARANTINE else 0
        if "approvals" in fields:
            count = self.integer(fields["approvals"][1], where.key("approvals"), 1, MAX_APPROVALS)
            ok = ok and count is not None
            approvals = count if count is not None and action is Action.QUARANTINE else approvals
        approver = False
        if "approver" in fields:
            flag = self.boolean(fields["approver"][1], where.key("approver"))
            ok = ok and flag is not None
            approver = bool(flag)
        delay = 0.0
        if "delay" in fields:
            seconds = self.duration(fields["delay"][1], where.key("delay"))
            ok = ok and seconds is not None
            delay = seconds or 0.0
        elif action is Action.DELAY:
            self.problem(fields["action"][1], where, "a delay rule needs delay: (e.g. 15m)")
            ok = False
        route = None
        if "route" in fields:
            route = self.route(fields["route"][1], where.key("route"))
            ok = ok and route is not None
        elif action is Action.ROUTE:
            self.problem(fields["action"][1], where, "a route rule needs route: (a route's name)")
            ok = False
        prefix = None
        if "subject_prefix" in fields:
            prefix = self.text(fields["subject_prefix"][1], where.key("subject_prefix"))
            ok = ok and prefix is not None
        notify: frozenset[str] = frozenset()
        if "notify" in fields:
            names = self.names(fields["notify"][1], where.key("notify"), _NOTIFY, "notify target")
            ok = ok and names is not None
            notify = names or frozenset()
        if not ok:
            return None
        return approvals, approver, delay, route, prefix, notify

    # -- conditions

    def condition(self, node: yaml.Node, where: _Where, depth: int) -> Condition | None:
        """A condition; a YAML alias to one already read is that one (read, and reported, once)."""
        key = id(node)
        if key in self.read:
            return self.read[key]
        if depth > MAX_DEPTH:
            self.problem(node, where, f"conditions nested more than {MAX_DEPTH} deep")
            return None
        condition = self.unaliased_condition(node, where, depth)
        self.read[key] = condition
        return condition

    def unaliased_condition(self, node: yaml.Node, where: _Where, depth: int) -> Condition | None:
        keys = (*_COMBINATORS, *_LEAVES)
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, f"a condition is a mapping with one of: {', '.join(keys)}")
            return None
        fields = self.mapping(node, where, keys)
        if len(fields) != 1:
            if len(fields) > 1:
                self.problem(
                    node,
                    where,
                    f"one condition per mapping, found {', '.join(fields)}: "
                    "combine conditions with all: or any:",
                )
            elif not node.value:
                self.problem(node, where, f"an empty condition (give one of: {', '.join(keys)})")
            return None
        [(key, (_, value))] = fields.items()
        inner = where.key(key)
        if key in ("all", "any"):
            return self.combination(key, value, inner, depth)
        if key == "not":
            child = self.condition(value, inner, depth + 1)
            return NotOf(child) if child is not None else None
        if key == "use":
            return self.use(value, inner)
        reader = {
            "finding": self.finding,
            "recipient": self.recipient,
            "sender": self.sender,
            "subject": self.subject,
            "header": self.header,
            "attachment": self.attachment,
            "message": self.message,
        }[key]
        return reader(value, inner)

    def combination(self, key: str, node: yaml.Node, where: _Where, depth: int) -> Condition | None:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, where, "must be a list of conditions")
            return None
        if not node.value:
            self.problem(node, where, f"an empty {key}: list (it needs at least one condition)")
            return None
        children = [
            self.condition(item, where.index(i), depth + 1) for i, item in enumerate(node.value)
        ]
        found = tuple(c for c in children if c is not None)
        if len(found) != len(children):
            return None
        return AllOf(found) if key == "all" else AnyOf(found)

    def use(self, node: yaml.Node, where: _Where) -> Condition | None:
        name = self.text(node, where)
        if name is None:
            return None
        if name in self.broken:
            return None  # its own problem is reported where it is defined
        if name not in self.named:
            known = ", ".join(self.named) or "none above this point"
            self.problem(node, where, f"no named condition {name!r} (named conditions: {known})")
            return None
        return self.named[name]

    def finding(self, node: yaml.Node, where: _Where) -> Condition | None:
        fields = self.leaf(
            node, where, ("detector", "theme", "min_count", "min_confidence", "where")
        )
        if fields is None:
            return None
        if "detector" not in fields:
            self.problem(node, where, "detector is missing (which detector's findings)")
            return None
        detectors = self.names(fields["detector"][1], where.key("detector"), DETECTORS, "detector")
        count: int | None = 1
        if "min_count" in fields:
            count = self.integer(fields["min_count"][1], where.key("min_count"), 1, None)
        confidence: Confidence | None = Confidence.LOW
        if "min_confidence" in fields:
            confidence = self.choice(
                fields["min_confidence"][1], where.key("min_confidence"), _CONFIDENCES, "confidence"
            )
        places: frozenset[str] | None = None
        if "where" in fields:
            places = self.names(fields["where"][1], where.key("where"), PLACES, "place")
            if places is None:
                return None
        themes: frozenset[str] | None = None
        if "theme" in fields:
            themes = self.themes(fields["theme"][1], where.key("theme"))
            if themes is None:
                return None
            if detectors is not None and detectors != {"keywords"}:
                self.problem(node, where, "theme applies to the keywords detector only")
                return None
        if detectors is None or count is None or confidence is None:
            return None
        return FindingMatch(detectors, count, confidence, places, themes)

    def themes(self, node: yaml.Node, where: _Where) -> frozenset[str] | None:
        """Keyword themes are the dictionaries' own names: checked for form only."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        names: set[str] = set()
        for item in items:
            value = item.value if isinstance(item, yaml.ScalarNode) else None
            if not isinstance(value, str) or not _THEME.fullmatch(value):
                self.problem(item, where, "a theme is a lower-case name like health")
                return None
            names.add(value)
        if not names:
            self.problem(node, where, "name at least one theme")
            return None
        return frozenset(names)

    def recipient(self, node: yaml.Node, where: _Where) -> Condition | None:
        fields = self.leaf(node, where, ("class", "fact"), exactly_one=True)
        if fields is None:
            return None
        if "class" in fields:
            classes = self.names(
                fields["class"][1], where.key("class"), self.classes, "recipient class"
            )
            return RecipientClass(classes) if classes is not None else None
        facts = self.names(fields["fact"][1], where.key("fact"), FACTS, "recipient fact")
        return RecipientFact(facts) if facts is not None else None

    def sender(self, node: yaml.Node, where: _Where) -> Condition | None:
        fields = self.leaf(node, where, ("address", "domain", "team"), exactly_one=True)
        if fields is None:
            return None
        [(key, (_, value))] = fields.items()
        names = self.names(value, where.key(key), None, key)
        if names is None:
            return None
        if key == "address":
            bad = [n for n in names if n.count("@") != 1]
            for name in bad:
                self.problem(value, where.key(key), f"{name!r} is not an email address")
            return None if bad else SenderAddress(names)
        if key == "domain":
            bad = [n for n in names if "@" in n or not n.removeprefix("*.")]
            for name in bad:
                self.problem(value, where.key(key), f"{name!r} is not a domain (or *.domain)")
            return None if bad else SenderDomain(names)
        return SenderTeam(names)

    def subject(self, node: yaml.Node, where: _Where) -> Condition | None:
        fields = self.leaf(node, where, ("matches",))
        if fields is None:
            return None
        if "matches" not in fields:
            self.problem(node, where, "matches is missing (a regular expression)")
            return None
        pattern = self.regex(fields["matches"][1], where.key("matches"))
        return SubjectMatches(pattern) if pattern is not None else None

    def header(self, node: yaml.Node, where: _Where) -> Condition | None:
        fields = self.leaf(node, where, ("name", "matches", "present"))
        if fields is None:
            return None
        if "name" not in fields:
            self.problem(node, where, "name is missing (which header)")
        if ("matches" in fields) == ("present" in fields):
            self.problem(node, where, "give exactly one of matches: or present:")
            return None
        name = self.text(fields["name"][1], where.key("name")) if "name" in fields else None
        if "matches" in fields:
            pattern = self.regex(fields["matches"][1], where.key("matches"))
            if name is None or pattern is None:
                return None
            return HeaderMatches(name, pattern)
        present = self.boolean(fields["present"][1], where.key("present"))
        if name is None or present is None:
            return None
        return HeaderPresent(name, present)

    def attachment(self, node: yaml.Node, where: _Where) -> Condition | None:
        fields = self.leaf(node, where, ("kind", "flag"))
        if fields is None:
            return None
        if not fields:
            self.problem(node, where, "give kind:, flag: or both")
            return None
        kinds = flags = None
        if "kind" in fields:
            kinds = self.names(fields["kind"][1], where.key("kind"), None, "kind")
            if kinds is None:
                return None
        if "flag" in fields:
            flags = self.names(fields["flag"][1], where.key("flag"), FLAGS, "attachment flag")
            if flags is None:
                return None
        return AttachmentMatch(kinds, flags)

    def message(self, node: yaml.Node, where: _Where) -> Condition | None:
        keys = ("external_visible_min", "cases_min", "mixed_cases", "tls")
        fields = self.leaf(node, where, keys, exactly_one=True)
        if fields is None:
            return None
        [(key, (_, value))] = fields.items()
        if key in ("external_visible_min", "cases_min"):
            minimum = self.integer(value, where.key(key), 1, None)
            if minimum is None:
                return None
            return (
                ExternalVisibleMin(minimum) if key == "external_visible_min" else CasesMin(minimum)
            )
        flag = self.boolean(value, where.key(key))
        if flag is None:
            return None
        return MixedCases(flag) if key == "mixed_cases" else ArrivedOverTls(flag)

    def leaf(
        self, node: yaml.Node, where: _Where, keys: tuple[str, ...], *, exactly_one: bool = False
    ) -> _Fields | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, f"must be a mapping of {', '.join(keys)}")
            return None
        before = len(self.problems)
        fields = self.mapping(node, where, keys)
        if len(self.problems) > before:
            return None
        if exactly_one and len(fields) != 1:
            found = f" (found {', '.join(fields)})" if fields else ""
            self.problem(node, where, f"give exactly one of {', '.join(keys)}{found}")
            return None
        return fields

    # -- values

    def mapping(
        self, node: yaml.MappingNode, where: _Where, allowed: tuple[str, ...] | None
    ) -> _Fields:
        """Keys in order; duplicates and (with `allowed`) unknown keys are problems and dropped."""
        fields: _Fields = {}
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problem(key_node, where, "a key must be a plain word")
                continue
            if key in fields:
                self.problem(key_node, where.key(key), "key given twice")
                continue
            if allowed is not None and key not in allowed:
                self.problem(
                    key_node, where.key(key), f"unknown key (expected one of: {', '.join(allowed)})"
                )
                continue
            fields[key] = (key_node, value)
        return fields

    def field(
        self,
        fields: _Fields,
        key: str,
        where: _Where,
        read: Callable[[yaml.Node, _Where], _T | None],
    ) -> _T | None:
        if key not in fields:
            return None
        return read(fields[key][1], where.key(key))

    def scalar(self, node: yaml.Node) -> object:
        if not isinstance(node, yaml.ScalarNode):
            return _INVALID
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError):
            return _INVALID

    def text(self, node: yaml.Node, where: _Where) -> str | None:
        value = self.scalar(node)
        if not isinstance(value, str):
            self.problem(node, where, "must be text")
            return None
        if not value.strip():
            self.problem(node, where, "must not be empty")
            return None
        return value.strip()

    def integer(self, node: yaml.Node, where: _Where, low: int, high: int | None) -> int | None:
        value = self.scalar(node)
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(node, where, "must be a whole number")
            return None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            self.problem(node, where, f"must be {bounds} (not {value})")
            return None
        return value

    def boolean(self, node: yaml.Node, where: _Where) -> bool | None:
        value = self.scalar(node)
        if not isinstance(value, bool):
            self.problem(node, where, "must be true or false")
            return None
        return value

    def duration(self, node: yaml.Node, where: _Where) -> float | None:
        value = self.scalar(node)
        if not isinstance(value, str):
            self.problem(node, where, "must be a duration with its unit, e.g. 15m, 90s or 2h")
            return None
        try:
            seconds = _parse_duration(value)
        except ValueError as exc:
            self.problem(node, where, str(exc))
            return None
        assert isinstance(seconds, float)
        if not MIN_DELAY <= seconds <= MAX_DELAY:
            self.problem(node, where, "must be from 1s to 1d (to hold longer, quarantine)")
            return None
        return seconds

    def regex(self, node: yaml.Node, where: _Where) -> regex.Pattern[str] | None:
        """Compiled with the `regex` module (a superset of `re`), which can time a match out."""
        source = self.text(node, where)
        if source is None:
            return None
        try:
            return regex.compile(source, regex.IGNORECASE)
        except regex.error as exc:
            self.problem(node, where, f"not a valid regular expression: {source!r} ({exc})")
            return None

    def names(
        self, node: yaml.Node, where: _Where, known: Collection[str] | None, noun: str
    ) -> frozenset[str] | None:
        """A name or a list of names; with `known`, each must be one of them."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if isinstance(node, yaml.SequenceNode) and not items:
            self.problem(node, where, f"an empty list (name at least one {noun})")
            return None
        names: list[str] = []
        ok = True
        for item in items:
            value = self.scalar(item)
            if not isinstance(value, str) or not value.strip():
                self.problem(item, where, f"must be a {noun} or a list of them")
                ok = False
            elif known is not None and value not in known:
                listed = ", ".join(sorted(known)) or "none"
                self.problem(item, where, f"no {noun} named {value!r} (known: {listed})")
                ok = False
            else:
                names.append(value.strip())
        return frozenset(names) if ok else None

    def choice(
        self, node: yaml.Node, where: _Where, choices: dict[str, _T], noun: str
    ) -> _T | None:
        value = self.scalar(node)
        if not isinstance(value, str):
            self.problem(node, where, f"must be one of {', '.join(choices)}")
            return None
        if value not in choices:
            self.problem(node, where, f"unknown {noun} {value!r} (one of {', '.join(choices)})")
            return None
        return choices[value]

    def action(self, node: yaml.Node, where: _Where) -> Action | None:
        return self.choice(node, where, _ACTIONS, "action")

    def severity(self, node: yaml.Node, where: _Where) -> Severity | None:
        return self.choice(node, where, _SEVERITIES, "severity")

    def route(self, node: yaml.Node, where: _Where) -> str | None:
        name = self.text(node, where)
        if name is None:
            return None
        if name not in self.routes:
            known = ", ".join(sorted(self.routes)) or "no routes are configured"
            self.problem(node, where, f"no route named {name!r} (known: {known})")
            return None
        return name


def _label(node: yaml.MappingNode, index: int) -> str:
    """How problems name a rule: by its name when it has a good one, else by position."""
    for key, value in node.value:
        named = key.value == "name" and isinstance(value, yaml.ScalarNode)
        if named and isinstance(value.value, str) and _NAME.fullmatch(value.value):
            return f"rule {value.value}"
    return f"rules[{index}]"


def _name_rule() -> str:
    return "a name is lower-case letters and digits, words joined by hyphens (like-this-one)"
