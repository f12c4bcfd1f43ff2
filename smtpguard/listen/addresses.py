"""Envelope address syntax, checked with email-validator (no DNS: a relay must not wait on it)."""

from __future__ import annotations

from functools import lru_cache

from email_validator import EmailNotValidError, validate_email


# Council mail goes to the same few thousand addresses again and again.
@lru_cache(maxsize=8192)
def address_problem(address: str, smtputf8: bool) -> str | None:
    """Why `address` cannot be used in the envelope, in words for the client; None if fine."""
    if not address.isascii() and not smtputf8:
        return "non-ASCII address needs the SMTPUTF8 parameter"
    try:
        validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=smtputf8,
            allow_quoted_local=True,
            allow_domain_literal=False,
            globally_deliverable=True,
        )
    except EmailNotValidError as exc:
        return str(exc).rstrip(".")
    return None
