"""Scottish CHI numbers: a DDMMYY date of birth, three digits, a check digit.

The check digit is modulus 11, or modulus 10 for the numbers NHS Scotland
issues from 2026 once a birth date's modulus 11 numbers are used up.

CHI numbers collide with NHS numbers and with dates, so without the word
"CHI" near one this detector stays at LOW: it counts toward bulk but does
not decide on its own.
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit
from smtpguard.detect.detectors.payment_card import luhn_ok

_SEP = r"(?:-|[ \t]*\r?\n[ \t]*|[ \t]{0,2})"

# Written as ten digits, DDMMYY NNNN, or 3-3-4 like an NHS number. A comma is a
# field separator (a CSV export), not part of the number, as for NHS numbers.
_NUMBER = re.compile(
    rf"[0-3](?<![\d+]\d)(?<!\d[ \-./]\d)"
    rf"(?:(\d{{5}}){_SEP}(\d{{4}})|(\d\d){_SEP}(\d{{3}}){_SEP}(\d{{4}}))"
    r"(?![ \-./]?\d)"
)
_CONTEXT = re.compile(r"\bCHI\b|(?i:community\s+health\s+index)")
_CONTEXT_WINDOW = 40
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _date_ok(digits: str) -> bool:
    """DDMMYY is a real day; 29 February in any year divisible by four (or 00)."""
    day, month, year = int(digits[0:2]), int(digits[2:4]), int(digits[4:6])
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS[month - 1]:
        return False
    return not (month == 2 and day == 29 and year % 4 != 0)


def _check_digit_ok(digits: str) -> bool:
    """Modulus 11 (weights 10..2), or, for numbers issued since the modulus 11 numbers
    of a birth date ran out (from 2026), modulus 10: the Luhn check."""
    return _modulus_11_ok(digits) or luhn_ok(digits)


def _modulus_11_ok(digits: str) -> bool:
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


class ChiNumberDetector:
    """Finds CHI numbers by date prefix and checksum; HIGH only beside "CHI"."""

    name: str = "chi_number"
    # Where the prefilter looks (see detect/prefilter.py): ten digits in either grouping.
    triggers: tuple[str, ...] = (r"\d{6}[ \t\r\n\-]*\d{4}|\d\d[ \t\r\n\-]*\d{3}[ \t\r\n\-]*\d{4}",)
    reach: tuple[int, int] = (0, 0)

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for match in _NUMBER.finditer(text):
            digits = match.group(0)[0] + "".join(g for g in match.groups() if g)
            if len(set(digits)) == 1 or not _date_ok(digits) or not _check_digit_ok(digits):
                continue
            before = text[max(0, match.start() - _CONTEXT_WINDOW) : match.start()]
            confidence = Confidence.HIGH if _CONTEXT.search(before) else Confidence.LOW
            hits.append(Hit(digits, match.start(), match.end(), confidence))
        return hits

    def redact(self, value: str) -> str:
        """Hide the date of birth too: only the last four digits show."""
        return f"CHI number ****** {value[-4:]}"


DETECTOR = ChiNumberDetector()
