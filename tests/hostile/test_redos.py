"""ReDoS: the administrator's subject and header patterns run on the sender's text.

They run on the relay's event loop, so each runs under the `regex` module with
a time limit (`conditions.REGEX_TIMEOUT`, 50 ms per condition per message). A
pattern that does not finish counts as matched (fail closed: the rule fires,
and a `not` over it fires too), the explanation says the pattern took too
long, and `policy.regex_timeout` is logged with the rule's name only.

Note on the textbook pattern: `(a+)+$` against "a"*50 + "b" takes Python's
`re` longer than the age of the universe, while `regex` recognises the nested
quantifier and answers (no match) in microseconds. `(a|aa)+$` against the same
text defeats `regex` as well, so it is the pattern that proves the time limit.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiosmtplib
import pytest
import structlog

from smtpguard.decide import Action
from smtpguard.decide.conditions import REGEX_TIMEOUT, RegexTimedOut
from smtpguard.decide.policy import evaluate
from smtpguard.spool import MessageState, RecipientState
from tests.conftest import RelayRunner
from tests.decide.test_policy import (
    OUT,
    load,
    message,
    one_problem,
    outcome,
    quarantine_when,
    rule,
)
from tests.sink import CaptureSink

SLOW_TEXT = "a" * 50 + "b"
CATASTROPHIC = "(a|aa)+$"  # exponential in `regex` too
TEXTBOOK = "(a+)+$"  # exponential in `re`; `regex` sees through it
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example"


# -- the condition ------------------------------------------------------------------------


def test_when_subject_pattern_is_catastrophic_then_matched_within_the_limit(
    tmp_path: Path,
) -> None:
    policy = quarantine_when(tmp_path, f"subject: {{matches: '{CATASTROPHIC}'}}")
    started = time.monotonic()
    verdict = evaluate(policy, message(subject=SLOW_TEXT), [OUT]).recipients[OUT.address]
    assert time.monotonic() - started < 10 * REGEX_TIMEOUT
    assert verdict.action is Action.QUARANTINE
    [explanation] = verdict.explanation
    assert explanation == (
        f"hold-it (high): subject pattern /{CATASTROPHIC}/ took too long on this message "
        "(counted as a match)"
    )
    assert SLOW_TEXT not in explanation


def test_when_textbook_pattern_then_regex_answers_at_once_and_it_does_not_match(
    tmp_path: Path,
) -> None:
    policy = quarantine_when(tmp_path, f"subject: {{matches: '{TEXTBOOK}'}}")
    started = time.monotonic()
    assert outcome(policy, message(subject=SLOW_TEXT)) is Action.PASS
    assert outcome(policy, message(subject="aaaa")) is Action.QUARANTINE
    assert time.monotonic() - started < REGEX_TIMEOUT


def test_when_header_pattern_is_catastrophic_then_one_time_limit_for_all_its_headers(
    tmp_path: Path,
) -> None:
    policy = quarantine_when(tmp_path, f"header: {{name: X-Note, matches: '{CATASTROPHIC}'}}")
    headers = tuple(("X-Note", SLOW_TEXT) for _ in range(1000))
    started = time.monotonic()
    verdict = evaluate(policy, message(headers=headers), [OUT]).recipients[OUT.address]
    assert time.monotonic() - started < 10 * REGEX_TIMEOUT  # not 1000 x 50 ms
    assert verdict.action is Action.QUARANTINE
    assert verdict.explanation == (
        f"hold-it (high): header X-Note pattern /{CATASTROPHIC}/ took too long on this "
        "message (counted as a match)",
    )


def test_when_many_headers_each_just_under_the_limit_then_still_bounded(tmp_path: Path) -> None:
    # Each search alone is fast; ten thousand of them must still share one budget.
    policy = quarantine_when(tmp_path, r"header: {name: X-Note, matches: '(\w+\s?)+z$'}")
    headers = tuple(("X-Note", "word " * 200) for _ in range(10_000))
    started = time.monotonic()
    outcome(policy, message(headers=headers))
    assert time.monotonic() - started < 20 * REGEX_TIMEOUT


def test_when_not_over_a_pattern_that_timed_out_then_the_not_holds_too(tmp_path: Path) -> None:
    # "hold unless the subject says [secure]": a pattern that cannot be decided is no pass.
    policy = quarantine_when(
        tmp_path, f"all: [{{not: {{subject: {{matches: '{CATASTROPHIC}'}}}}}}]"
    )
    verdict = evaluate(policy, message(subject=SLOW_TEXT), [OUT]).recipients[OUT.address]
    assert verdict.action is Action.QUARANTINE
    assert "took too long" in verdict.explanation[0]
    # A pattern that answers keeps its ordinary meaning under `not`.
    quick = quarantine_when(tmp_path, "not: {subject: {matches: 'secure'}}")
    assert outcome(quick, message(subject="secure")) is Action.PASS
    assert outcome(quick, message(subject="hello")) is Action.QUARANTINE


def test_when_pattern_times_out_then_logged_once_with_the_rule_name_only(tmp_path: Path) -> None:
    policy = quarantine_when(tmp_path, f"subject: {{matches: '{CATASTROPHIC}'}}")
    subject = "Amelia Hart " + SLOW_TEXT
    with structlog.testing.capture_logs() as logs:
        evaluate(policy, message(subject=subject), [OUT, OUT, OUT])
    timeouts = [e for e in logs if e["event"] == "policy.regex_timeout"]
    assert timeouts == [
        {"event": "policy.regex_timeout", "rule": "hold-it", "log_level": "warning"}
    ]
    assert "Amelia" not in repr(logs)


def test_timed_out_evidence_is_a_phrase_a_reviewer_reads() -> None:
    assert isinstance(RegexTimedOut("x"), str)


# -- loading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"\[(secure|encrypt)\]",
        r"(?i)^re:\s*",
        r"\p{Lu}{3}",  # `regex` extras are welcome
        r"(?<year>\d{4})-(?P=year)",
        r"a++b",  # possessive
    ],
)
def test_when_pattern_is_valid_regex_syntax_then_loaded(tmp_path: Path, pattern: str) -> None:
    policy = load(tmp_path, rule(f"{{subject: {{matches: '{pattern}'}}}}"))
    assert len(policy.rules) == 1


@pytest.mark.parametrize(
    "pattern, where",
    [
        ("[secure", "subject"),
        ("(1", "subject"),
        ("a{2,1}", "subject"),
        ("(?P<x", "subject"),
        ("*a", "header"),
    ],
)
def test_when_pattern_is_invalid_then_file_line_reason(
    tmp_path: Path, pattern: str, where: str
) -> None:
    leaf = (
        f"{{subject: {{matches: '{pattern}'}}}}   # <-"
        if where == "subject"
        else f"{{header: {{name: X-Priority, matches: '{pattern}'}}}}   # <-"
    )
    reason = one_problem(tmp_path, rule(leaf))
    assert reason.startswith(
        f"rule r: when.{where}.matches: not a valid regular expression: {pattern!r} ("
    )


# -- end to end ------------------------------------------------------------------------

POLICY = f"""
rules:
  - name: textbook-pattern
    description: Subject ends in a run of a's.
    when: {{subject: {{matches: '{TEXTBOOK}'}}}}
    action: quarantine
    severity: high
  - name: slow-pattern
    description: Subject made of a's.
    when:
      all:
        - subject: {{matches: '{CATASTROPHIC}'}}
        - not: {{recipient: {{class: internal}}}}
    action: quarantine
    severity: high
