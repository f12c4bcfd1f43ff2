"""UK postcodes by the strict Royal Mail grammar.

Outward code (A9, A99, AA9, AA99, A9A, AA9A, or GIR), inward code 9AA where
the inward letters are never C I K M O V. Found with or without the space and
in any case, normalised to upper case with one space ("sw1a1aa" -> "SW1A 1AA").
A postcode alone is not secret, so it is MEDIUM: it matters beside a name,
a keyword, or in bulk.
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit

_INWARD = r"[0-9][ABD-HJLNP-UW-Z]{2}"
# Letters follow the Royal Mail rules per position; the lookarounds stop a
# match inside a longer code ("XSW1A 1AA", "NS4 7QJX").
_POSTCODE = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(GIR)[ \t]?(0AA)"
    r"|([A-PR-UWYZ](?:[0-9][0-9]?|[A-HK-Y][0-9][0-9]?|[0-9][A-HJKPSTUW]|[A-HK-Y][0-9][ABEHMNPRV-Y]))"
    rf"[ \t]{{0,2}}({_INWARD})"  # two spaces where a form padded the outward code
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_HAS_DIGIT_LETTERS = re.compile(r"[0-9][A-Za-z]{2}")


class PostcodeDetector:
    """Finds UK postcodes; always MEDIUM."""

    name: str = "postcode"
    # Where the prefilter looks (see detect/prefilter.py): outward code, digit, two letters.
    triggers: tuple[str, ...] = (r"(?i)[A-Z]{1,2}\d[A-Z\d]?[ \t]{0,2}\d[A-Z]{2}|GIR[ \t]?0AA",)
    reach: tuple[int, int] = (0, 0)

    def scan(self, text: str) -> list[Hit]:
        if not _HAS_DIGIT_LETTERS.search(text):
            return []
        hits: list[Hit] = []
        for match in _POSTCODE.finditer(text):
            outward = match.group(1) or match.group(3)
            inward = match.group(2) or match.group(4)
            value = f"{outward} {inward}".upper()
            hits.append(Hit(value, match.start(), match.end(), Confidence.MEDIUM))
        return hits

    def redact(self, value: str) -> str:
        """The outward code (a district) shows; the inward part that locates a street does not."""
        outward, _, inward = value.partition(" ")
        return f"postcode {outward} {'*' * len(inward)}"


DETECTOR = PostcodeDetector()
