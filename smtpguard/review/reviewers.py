"""Who is reviewing: the operating-system user, mapped to a role by the staff register.

Reviewers work on the relay server through sudo (`sudo -u smtpguard smtpguard
quarantine ...` or as root); sudo records the invoking user in SUDO_USER and
SUDO_UID, which only sudo sets for a process that could not otherwise touch
the store. Without sudo the reviewer is the real user running the command.
Either way the login must be in the staff register with a review role.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from smtpguard.config.staff import StaffRegister

REVIEWER = "reviewer"
APPROVER = "approver"


class ReviewRefused(Exception):
    """The reviewer may not do this; the message says why, in plain words."""


@dataclass(frozen=True)
class Reviewer:
    login: str
    name: str
    email: str  # lower case
    role: str  # REVIEWER or APPROVER


def invoking_login(environ: Mapping[str, str] | None = None) -> str:
    """The login of the person at the keyboard, through sudo when sudo was used."""
    env = os.environ if environ is None else environ
    sudo_user, sudo_uid = env.get("SUDO_USER"), env.get("SUDO_UID")
    if sudo_user and sudo_uid:
        try:
            entry = pwd.getpwnam(sudo_user)
        except KeyError:
            raise ReviewRefused(f"sudo user {sudo_user!r} is not a user of this server") from None
        if str(entry.pw_uid) != sudo_uid:
            raise ReviewRefused(f"sudo user {sudo_user!r} does not match SUDO_UID {sudo_uid}")
        return sudo_user
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise ReviewRefused(f"user id {os.getuid()} has no name on this server") from None


def reviewer_for(login: str, staff: StaffRegister | None) -> Reviewer:
    """The staff member with this login and a review role, or ReviewRefused."""
    if staff is None:
        raise ReviewRefused("no staff register is configured (council.staff), so nobody may review")
    member = staff.by_login.get(login)
    if member is None:
        raise ReviewRefused(f"{login} is not in the staff register; ask an administrator")
    if member.review_role not in (REVIEWER, APPROVER):
        raise ReviewRefused(f"{login} ({member.name}) has no review role in the staff register")
    return Reviewer(login, member.name, member.email, member.review_role)