"""


async def test_catastrophic_subject_pattern_end_to_end_held_within_a_second_others_served(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    (relays.tmp_path / "redos.yaml").write_text(POLICY, encoding="utf-8")
    service = await relays.start(
        {
            "council": {"domains": str(EXAMPLE / "domains.csv")},
            "policy": {"file": "redos.yaml"},
            "server": {"mode": "before-queue"},  # the 250 waits for the verdict: time it
        }
    )
    assert service.address is not None
    port = service.address[1]
    slow = (f"From: m.patel@northshire.gov.uk\r\nSubject: {SLOW_TEXT}\r\n\r\nhello\r\n").encode()
    clean = b"From: m.patel@northshire.gov.uk\r\nSubject: lunch\r\n\r\nat one?\r\n"

    async def send(content: bytes, recipient: str) -> tuple[str, float]:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
        await client.connect()
        started = time.monotonic()
        _, reply = await client.sendmail("m.patel@northshire.gov.uk", [recipient], content)
        took = time.monotonic() - started
        await client.quit()
        return reply, took

    with structlog.testing.capture_logs() as logs:
        results = await asyncio.gather(
            send(slow, "s.mills@millsandco-solicitors.co.uk"),
            *(send(clean, f"colleague{i}@northshire.gov.uk") for i in range(5)),
        )
    (reply, took), *others = results
    assert "queued as" in reply
    assert took < 1.0, took
    assert all("queued as" in r and t < 1.0 for r, t in others), others
    # The 250 waited for the verdict; the held state is recorded just after it.
    message_id = reply.rsplit(" ", 1)[1]
    deadline = time.monotonic() + 5
    record = await service.store.load(message_id)
    while record is not None and record.state is MessageState.RECEIVED:
        assert time.monotonic() < deadline, "the verdict was never recorded"
        await asyncio.sleep(0.02)
        record = await service.store.load(message_id)
    assert record is not None
    assert record.state is MessageState.HELD
    assert [r.state for r in record.recipients] == [RecipientState.HELD]
    await sink.handler.wait_for(5)
    delivered = [c for c in sink.handler.messages if c.sender not in ("", "<>")]
    assert delivered and all(b"Subject: lunch" in c.content for c in delivered)
    timeouts = [e for e in logs if e["event"] == "policy.regex_timeout"]
    assert [e["rule"] for e in timeouts] == ["slow-pattern"]
    assert set(timeouts[0]) == {"event", "rule", "log_level"}
    assert SLOW_TEXT not in repr(logs)
