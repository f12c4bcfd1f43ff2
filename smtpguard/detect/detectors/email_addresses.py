"""Email addresses, counted for bulk: one address is normal, a list is a leak.

The pattern is deliberately simple and linear (no nested quantifiers), and
the scan is skipped when the text has no "@" at all.
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@"
    r"[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){1,8}(?![A-Za-z0-9\-])"
)
_TLD = re.compile(r"[A-Za-z]{2,63}")
# "logo@2x.png": high-resolution image names, not addresses (no such top-level domains).
_FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "tif", "tiff"})


class EmailAddressDetector:
    """Finds email addresses; LOW, because the policy counts them."""

    name: str = "email_addresses"
    # Where the prefilter looks (see detect/prefilter.py): the @ between address characters.
    triggers: tuple[str, ...] = (r"[A-Za-z0-9._%+\-]@[A-Za-z0-9\-]",)
    reach: tuple[int, int] = (64, 600)

    def scan(self, text: str) -> list[Hit]:
        if "@" not in text:
            return []
        hits: list[Hit] = []
        for match in _EMAIL.finditer(text):
            address = match.group(0)
            local, _, domain = address.partition("@")
            if local.startswith(".") or local.endswith(".") or ".." in local:
                continue
            suffix = domain.rpartition(".")[2]
            if not _TLD.fullmatch(suffix) or suffix.lower() in _FILE_SUFFIXES:
                continue
            hits.append(Hit(address.lower(), match.start(), match.end(), Confidence.LOW))
        return hits

    def redact(self, value: str) -> str:
        """The domain shows (whose address it is); the mailbox does not."""
        local, _, domain = value.partition("@")
        return f"email {local[:1]}***@{domain}"


DETECTOR = EmailAddressDetector()
