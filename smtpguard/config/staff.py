"""The council's staff register (`staff.csv`): who sends as which team, who reviews.

Columns `email,name,team,review_role,login`, as the example council exports
them. Rules read a sender's team; the review commands read the roles of the
operating-system login that runs them. Every mistake is `file:line: reason`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("email", "name", "team", "review_role", "login")
ROLES = frozenset({"reviewer", "approver"})
_TEAM = re.compile(r"[a-z0-9][a-z0-9_-]*")
_LOGIN = re.compile(r"[a-z_][a-z0-9_.-]*\$?")


@dataclass(frozen=True)
class StaffMember:
    email: str  # lower case
    name: str
    team: str
    review_role: str | None  # "reviewer", "approver" or None
    login: str | None


@dataclass(frozen=True)
class StaffRegister:
    by_email: dict[str, StaffMember]
    by_login: dict[str, StaffMember]

    def team_of(self, address: str) -> str | None:
        member = self.by_email.get(address.strip().lower())
        return member.team if member else None


def load_staff(path: Path) -> StaffRegister:
    """Raises ValueError with every problem, each as `path:line: reason`."""
    problems: list[str] = []
    by_email: dict[str, StaffMember] = {}
    by_login: dict[str, StaffMember] = {}
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)}")
            for row in reader:
                line = reader.line_num
                member = _member(row, f"{path}:{line}", problems)
                if member is None:
                    continue
                if member.email in by_email:
                    problems.append(f"{path}:{line}: {member.email} is listed twice")
                    continue
                if member.login and member.login in by_login:
                    problems.append(f"{path}:{line}: login {member.login} is listed twice")
                    continue
                by_email[member.email] = member
                if member.login:
                    by_login[member.login] = member
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if problems:
        raise ValueError("\n".join(problems))
    return StaffRegister(by_email, by_login)


def _member(row: dict[str, str], where: str, problems: list[str]) -> StaffMember | None:
    email = (row.get("email") or "").strip().lower()
    team = (row.get("team") or "").strip().lower()
    role = (row.get("review_role") or "").strip().lower() or None
    login = (row.get("login") or "").strip() or None
    before = len(problems)
    if "@" not in email or email.startswith("@") or email.endswith("@"):
        problems.append(f"{where}: email is not an address")
    if not _TEAM.fullmatch(team):
        problems.append(f"{where}: team must be a lower-case name like children")
    if role is not None and role not in ROLES:
        problems.append(f"{where}: review_role must be reviewer, approver or empty")
    if role is not None and login is None:
        problems.append(f"{where}: a reviewer needs the login they use on the relay server")
    if login is not None and not _LOGIN.fullmatch(login):
        problems.append(f"{where}: login is not a valid user name")
    if len(problems) > before:
        return None
    return StaffMember(email, (row.get("name") or "").strip(), team, role, login)
