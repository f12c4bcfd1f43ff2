"""The policy engine: loading (every mistake its own message and line) and evaluation.

Policy texts are written by hand so that line numbers are visible: the line a
problem must be reported on carries the comment `# <-`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from smtpguard.decide import (
    NOTIFY_REVIEWERS,
    NOTIFY_SENDER,
    Action,
    RecipientVerdict,
    Severity,
    Verdict,
    decide_verdict,
)
from smtpguard.decide.facts import (
    CASE_RESTRICTED,
    CASE_UNLISTED,
    EXTERNAL,
    FIRST_TIME,
    INTERNAL,
    LOOKALIKE,
    VISIBLE,
    Attachment,
    MessageFacts,
    RecipientFacts,
)
from smtpguard.decide.policy import Policy, PolicyError, evaluate, load_policy
from smtpguard.detect import Confidence, Finding
from smtpguard.envelope import Envelope

GROUPS = frozenset({"secure", "partner", "webmail", "obsolete"})
ROUTES = frozenset({"secure-gateway"})
MARK = "# <-"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Policy:
    return load_policy(write(tmp_path, text), groups=GROUPS, routes=ROUTES)


def problems(tmp_path: Path, text: str, routes: frozenset[str] = ROUTES) -> list[tuple[int, str]]:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path, groups=GROUPS, routes=routes)
    for problem in caught.value.problems:
        assert str(problem) == f"{path}:{problem.line}: {problem.reason}"
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    assert isinstance(caught.value, ValueError)
    return [(p.line, p.reason) for p in caught.value.problems]


def marked(text: str) -> int:
    [line] = [n for n, row in enumerate(textwrap.dedent(text).splitlines(), 1) if MARK in row]
    return line


def rule(when: str, *, extra: str = "", name: str = "r", action: str = "quarantine") -> str:
    """One rule around a condition written at the indentation of `when:`'s value."""
    body = textwrap.indent(textwrap.dedent(when).strip(), "      ")
    return (
        "rules:\n"
        f"  - name: {name}\n"
        "    description: Held for a reviewer.\n"
        f"    action: {action}\n"
        "    severity: high\n"
        f"{textwrap.indent(textwrap.dedent(extra).strip(), '    ')}\n"
        "    when:\n"
        f"{body}\n"
    )


def one_problem(tmp_path: Path, text: str) -> str:
    """The single problem of `text`, which must be on the line marked `# <-`."""
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    [(line, reason)] = found
    assert line == marked(text), found
    return reason


VALID = """\
rules:
  - name: held
    description: Held for a reviewer.
    when: {finding: {detector: nhs_number}}
    action: quarantine
    severity: high
"""


# -- loading: what a valid file gives --------------------------------------------------


