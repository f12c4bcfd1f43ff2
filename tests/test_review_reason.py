"""A reviewer's reason goes into the audit log for good and into the sender's notice:
one that carries personal data is refused, naming the kind of data, never the value."""

from __future__ import annotations

import pytest

from smtpguard.config import default_config_path, load_config
from smtpguard.config.model import Config
from smtpguard.review.quarantine import check_reason
from smtpguard.review.reviewers import ReviewRefused


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(default_config_path())  # the example council, its registers included


@pytest.mark.parametrize(
    ("reason", "kind", "value"),
    [
        ("checked with the team: NHS 943 476 5919 is right", "nhs number", "943 476 5919"),
        ("sort code 20-00-00 account 12345678 confirmed", "bank account", "12345678"),
        ("ring her on 07700 900123 first", "phone number", "900123"),
        ("born 14/03/2015, confirmed by the school", "date of birth", "14/03/2015"),
    ],
)
def test_when_reason_holds_personal_data_then_refused_without_the_value(
    config: Config, reason: str, kind: str, value: str
) -> None:
    with pytest.raises(ReviewRefused) as refused:
        check_reason(reason, config)
    message = str(refused.value)
    assert kind in message
    assert value not in message


@pytest.mark.parametrize(
    "reason",
    [
        "the recipient is the child's social worker at the partner agency",
        "safeguarding referral, confirmed with the team manager",
        "OFFICIAL-SENSITIVE report, recipient checked",
        "",
        "sent to the wrong Smith: refused — résumé of the case sent separately",
    ],
)
def test_when_reason_names_no_one_then_accepted(config: Config, reason: str) -> None:
    check_reason(reason, config)
