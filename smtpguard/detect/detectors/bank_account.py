"""UK bank details: a sort code with an 8-digit account number near it.

Six digits or an eight-digit number alone are everywhere (references, order
numbers, dates like 14-03-15), so only the pair is a finding: a sort code and
an account number within 60 characters of each other, in either order. The
value is "sortcode:account" so the same details written twice count once.
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit

_SORT_CODE = re.compile(
    r"\d(?<![\d\-./]\d)(?:\d(?P<sep>[ \-]?)\d\d(?P=sep)\d\d)"
    # Not the last six digits of a phone number written "01632 960123".
    r"(?<!(?<!\d)0\d\d[ \-]\d{6})(?<!(?<!\d)0\d{3}[ \-]\d{6})(?<!(?<!\d)0\d{4}[ \-]\d{6})"
    # Not inside a longer number, but "123456 12345678" is a sort code then an account.
    r"(?![\d\-/]|[.,]\d|[ \-]\d(?!\d{7}(?!\d)))"
)
_ACCOUNT = re.compile(r"\d(?<![\d\-./]\d)(?:\d{7}|\d{3} \d{4})(?![\d\-/]|[.,]\d|[ \-]\d)")
_CONTEXT = re.compile(
    r"(?i)\b(?:sort\s*code|s/c|account|acc(?:t|ount)?(?:\s*(?:no|number))?|a/c|bank)\b"
)
_NEAR = 60
_CONTEXT_WINDOW = 40
_SIX_DIGITS = re.compile(r"\d{2}[ \-]?\d{2}[ \-]?\d{2}")


class BankAccountDetector:
    """Finds sort code + account number pairs; HIGH with a banking word nearby."""

    name: str = "bank_account"
    # Where the prefilter looks (see detect/prefilter.py): a sort code; the account is near.
    triggers: tuple[str, ...] = (r"\d\d(?:-\d\d-\d\d| \d\d \d\d|\d{4})",)
    reach: tuple[int, int] = (80, 80)

    def scan(self, text: str) -> list[Hit]:
        if not _SIX_DIGITS.search(text):
            return []
        sort_codes = list(_SORT_CODE.finditer(text))
        if not sort_codes:
            return []
        accounts = list(_ACCOUNT.finditer(text))
        hits: list[Hit] = []
        used: set[int] = set()
        for code in sort_codes:
            best: re.Match[str] | None = None
            best_gap = _NEAR + 1
            for account in accounts:
                if account.start() in used:
                    continue
                if account.start() >= code.end():
                    gap = account.start() - code.end()
                elif account.end() <= code.start():
                    gap = code.start() - account.end()
                else:
                    continue
                if gap < best_gap:
                    best, best_gap = account, gap
            if best is None:
                continue
            used.add(best.start())
            start, end = min(code.start(), best.start()), max(code.end(), best.end())
            window = text[max(0, start - _CONTEXT_WINDOW) : end]
            confidence = Confidence.HIGH if _CONTEXT.search(window) else Confidence.MEDIUM
            value = f"{_digits(code.group(0))}:{_digits(best.group(0))}"
            hits.append(Hit(value, start, end, confidence))
        return hits

    def redact(self, value: str) -> str:
        """Sort code hidden, last four of the account shown."""
        return f"sort code **-**-** account ****{value[-4:]}"


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


DETECTOR = BankAccountDetector()