def test_when_valid_policy_then_rules_in_file_order_with_their_settings(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        rules:
          - name: two-approvals
            description: Held for two reviewers.
            when: {finding: {detector: nhs_number}}
            action: quarantine
            approvals: 2
            severity: critical
            notify: reviewers
          - name: wait
            description: Delayed.
            when: {recipient: {fact: first_time}}
            action: delay
            delay: 15m
            severity: medium
          - name: gateway
            description: Routed.
            when: {subject: {matches: '\\[secure\\]'}}
            action: route
            route: secure-gateway
            severity: low
          - name: label
            description: Tagged.
            when: {recipient: {class: external}}
            action: tag
            subject_prefix: "[EXTERNAL]"
            severity: low
        """,
    )
    assert [r.name for r in policy.rules] == ["two-approvals", "wait", "gateway", "label"]
    first, wait, gateway, label = policy.rules
    assert (first.action, first.approvals, first.severity) == (
        Action.QUARANTINE,
        2,
        Severity.CRITICAL,
    )
    assert first.notify == {NOTIFY_REVIEWERS}
    assert first.line == 2
    assert (wait.action, wait.delay_seconds) == (Action.DELAY, 900.0)
    assert (gateway.action, gateway.route) == (Action.ROUTE, "secure-gateway")
    assert (label.action, label.subject_prefix) == (Action.TAG, "[EXTERNAL]")
    assert policy.source == tmp_path / "policy.yaml"


def test_when_quarantine_without_approvals_then_one(tmp_path: Path) -> None:
    assert load(tmp_path, VALID).rules[0].approvals == 1


def test_when_rules_list_empty_then_policy_passes_everything(tmp_path: Path) -> None:
    policy = load(tmp_path, "rules: []\n")
    verdict = evaluate(policy, message(findings=(finding("nhs_number"),)), [recipient("a@x.org")])
    assert verdict.action is Action.PASS


# -- loading: one test per kind of mistake --------------------------------------------


def test_when_yaml_syntax_error_then_line_and_reason(tmp_path: Path) -> None:
    text = """\
    rules:
      - name: r
        description: [unclosed
        action: pass   # <-
    """
    [(line, reason)] = problems(tmp_path, text)
    assert line == marked(text)
    assert reason.startswith("YAML syntax: ")


def test_when_file_missing_then_refused_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(path, groups=GROUPS, routes=ROUTES)
    [problem] = caught.value.problems
    assert problem.file == path
    assert "No such file" in problem.reason


def test_when_file_empty_then_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "# nothing yet\n") == [(1, "the policy is empty: it needs `rules:`")]


def test_when_top_level_is_a_list_then_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "- name: r\n") == [
        (1, "a policy is a mapping with `rules:` (and `conditions:`)")
    ]


def test_when_rules_missing_then_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "conditions: {}\n") == [
        (1, "`rules:` is missing (the list of rules)")
    ]


def test_when_unknown_top_level_key_then_refused(tmp_path: Path) -> None:
    text = VALID + "rule_set: strict   # <-\n"
    assert one_problem(tmp_path, text) == (
        "rule_set: unknown key (expected one of: conditions, rules)"
    )


def test_when_rules_is_not_a_list_then_refused(tmp_path: Path) -> None:
    text = "rules:\n  name: r   # <-\n"
    assert one_problem(tmp_path, text) == (
        "rules: must be a list of rules (each item starts with `- `)"
    )


def test_when_rule_is_not_a_mapping_then_refused(tmp_path: Path) -> None:
    text = "rules:\n  - just-a-name   # <-\n"
    assert one_problem(tmp_path, text) == (
        "rules[0]: a rule must be a mapping (name:, description:, when:, ...)"
    )


def test_when_key_given_twice_then_refused(tmp_path: Path) -> None:
    text = """\
    rules:
      - name: r
        description: Held.
        when: {finding: {detector: nhs_number}}
        action: quarantine
        severity: high
        severity: low   # <-
    """
    assert one_problem(tmp_path, text) == "rule r: severity: key given twice"


def test_when_key_given_twice_inside_a_condition_then_refused(tmp_path: Path) -> None:
    text = rule(
        """\
        finding:
          detector: nhs_number
          detector: ni_number   # <-
        """
    )
    assert one_problem(tmp_path, text) == "rule r: when.finding.detector: key given twice"


def test_when_unknown_rule_key_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", extra="aproovals: 2   # <-")
    assert one_problem(tmp_path, text).startswith(
        "rule r: aproovals: unknown key (expected one of: name, description, when, action,"
    )


def test_when_required_key_missing_then_each_named_at_the_rule(tmp_path: Path) -> None:
    text = """\
    rules:
      - name: r   # <-
        when: {finding: {detector: nhs_number}}
        action: quarantine
    """
    assert problems(tmp_path, text) == [
        (
            2,
            "rule r: description is missing "
            "(plain words: they become the reason the sender and reviewer read)",
        ),
        (2, "rule r: severity is missing (one of low, medium, high, critical)"),
    ]


def test_when_rule_name_not_lower_case_hyphenated_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", name="Case To Webmail   # <-")
    assert one_problem(tmp_path, text) == (
        "rules[0]: name: 'Case To Webmail': a name is lower-case letters and digits, "
        "words joined by hyphens (like-this-one)"
    )


def test_when_rule_name_used_twice_then_refused_naming_the_first(tmp_path: Path) -> None:
    text = VALID + VALID.removeprefix("rules:\n").replace("- name: held", "- name: held   # <-")
    assert one_problem(tmp_path, text) == (
        "rule held: name: rule name 'held' given twice (first at line 2)"
    )


def test_when_description_empty_then_refused(tmp_path: Path) -> None:
    text = VALID.replace("description: Held for a reviewer.", 'description: ""   # <-')
    assert one_problem(tmp_path, text) == "rule held: description: must not be empty"


def test_when_description_not_text_then_refused(tmp_path: Path) -> None:
    text = VALID.replace("description: Held for a reviewer.", "description: [a, b]   # <-")
    assert one_problem(tmp_path, text) == "rule held: description: must be text"


def test_when_unknown_action_then_refused(tmp_path: Path) -> None:
    text = VALID.replace("action: quarantine", "action: hold   # <-")
    assert one_problem(tmp_path, text) == (
        "rule held: action: unknown action 'hold' "
        "(one of pass, tag, delay, route, require_tls, quarantine, reject)"
    )


def test_when_unknown_severity_then_refused(tmp_path: Path) -> None:
    text = VALID.replace("severity: high", "severity: urgent   # <-")
    assert one_problem(tmp_path, text) == (
        "rule held: severity: unknown severity 'urgent' (one of low, medium, high, critical)"
    )


def test_when_approvals_on_a_delay_rule_then_refused(tmp_path: Path) -> None:
    text = rule(
        "{finding: {detector: nhs_number}}", action="delay", extra="delay: 5m\napprovals: 2   # <-"
    )
    assert one_problem(tmp_path, text) == (
        "rule r: approvals: only a quarantine rule takes approvals (this rule's action is delay)"
    )


@pytest.mark.parametrize("value", ["0", "6"])
def test_when_approvals_out_of_range_then_refused(tmp_path: Path, value: str) -> None:
    text = rule("{finding: {detector: nhs_number}}", extra=f"approvals: {value}   # <-")
    assert one_problem(tmp_path, text) == (f"rule r: approvals: must be from 1 to 5 (not {value})")


@pytest.mark.parametrize("value", ["two", "true", "1.5"])
def test_when_approvals_not_a_whole_number_then_refused(tmp_path: Path, value: str) -> None:
    text = rule("{finding: {detector: nhs_number}}", extra=f"approvals: {value}   # <-")
    assert one_problem(tmp_path, text) == "rule r: approvals: must be a whole number"


def test_when_delay_on_a_quarantine_rule_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", extra="delay: 15m   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: delay: only a delay rule takes delay (this rule's action is quarantine)"
    )


def test_when_delay_rule_without_delay_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", action="delay   # <-")
    assert one_problem(tmp_path, text) == "rule r: a delay rule needs delay: (e.g. 15m)"


def test_when_delay_not_a_duration_then_refused(tmp_path: Path) -> None:
    text = rule(
        "{finding: {detector: nhs_number}}", action="delay", extra="delay: 15 minutes   # <-"
    )
    assert one_problem(tmp_path, text) == (
        "rule r: delay: not a duration: '15 minutes' (write e.g. 30s, 5m, 2h or 5d)"
    )


def test_when_delay_without_unit_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", action="delay", extra="delay: 15   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: delay: must be a duration with its unit, e.g. 15m, 90s or 2h"
    )


def test_when_delay_longer_than_a_day_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", action="delay", extra="delay: 2d   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: delay: must be from 1s to 1d (to hold longer, quarantine)"
    )


def test_when_unknown_route_then_refused_listing_the_configured(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", action="route", extra="route: egress   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: route: no route named 'egress' (known: secure-gateway)"
    )


def test_when_route_named_and_none_configured_then_refused(tmp_path: Path) -> None:
    text = rule(
        "{finding: {detector: nhs_number}}", action="route", extra="route: secure-gateway   # <-"
    )
    [(line, reason)] = problems(tmp_path, text, routes=frozenset())
    assert line == marked(text)
    assert reason == (
        "rule r: route: no route named 'secure-gateway' (known: no routes are configured)"
    )


def test_when_route_rule_without_route_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", action="route   # <-")
    assert one_problem(tmp_path, text) == "rule r: a route rule needs route: (a route's name)"


def test_when_route_on_a_quarantine_rule_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", extra="route: secure-gateway   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: route: only a route rule takes route (this rule's action is quarantine)"
    )


def test_when_subject_prefix_on_a_quarantine_rule_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", extra="subject_prefix: '[X]'   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: subject_prefix: only a tag rule takes subject_prefix "
        "(this rule's action is quarantine)"
    )


def test_when_unknown_notify_target_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number}}", extra="notify: [sender, manager]   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: notify: no notify target named 'manager' (known: reviewers, sender)"
    )


def test_when_unknown_detector_then_refused_listing_the_known(tmp_path: Path) -> None:
    text = rule("{finding: {detector: [nhs_number, nhs_numbr]}}   # <-")
    reason = one_problem(tmp_path, text)
    assert reason.startswith(
        "rule r: when.finding.detector: no detector named 'nhs_numbr' (known: bank_account, "
    )
    assert "uninspectable" in reason


def test_when_finding_without_detector_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {min_count: 2}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.finding: detector is missing (which detector's findings)"
    )


def test_when_min_count_below_one_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number, min_count: 0}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.finding.min_count: must be 1 or more (not 0)"
    )


def test_when_unknown_confidence_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number, min_confidence: certain}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.finding.min_confidence: unknown confidence 'certain' "
        "(one of low, medium, high)"
    )


def test_when_unknown_place_then_refused(tmp_path: Path) -> None:
    text = rule("{finding: {detector: nhs_number, where: [body, footer]}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.finding.where: no place named 'footer' "
        "(known: attachment, body, header, message, subject)"
    )


def test_when_unknown_recipient_class_then_refused(tmp_path: Path) -> None:
    text = rule("{recipient: {class: webmial}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.recipient.class: no recipient class named 'webmial' "
        "(known: external, internal, obsolete, partner, secure, webmail)"
    )


def test_when_unknown_recipient_fact_then_refused(tmp_path: Path) -> None:
    text = rule("{recipient: {fact: first_timer}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.recipient.fact: no recipient fact named 'first_timer' (known: "
        "case_allowed, case_restricted, case_unlisted, first_time, lookalike, obsolete, visible)"
    )


def test_when_recipient_names_class_and_fact_then_refused(tmp_path: Path) -> None:
    text = rule("{recipient: {class: webmail, fact: first_time}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.recipient: give exactly one of class, fact (found class, fact)"
    )


def test_when_sender_address_is_not_an_address_then_refused(tmp_path: Path) -> None:
    text = rule("{sender: {address: [j.okafor]}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.sender.address: 'j.okafor' is not an email address"
    )


def test_when_subject_regex_does_not_compile_then_refused(tmp_path: Path) -> None:
    text = rule("{subject: {matches: '[secure'}}   # <-")
    assert one_problem(tmp_path, text).startswith(
        "rule r: when.subject.matches: not a valid regular expression: '[secure' ("
    )


def test_when_header_regex_does_not_compile_then_refused(tmp_path: Path) -> None:
    text = rule("{header: {name: X-Priority, matches: '(1'}}   # <-")
    assert one_problem(tmp_path, text).startswith(
        "rule r: when.header.matches: not a valid regular expression: '(1' ("
    )


def test_when_header_has_both_matches_and_present_then_refused(tmp_path: Path) -> None:
    text = rule("{header: {name: X-Priority, matches: '1', present: true}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.header: give exactly one of matches: or present:"
    )


def test_when_header_present_is_not_a_boolean_then_refused(tmp_path: Path) -> None:
    text = rule("{header: {name: X-Priority, present: sometimes}}   # <-")
    assert one_problem(tmp_path, text) == "rule r: when.header.present: must be true or false"


def test_when_unknown_attachment_flag_then_refused(tmp_path: Path) -> None:
    text = rule("{attachment: {flag: [hidden_sheets]}}   # <-")
    reason = one_problem(tmp_path, text)
    assert reason.startswith(
        "rule r: when.attachment.flag: no attachment flag named 'hidden_sheets' (known: comments,"
    )


def test_when_message_condition_has_two_keys_then_refused(tmp_path: Path) -> None:
    text = rule("{message: {tls: true, mixed_cases: true}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.message: give exactly one of external_visible_min, cases_min, "
        "mixed_cases, tls (found tls, mixed_cases)"
    )


def test_when_message_flag_is_not_a_boolean_then_refused(tmp_path: Path) -> None:
    text = rule("{message: {mixed_cases: often}}   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.message.mixed_cases: must be true or false"
    )


def test_when_empty_all_then_refused(tmp_path: Path) -> None:
    text = rule("all: []   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: when.all: an empty all: list (it needs at least one condition)"
    )


def test_when_empty_any_then_refused(tmp_path: Path) -> None:
    text = rule(
        """\
        all:
          - finding: {detector: nhs_number}
          - any: []   # <-
        """
    )
    assert one_problem(tmp_path, text) == (
        "rule r: when.all[1].any: an empty any: list (it needs at least one condition)"
    )


def test_when_all_is_not_a_list_then_refused(tmp_path: Path) -> None:
    text = rule("all: {finding: {detector: nhs_number}}   # <-")
    assert one_problem(tmp_path, text) == "rule r: when.all: must be a list of conditions"


def test_when_two_conditions_in_one_mapping_then_refused(tmp_path: Path) -> None:
    text = rule(
        """\
        finding: {detector: nhs_number}   # <-
        recipient: {class: webmail}
        """
    )
    assert one_problem(tmp_path, text) == (
        "rule r: when: one condition per mapping, found finding, recipient: "
        "combine conditions with all: or any:"
    )


def test_when_unknown_condition_then_refused(tmp_path: Path) -> None:
    text = rule("findings: {detector: nhs_number}   # <-")
    assert one_problem(tmp_path, text).startswith(
        "rule r: when.findings: unknown key (expected one of: all, any, not, use, finding,"
    )


def test_when_condition_is_not_a_mapping_then_refused(tmp_path: Path) -> None:
    text = rule(
        """\
        all:
          - nhs_number   # <-
        """
    )
    assert one_problem(tmp_path, text).startswith(
        "rule r: when.all[0]: a condition is a mapping with one of: all, any, not, use,"
    )


def test_when_unknown_named_condition_then_refused(tmp_path: Path) -> None:
    text = "conditions:\n  sensitive: {finding: {detector: nhs_number}}\n" + rule(
        "use: sensitve   # <-"
    )
    assert one_problem(tmp_path, text) == (
        "rule r: when.use: no named condition 'sensitve' (named conditions: sensitive)"
    )


def test_when_named_condition_uses_one_below_it_then_refused(tmp_path: Path) -> None:
    text = (
        "conditions:\n"
        "  first: {use: second}   # <-\n"
        "  second: {finding: {detector: nhs_number}}\n" + rule("use: second")
    )
    assert one_problem(tmp_path, text) == (
        "condition first: use: no named condition 'second' "
        "(named conditions: none above this point)"
    )


def test_when_a_named_condition_is_wrong_then_only_its_definition_is_reported(
    tmp_path: Path,
) -> None:
    text = "conditions:\n  sensitive: {finding: {detector: nhs}}   # <-\n" + rule("use: sensitive")
    assert one_problem(tmp_path, text).startswith(
        "condition sensitive: finding.detector: no detector named 'nhs'"
    )


def test_when_an_alias_contains_itself_then_refused_not_crashed(tmp_path: Path) -> None:
    text = rule("&loop {not: *loop}   # <-")
    assert one_problem(tmp_path, text).startswith("rule r: when")
    assert "nested more than 16 deep" in one_problem(tmp_path, text)


def test_when_yaml_aliases_nest_exponentially_then_loading_stays_fast(tmp_path: Path) -> None:
    levels = ["a0: &a0 {finding: {detector: nhs_number}}"]
    levels += [f"a{n}: &a{n} {{any: [{', '.join([f'*a{n - 1}'] * 10)}]}}" for n in range(1, 10)]
    text = "x-anchors:\n" + "".join(f"  {line}\n" for line in levels) + rule("*a9")
    text = text.replace("x-anchors:", "conditions:")  # a mapping the loader reads
    policy = load(tmp_path, text)
    facts = message(findings=(finding("nhs_number"),))
    assert outcome(policy, facts) is Action.QUARANTINE


def test_when_several_mistakes_then_every_one_reported_in_line_order(tmp_path: Path) -> None:
    text = """\
    rules:
      - name: a
        description: Held.
        when: {finding: {detector: nhs_numbr}}
        action: quarantine
        severity: high
      - name: b
        description: Held.
        when: {recipient: {class: webmial}}
        action: hold
        severity: high
    """
    found = problems(tmp_path, text)
    assert [line for line, _ in found] == [4, 9, 10]
    assert [reason.split(":")[0] for _, reason in found] == ["rule a", "rule b", "rule b"]


# -- evaluation helpers ----------------------------------------------------------------


def finding(
    detector: str,
    location: str = "body",
    confidence: Confidence = Confidence.HIGH,
    count: int = 1,
    excerpt: str = "redacted",
) -> Finding:
    return Finding(detector, location, confidence, count, excerpt)


def message(
    *,
    findings: tuple[Finding, ...] = (),
    cases: tuple[str, ...] = (),
    sender: str = "j.okafor@northshire.gov.uk",
    team: str | None = "children",
    subject: str = "Meeting notes",
    headers: tuple[tuple[str, str], ...] = (),
    attachments: tuple[Attachment, ...] = (),
    external_visible: int = 0,
    tls: bool = False,
) -> MessageFacts:
    return MessageFacts(
        sender=sender,
        sender_team=team,
        subject=subject,
        headers=headers,
        findings=findings,
        cases=cases,
        attachments=attachments,
        external_visible=external_visible,
        tls=tls,
    )


def recipient(
    address: str,
    classes: tuple[str, ...] = (EXTERNAL,),
    facts: frozenset[str] = frozenset(),
    *,
    cases_allowed: tuple[str, ...] = (),
    cases_restricted: tuple[str, ...] = (),
) -> RecipientFacts:
    domain = address.rpartition("@")[2]
    return RecipientFacts(
        address,
        domain,
        classes,
        facts,
        cases_allowed=cases_allowed,
        cases_restricted=cases_restricted,
    )


def held_by(policy: Policy, facts: MessageFacts, *people: RecipientFacts) -> dict[str, Action]:
    verdict = evaluate(policy, facts, people)
    return {address: v.action for address, v in verdict.recipients.items()}


def outcome(policy: Policy, facts: MessageFacts) -> Action:
    """The action for one outside recipient."""
    return evaluate(policy, facts, [OUT]).recipients[OUT.address].action


def quarantine_when(tmp_path: Path, when: str) -> Policy:
    return load(tmp_path, rule(when, name="hold-it"))


OUT = recipient("a@example.org")
IN = recipient("m.patel@northshire.gov.uk", (INTERNAL,))


# -- conditions -------------------------------------------------------------------------


def test_all_holds_only_when_every_condition_holds(tmp_path: Path) -> None:
    policy = quarantine_when(
        tmp_path,
        """\
        all:
          - finding: {detector: nhs_number}
          - recipient: {class: external}
        """,
    )
    nhs = message(findings=(finding("nhs_number"),))
    assert held_by(policy, nhs, OUT, IN) == {
        OUT.address: Action.QUARANTINE,
        IN.address: Action.PASS,
    }
    assert held_by(policy, message(), OUT) == {OUT.address: Action.PASS}


def test_any_holds_when_one_holds_and_collects_every_true_branch(tmp_path: Path) -> None:
    policy = quarantine_when(
        tmp_path,
        """\
        any:
          - finding: {detector: nhs_number}
          - finding: {detector: ni_number}
          - finding: {detector: chi_number}
        """,
    )
    assert outcome(policy, message()) is Action.PASS
    both = message(findings=(finding("nhs_number"), finding("ni_number", "attachment:a.pdf")))
    verdict = evaluate(policy, both, [OUT]).recipients[OUT.address]
    assert verdict.action is Action.QUARANTINE
    assert [f.detector for f in verdict.fired[0].findings] == ["nhs_number", "ni_number"]


def test_not_inverts_and_explains_what_was_absent(tmp_path: Path) -> None:
    policy = quarantine_when(
        tmp_path,
        """\
        all:
          - finding: {detector: nhs_number}
          - not: {recipient: {class: internal}}
        """,
    )
    verdict = evaluate(policy, message(findings=(finding("nhs_number"),)), [OUT, IN])
    assert verdict.recipients[IN.address].action is Action.PASS
    assert verdict.recipients[OUT.address].explanation == (
        "hold-it (high): nhs_number in body, 1 distinct, high; not (recipient is internal)",
    )


def test_a_negated_combination_is_explained_with_its_grouping(tmp_path: Path) -> None:
    policy = quarantine_when(
        tmp_path,
        """\
        all:
          - recipient: {fact: first_time}
          - not:
              all:
                - recipient: {fact: case_allowed}
                - recipient: {class: [secure, partner]}
        """,
    )
    new = recipient("hv@nhs.net", ("secure",), frozenset({FIRST_TIME}))
    assert evaluate(policy, message(), [new]).recipients[new.address].explanation == (
        "hold-it (high): first mail from this sender to this recipient; "
        "not (recipient is listed as allowed for a case this message refers to "
        "and (recipient's domain is in the partner or secure group))",
    )


def test_min_count_is_distinct_values_in_one_place_never_added_across_places(
    tmp_path: Path,
) -> None:
    policy = quarantine_when(tmp_path, "finding: {detector: nhs_number, min_count: 3}")
    spread = message(
        findings=(
            finding("nhs_number", count=2),
            finding("nhs_number", "attachment:a.xlsx", count=2),
        )
    )
    assert outcome(policy, spread) is Action.PASS
    together = message(findings=(finding("nhs_number", "attachment:a.xlsx", count=3),))
    verdict = evaluate(policy, together, [OUT]).recipients[OUT.address]
    assert verdict.action is Action.QUARANTINE
    assert "nhs_number in attachment:a.xlsx, 3 distinct, high" in verdict.explanation[0]


@pytest.mark.parametrize(
    ("confidence", "action"),
    [
        (Confidence.LOW, Action.PASS),
        (Confidence.MEDIUM, Action.QUARANTINE),
        (Confidence.HIGH, Action.QUARANTINE),
    ],
)
def test_min_confidence_is_a_floor(tmp_path: Path, confidence: Confidence, action: Action) -> None:
    policy = quarantine_when(tmp_path, "finding: {detector: keywords, min_confidence: medium}")
    facts = message(findings=(finding("keywords", confidence=confidence),))
    assert outcome(policy, facts) is action


@pytest.mark.parametrize(
    ("location", "action"),
    [
        ("attachment:bundle.zip/annex.docx", Action.QUARANTINE),
        ("header:msip_labels", Action.QUARANTINE),
        ("body", Action.PASS),
        ("subject", Action.PASS),
        ("message", Action.PASS),
    ],
)
def test_where_matches_the_kind_of_place(tmp_path: Path, location: str, action: Action) -> None:
    policy = quarantine_when(
        tmp_path, "finding: {detector: protective_marking, where: [attachment, header]}"
    )
    facts = message(findings=(finding("protective_marking", location),))
    assert outcome(policy, facts) is action


def test_recipient_conditions_are_per_recipient_and_message_ones_shared(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        rule("recipient: {fact: first_time}", name="first") + "  - name: marked\n"
        "    description: Marked.\n"
        "    when: {finding: {detector: protective_marking}}\n"
        "    action: delay\n"
        "    delay: 5m\n"
        "    severity: low\n",
    )
    new = recipient("new@example.org", facts=frozenset({FIRST_TIME}))
    known = recipient("known@example.org")
    facts = message(findings=(finding("protective_marking"),))
    verdict = evaluate(policy, facts, [new, known])
    assert verdict.recipients[new.address].rules == ("first", "marked")
    assert verdict.recipients[known.address].rules == ("marked",)
    assert verdict.recipients[known.address].action is Action.DELAY


def test_a_recipient_class_matches_any_of_the_named(tmp_path: Path) -> None:
    policy = quarantine_when(tmp_path, "recipient: {class: [webmail, partner]}")
    mail = recipient("x@gmail.com", ("webmail",))
    school = recipient("dsl@oakfield.northshire.sch.uk", ("partner",))
    court = recipient("court@justice.gov.uk", ("secure",))
    assert held_by(policy, message(), mail, school, court) == {
        mail.address: Action.QUARANTINE,
        school.address: Action.QUARANTINE,
        court.address: Action.PASS,
    }


def test_sender_address_domain_and_team(tmp_path: Path) -> None:
    by_address = quarantine_when(tmp_path, "sender: {address: [J.Okafor@Northshire.gov.uk]}")
    assert outcome(by_address, message()) is Action.QUARANTINE
    assert outcome(by_address, message(sender="t.wright@northshire.gov.uk")) is Action.PASS
    by_domain = quarantine_when(tmp_path, "sender: {domain: ['*.northshire.gov.uk']}")
    assert outcome(by_domain, message()) is Action.PASS
    assert outcome(by_domain, message(sender="a@mail.northshire.gov.uk")) is Action.QUARANTINE
    by_team = quarantine_when(tmp_path, "sender: {team: [adults]}")
    assert outcome(by_team, message(team="adults")) is Action.QUARANTINE
    assert outcome(by_team, message(team=None)) is Action.PASS


def test_subject_matches_case_insensitively_and_never_quotes_the_subject(tmp_path: Path) -> None:
    policy = quarantine_when(tmp_path, r"subject: {matches: '\[(secure|encrypt)\]'}")
    facts = message(subject="[SECURE] Amelia Hart strategy meeting")
    verdict = evaluate(policy, facts, [OUT]).recipients[OUT.address]
    assert verdict.action is Action.QUARANTINE
    assert "Amelia" not in " ".join(verdict.explanation)
    assert outcome(policy, message(subject="secure storage")) is Action.PASS


def test_header_matches_and_present(tmp_path: Path) -> None:
    auto = (("Auto-Submitted", "auto-replied"),)
    matches = quarantine_when(tmp_path, "header: {name: auto-submitted, matches: '^auto-'}")
    assert outcome(matches, message(headers=auto)) is Action.QUARANTINE
    assert outcome(matches, message(headers=(("Auto-Submitted", "no"),))) is Action.PASS
    absent = quarantine_when(tmp_path, "header: {name: Auto-Submitted, present: false}")
    assert outcome(absent, message(headers=auto)) is Action.PASS
    assert outcome(absent, message()) is Action.QUARANTINE


def test_attachment_kind_and_flag_on_the_same_attachment(tmp_path: Path) -> None:
    policy = quarantine_when(
        tmp_path, "attachment: {kind: xlsx, flag: [hidden_sheet, hidden_rows]}"
    )
    sheet = Attachment("attachment:caseload.xlsx", "xlsx", 10, frozenset({"hidden_rows"}))
    pdf_hidden = Attachment("attachment:a.pdf", "pdf", 10, frozenset({"hidden_rows"}))
    plain_sheet = Attachment("attachment:b.xlsx", "xlsx", 10)
    verdict = evaluate(policy, message(attachments=(sheet,)), [OUT]).recipients[OUT.address]
    assert verdict.action is Action.QUARANTINE
    assert "attachment:caseload.xlsx (xlsx) has hidden_rows" in verdict.explanation[0]
    split = message(attachments=(pdf_hidden, plain_sheet))
    assert outcome(policy, split) is Action.PASS


@pytest.mark.parametrize(
    ("when", "facts", "action"),
    [
        ("message: {external_visible_min: 10}", message(external_visible=10), Action.QUARANTINE),
        ("message: {external_visible_min: 10}", message(external_visible=9), Action.PASS),
        ("message: {cases_min: 2}", message(cases=("CS-204817", "CS-311092")), Action.QUARANTINE),
        ("message: {cases_min: 2}", message(cases=("CS-204817",)), Action.PASS),
        ("message: {mixed_cases: true}", message(cases=("A-1", "B-2")), Action.QUARANTINE),
        ("message: {mixed_cases: true}", message(cases=("A-1",)), Action.PASS),
        ("message: {mixed_cases: false}", message(cases=("A-1",)), Action.QUARANTINE),
        ("message: {tls: false}", message(tls=False), Action.QUARANTINE),
        ("message: {tls: false}", message(tls=True), Action.PASS),
        ("message: {tls: true}", message(tls=True), Action.QUARANTINE),
    ],
)
def test_message_conditions(tmp_path: Path, when: str, facts: MessageFacts, action: Action) -> None:
    assert outcome(quarantine_when(tmp_path, when), facts) is action


def test_a_named_condition_is_used_by_rules(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        "conditions:\n"
        "  identifiers: {finding: {detector: [nhs_number, ni_number]}}\n"
        "  outside: {not: {recipient: {class: internal}}}\n"
        "  identifiers-outside: {all: [{use: identifiers}, {use: outside}]}\n"
        + rule("use: identifiers-outside"),
    )
    facts = message(findings=(finding("ni_number"),))
    assert held_by(policy, facts, OUT, IN) == {
        OUT.address: Action.QUARANTINE,
        IN.address: Action.PASS,
    }


# -- combining fired rules ----------------------------------------------------------------

COMBINED = """\
rules:
  - name: first-time
    description: First time to this address.
    when: {recipient: {fact: first_time}}
    action: delay
    delay: 5m
    severity: medium
  - name: first-time-marked
    description: Marked, first time.
    when: {all: [{recipient: {fact: first_time}}, {finding: {detector: protective_marking}}]}
    action: delay
    delay: 20m
    severity: medium
  - name: restricted
    description: Restricted party.
    when: {recipient: {fact: case_restricted}}
    action: quarantine
    approvals: 2
    severity: critical
    notify: reviewers
  - name: unlisted
    description: Other case's party.
    when: {recipient: {fact: case_unlisted}}
    action: quarantine
    severity: high
  - name: lookalike
    description: Lookalike.
    when: {recipient: {fact: lookalike}}
    action: reject
    severity: high
  - name: gateway
    description: Encrypted on request.
    when: {finding: {detector: encryption_request}}
    action: route
    route: secure-gateway
    severity: low
  - name: tls
    description: Only over TLS.
    when: {finding: {detector: case_reference}}
    action: require_tls
    severity: medium
  - name: label
    description: Labelled.
    when: {recipient: {class: external}}
    action: tag
    subject_prefix: "[EXTERNAL]"
    severity: low
    notify: [sender]
  - name: watch
    description: Watched.
    when: {finding: {detector: case_reference}}
    action: pass
    severity: low
    notify: reviewers
"""


def test_most_severe_action_wins_per_recipient(tmp_path: Path) -> None:
    policy = load(tmp_path, COMBINED)
    people = [
        recipient("a@example.org", facts=frozenset({FIRST_TIME})),
        recipient("b@example.org", facts=frozenset({FIRST_TIME, CASE_RESTRICTED})),
        recipient("c@example.org", facts=frozenset({FIRST_TIME, CASE_RESTRICTED, LOOKALIKE})),
        recipient("d@example.org"),
    ]
    verdict = evaluate(policy, message(), people)
    assert {a: v.action for a, v in verdict.recipients.items()} == {
        "a@example.org": Action.DELAY,
        "b@example.org": Action.QUARANTINE,
        "c@example.org": Action.REJECT,
        "d@example.org": Action.PASS,
    }
    assert verdict.action is Action.REJECT
    rejected = verdict.recipients["c@example.org"]
    assert rejected.rules == ("first-time", "restricted", "lookalike", "label")
    assert rejected.reason == "Lookalike."  # the winning rule's words only
    assert (rejected.approvals, rejected.delay_seconds) == (0, 0.0)


def test_approvals_are_the_most_any_fired_quarantine_rule_needs(tmp_path: Path) -> None:
    policy = load(tmp_path, COMBINED)
    both = recipient("b@example.org", facts=frozenset({CASE_RESTRICTED, CASE_UNLISTED}))
    unlisted = recipient("u@example.org", facts=frozenset({CASE_UNLISTED}))
    verdict = evaluate(policy, message(), [both, unlisted])
    assert verdict.recipients[both.address].approvals == 2
    assert verdict.recipients[both.address].reason == "Restricted party. Other case's party."
    assert verdict.recipients[unlisted.address].approvals == 1


def test_delay_is_the_longest_fired_delay(tmp_path: Path) -> None:
    policy = load(tmp_path, COMBINED)
    new = recipient("a@example.org", facts=frozenset({FIRST_TIME}))
    plain = evaluate(policy, message(), [new]).recipients[new.address]
    assert plain.delay_seconds == 300.0
    marked_facts = message(findings=(finding("protective_marking"),))
    longer = evaluate(policy, marked_facts, [new]).recipients[new.address]
    assert (longer.action, longer.delay_seconds) == (Action.DELAY, 1200.0)
    assert longer.reason == "First time to this address. Marked, first time."


def test_delivery_instructions_accumulate_and_ride_along_with_a_pass(tmp_path: Path) -> None:
    policy = load(tmp_path, COMBINED)
    facts = message(
        findings=(finding("encryption_request", "subject"), finding("case_reference")),
        cases=("CS-204817",),
    )
    verdict = evaluate(policy, facts, [OUT]).recipients[OUT.address]
    assert verdict.action is Action.PASS
    assert verdict.rules == ("gateway", "tls", "label", "watch")
    assert verdict.route == "secure-gateway"
    assert verdict.require_tls is True
    assert (verdict.tag, verdict.subject_prefix) == (True, "[EXTERNAL]")
    assert verdict.notify == {NOTIFY_SENDER, NOTIFY_REVIEWERS}
    assert verdict.approvals == 0


def test_a_route_never_lifts_a_hold(tmp_path: Path) -> None:
    policy = load(tmp_path, COMBINED)
    facts = message(findings=(finding("encryption_request", "subject"),))
    held = recipient("b@example.org", facts=frozenset({CASE_RESTRICTED}))
    verdict = evaluate(policy, facts, [held]).recipients[held.address]
    assert (verdict.action, verdict.route) == (Action.QUARANTINE, "secure-gateway")


def test_a_hold_always_notifies_the_sender_and_a_plain_pass_nobody(tmp_path: Path) -> None:
    policy = load(tmp_path, COMBINED)
    held = recipient("b@example.org", facts=frozenset({CASE_UNLISTED}))
    verdict = evaluate(policy, message(), [held, IN])
    assert verdict.recipients[held.address].notify == {NOTIFY_SENDER}
    assert verdict.recipients[IN.address].notify == frozenset()
    assert verdict.recipients[IN.address] == RecipientVerdict(classes=(INTERNAL,))


def test_explanations_name_rule_severity_findings_and_masked_cases(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        rule(
            """\
            all:
              - finding: {detector: case_reference}
              - recipient: {fact: case_restricted}
            """,
            name="case-material-to-restricted-party",
            extra="approvals: 2",
        ).replace("severity: high", "severity: critical"),
    )
    hidden = "CS-204817 Amelia Hart 943 476 5919"
    facts = message(
        findings=(finding("case_reference", "attachment:report.docx", excerpt=hidden),),
        cases=("CS-204817",),
    )
    father = recipient(
        "dan.hart77@gmail.com",
        ("webmail",),
        frozenset({CASE_RESTRICTED, VISIBLE}),
        cases_restricted=("CS-204817",),
    )
    verdict = evaluate(policy, facts, [father])
    mine = verdict.recipients[father.address]
    assert mine.explanation == (
        "case-material-to-restricted-party (critical): case_reference in attachment:report.docx, "
        "1 distinct, high; recipient is listed as restricted for CS-2***17",
    )
    [fired] = mine.fired
    assert (fired.name, fired.action, fired.severity) == (
        "case-material-to-restricted-party",
        Action.QUARANTINE,
        Severity.CRITICAL,
    )
    assert fired.findings == facts.findings
    text = " ".join(mine.explanation) + mine.reason
    for secret in ("204817", "Amelia", "5919"):
        assert secret not in text
    # The verdict itself carries the cases in clear, as `scan --json` shows them.
    assert verdict.cases == ("CS-204817",)
    assert (mine.classes, mine.facts) == (("webmail",), (CASE_RESTRICTED, VISIBLE))


def test_explanation_of_a_party_of_another_case(tmp_path: Path) -> None:
    policy = quarantine_when(tmp_path, "recipient: {fact: case_unlisted}")
    other = recipient("claire.brennan@outlook.com", ("webmail",), frozenset({CASE_UNLISTED}))
    verdict = evaluate(policy, message(cases=("CS-204817",)), [other])
    assert verdict.recipients[other.address].explanation == (
        "hold-it (high): recipient is a party of a case this message does not refer to",
    )


def test_verdict_lists_cases_sorted_and_the_findings(tmp_path: Path) -> None:
    facts = message(findings=(finding("case_reference"),), cases=("CS-311092", "AS-118204"))
    verdict = evaluate(load(tmp_path, VALID), facts, [OUT])
    assert verdict.cases == ("AS-118204", "CS-311092")
    assert verdict.findings == facts.findings


def test_an_empty_recipient_list_gives_an_empty_passing_verdict(tmp_path: Path) -> None:
    verdict = evaluate(load(tmp_path, VALID), message(), [])
    assert verdict == Verdict({}, (), ())
    assert verdict.action is Action.PASS


def test_decide_verdict_without_a_policy_still_passes_everyone() -> None:
    envelope = Envelope("a@northshire.gov.uk", ("b@example.org", "c@gmail.com"), "::1", "x", 0.0)
    verdict = decide_verdict(envelope, (finding("nhs_number"),))
    assert verdict.action is Action.PASS
    assert set(verdict.recipients) == {"b@example.org", "c@gmail.com"}
    assert all(v == RecipientVerdict() for v in verdict.recipients.values())


# -- keyword themes ------------------------------------------------------------------


def test_a_theme_selects_the_keyword_findings_of_that_theme(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        rule("finding: {detector: keywords, theme: [health], min_confidence: medium}"),
    )
    health = Finding("keywords", "body", Confidence.HIGH, 1, "keyword (health): overdose", "health")
    abuse = Finding(
        "keywords", "body", Confidence.HIGH, 1, "keyword (domestic abuse): MARAC", "domestic_abuse"
    )
    assert outcome(policy, message(findings=(abuse,))) is Action.PASS
    assert outcome(policy, message(findings=(abuse, health))) is Action.QUARANTINE
    verdict = evaluate(policy, message(findings=(abuse, health)), [OUT])
    [line] = verdict.recipients[OUT.address].explanation
    assert "keywords (health) in body, 1 distinct, high" in line
    assert "MARAC" not in line


def test_a_theme_on_another_detector_or_malformed_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, rule("finding: {detector: nhs_number, theme: health}"))
    assert any("theme applies to the keywords detector only" in reason for _, reason in found)
    found = problems(tmp_path, rule("finding: {detector: keywords, theme: [Health Stuff]}"))
    assert any("a theme is a lower-case name like health" in reason for _, reason in found)


def test_when_approver_on_a_delay_rule_then_refused(tmp_path: Path) -> None:
    when = "{finding: {detector: nhs_number}}"
    text = rule(when, action="delay", extra="delay: 5m\napprover: true   # <-")
    assert one_problem(tmp_path, text) == (
        "rule r: approver: only a quarantine rule takes approver (this rule's action is delay)"
    )


def test_when_a_fired_quarantine_rule_wants_an_approver_then_the_verdict_says_so(
    tmp_path: Path,
) -> None:
    policy = load(
        tmp_path,
        rule("{finding: {detector: nhs_number}}", extra="approvals: 2\napprover: true"),
    )
    verdict = evaluate(policy, message(findings=(finding("nhs_number"),)), [recipient("a@x.org")])
    held = verdict.recipients["a@x.org"]
    assert (held.action, held.approvals, held.approver) == (Action.QUARANTINE, 2, True)
    plain = load(tmp_path, rule("{finding: {detector: nhs_number}}"))
    one = evaluate(plain, message(findings=(finding("nhs_number"),)), [recipient("a@x.org")])
    assert one.recipients["a@x.org"].approver is False
