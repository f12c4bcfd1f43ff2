"""NHS numbers (England, Wales, Isle of Man) and Northern Ireland H&C numbers.

Ten digits, written 3-3-4 with spaces, hyphens, nothing, or a line break
where a form wrapped; the tenth digit is a modulus 11 check. The check alone
is weak (ten identical digits pass it), so obviously fake runs are refused and
a number inside a longer run of digits (a card, a phone number) is not one.
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit

# One separator between groups: a hyphen, a space or two, or a line break.
_SEP = r"(?:-|[ \t]*\r?\n[ \t]*|[ \t]{0,2})"

# The first digit is matched before the lookbehind so `re` can skip quickly to
# digits; the lookbehind then refuses a start inside a longer number
# ("+44 ...", "12 943 ...", "1.943..."). A comma is a field separator, not part of
# a number: "14/03/2015,943 476 5919,NS4 7QJ" is a caseload export's row.
_NUMBER = re.compile(
    rf"[1-9](?<![\d+]\d)(?<!\d[ \-./]\d)(\d\d){_SEP}(\d{{3}}){_SEP}(\d{{4}})(?![ \-./]?\d)"
)
_CONTEXT = re.compile(r"(?i:\bnhs\b|\bh\s?&\s?c\b)|\bCHI\b")
# Words that say the digits are something else: still reported, but low.
# An ISBN-10 passes the same modulus 11 check.
_OTHER = re.compile(r"(?i)\b(?:invoice|order|tel|phone|fax|mobile|ref|account|acc|isbn)\b")
_CONTEXT_WINDOW = 40
_SEQUENCES = "01234567890123456789"


def nhs_check_digit_ok(digits: str) -> bool:
    """Modulus 11 with weights 10..2; a remainder giving 10 means no valid number."""
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def looks_fake(digits: str) -> bool:
    """Runs a person types as a placeholder; several of them pass modulus 11."""
    return len(set(digits[:9])) == 1 or digits in _SEQUENCES or digits in _SEQUENCES[::-1]


class NhsNumberDetector:
    """Finds NHS and H&C numbers by format, checksum and context."""

    name: str = "nhs_number"
    # Where the prefilter looks (see detect/prefilter.py): three, three and four digits.
    triggers: tuple[str, ...] = (r"\d{3}[ \t\r\n\-]*\d{3}[ \t\r\n\-]*\d{4}",)
    reach: tuple[int, int] = (0, 0)

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for match in _NUMBER.finditer(text):
            digits = match.group(0)[0] + match.group(1) + match.group(2) + match.group(3)
            if looks_fake(digits) or not nhs_check_digit_ok(digits):
                continue
            before = text[max(0, match.start() - _CONTEXT_WINDOW) : match.start()]
            if _CONTEXT.search(before):
                confidence = Confidence.HIGH
            elif _OTHER.search(before[-20:]):
                confidence = Confidence.LOW
            else:
                confidence = Confidence.MEDIUM
            hits.append(Hit(digits, match.start(), match.end(), confidence))
        return hits

    def redact(self, value: str) -> str:
        """The last four digits let a reviewer match a record without disclosing it."""
        return f"NHS number *** *** {value[-4:]}"


DETECTOR = NhsNumberDetector()
