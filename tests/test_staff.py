"""The staff register: teams for rules, roles for reviewers, every mistake with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.config.staff import load_staff

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example" / "staff.csv"


def test_the_example_councils_staff_load() -> None:
    staff = load_staff(EXAMPLE)
    assert staff.team_of("J.Okafor@Northshire.gov.uk") == "children"
    assert staff.team_of("someone@else.example") is None
    assert staff.by_login["rhughes"].review_role == "approver"
    assert staff.by_login["dclarke"].review_role == "reviewer"
    assert len(staff.by_email) == 7


@pytest.mark.parametrize(
    "row, reason",
    [
        ("nobody,No Body,children,,", "email is not an address"),
        ("a@northshire.gov.uk,A,Children Services,,", "team must be a lower-case name"),
        ("a@northshire.gov.uk,A,children,boss,abc", "review_role must be reviewer, approver"),
        ("a@northshire.gov.uk,A,children,reviewer,", "a reviewer needs the login"),
        ("a@northshire.gov.uk,A,children,reviewer,Bad Login", "login is not a valid user name"),
    ],
)
def test_each_mistake_is_refused_with_its_line(tmp_path: Path, row: str, reason: str) -> None:
    path = tmp_path / "staff.csv"
    path.write_text(f"email,name,team,review_role,login\nok@x.gov.uk,Ok,children,,\n{row}\n")
    with pytest.raises(ValueError) as caught:
        load_staff(path)
    assert f"{path}:3: {reason}" in str(caught.value)


def test_duplicates_and_missing_columns_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "staff.csv"
    path.write_text("email,name,team,review_role,login\na@x.uk,A,t,,\nA@x.uk,B,t,,\n")
    with pytest.raises(ValueError, match=r":3: a@x.uk is listed twice"):
        load_staff(path)
    path.write_text("email,name,team\na@x.uk,A,t\n")
    with pytest.raises(ValueError, match=r":1: missing column\(s\) review_role, login"):
        load_staff(path)
