"""The rules of release: who may approve a held copy, and when approvals are enough.

Pure functions over what the store recorded, so that they can be checked
inside the store's transaction (two reviewers approving at once) and tested
without one.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtpguard.review.record import RecipientShown
from smtpguard.review.reviewers import APPROVER, Reviewer, ReviewRefused
from smtpguard.spool import Approval


def approvals_needed(shown: RecipientShown | None) -> int:
    """Distinct reviewers a release needs: the policy's number, at least one."""
    return max(shown.approvals, 1) if shown else 1


def check_approval(
    reviewer: Reviewer,
    sender: str,
    recipient: str,
    shown: RecipientShown | None,
    so_far: Sequence[Approval],
) -> None:
    """Raise ReviewRefused, in plain words, when this reviewer may not approve this copy."""
    if reviewer.email == sender.strip().lower():
        raise ReviewRefused(f"{reviewer.login} sent this message and cannot approve it")
    if any(a.reviewer == reviewer.login for a in so_far):
        raise ReviewRefused(
            f"{reviewer.login} has already approved the copy to {recipient}; "
            "a different reviewer must approve it"
        )
    if shown is None:
        return
    needed = approvals_needed(shown)
    if (
        shown.approver
        and reviewer.role != APPROVER
        and len(so_far) == needed - 1
        and not any(a.role == APPROVER for a in so_far)
    ):
        raise ReviewRefused(
            f"the copy to {recipient} needs an approver among its {needed} reviewers, "
            f"and {reviewer.login} is a {reviewer.role}; ask an approver"
        )


def enough(shown: RecipientShown | None, approvals: Sequence[Approval]) -> bool:
    """Distinct reviewers reached the number the policy asked for, with an approver if asked."""
    needed = approvals_needed(shown)
    reviewers = {a.reviewer for a in approvals}
    if len(reviewers) < needed:
        return False
    return not (shown and shown.approver) or any(a.role == APPROVER for a in approvals)
