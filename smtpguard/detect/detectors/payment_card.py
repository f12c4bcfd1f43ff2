"""Payment card numbers (PANs): issuer prefix, length, Luhn.

Written unbroken or in the groups cards print (4-4-4-4, 4-6-5 for Amex),
with spaces or hyphens. Luhn alone passes one random number in ten, so the
issuer prefix and length must agree too; all-same-digit runs are refused.
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit

_PAN = re.compile(
    r"[2-6](?<![\d\-.]\d)(?<!\d[ \-]\d)(?:"
    r"\d{12,18}"
    r"|\d{3}(?P<s1>[ \-])\d{4}(?P=s1)\d{4}(?P=s1)\d{1,7}"
    r"|\d{3}(?P<s2>[ \-])\d{6}(?P=s2)\d{4,5}"
    r")(?![ \-]?\d)"
)
_SEPARATORS = re.compile(r"[ \-]")
_CONTEXT = re.compile(
    r"(?i)\b(?:card|visa|mastercard|master\s+card|amex|american\s+express|maestro"
    r"|discover|expiry|expires|exp|cvv|cvc|debit|credit|pan)\b"
)
_CONTEXT_WINDOW = 40


def luhn_ok(digits: str) -> bool:
    """The Luhn check every issuer uses."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def issuer_ok(digits: str) -> bool:
    """Prefix and length of Visa, Mastercard, Amex, Maestro or Discover."""
    length = len(digits)
    if digits[0] == "4":
        return length in (13, 16, 19)
    two, four = int(digits[:2]), int(digits[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return length == 16
    if two in (34, 37):
        return length == 15
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649:
        return 16 <= length <= 19
    # Maestro: 50, 56-69 (with the 6s above taken by Discover first).
    return (two == 50 or 56 <= two <= 69) and 12 <= length <= 19


class PaymentCardDetector:
    """Finds card numbers; HIGH with a card word nearby."""

    name: str = "payment_card"
    # Where the prefilter looks (see detect/prefilter.py): the first eight digits.
    triggers: tuple[str, ...] = (r"\d{4}[ \-]?\d{4}",)
    reach: tuple[int, int] = (0, 40)

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for match in _PAN.finditer(text):
            digits = _SEPARATORS.sub("", match.group(0))
            if len(set(digits)) == 1 or not issuer_ok(digits) or not luhn_ok(digits):
                continue
            before = text[max(0, match.start() - _CONTEXT_WINDOW) : match.start()]
            confidence = Confidence.HIGH if _CONTEXT.search(before) else Confidence.MEDIUM
            hits.append(Hit(digits, match.start(), match.end(), confidence))
        return hits

    def redact(self, value: str) -> str:
        """Last four only, as on a receipt."""
        return f"payment card ending {value[-4:]}"


DETECTOR = PaymentCardDetector()
