"""National Insurance numbers by HMRC's prefix rules.

Two prefix letters (neither D F I Q U V, the second not O, and not one of the
pairs HMRC never allocates), six digits, and a suffix A-D or none. The
suffix must be a letter A-D: Presidio's pattern also took `1`, `{` and `}`.
Case-insensitive, because people type "qq 123456 c".
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit, keep_last

_NINO = re.compile(
    r"(?<![A-Za-z0-9])([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z])[ \t]?"
    r"(\d\d)[ \t]?(\d\d)[ \t]?(\d\d)"
    # Suffix A-D, or none; either way not followed by more of a code, nor by
    # `{`, `}` or a digit (the Presidio fault), spaced or not.
    r"(?:[ \t]?([A-D])(?![A-Za-z0-9{}])|(?![A-Za-z0-9{}]|[ \t][{}\d]))",
    re.IGNORECASE,
)
_NOT_ALLOCATED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_CONTEXT = re.compile(r"\bNI\b|\bN\.I\.|(?i:\bnino\b|national\s+insurance)")
_CONTEXT_WINDOW = 40


class NiNumberDetector:
    """Finds NINOs; HIGH beside "NI", "NINO" or "national insurance".

    Without that context a NINO with no suffix is LOW: two letters and six
    digits is also the shape of case references ("CS 204817") and other codes.
    """

    name: str = "ni_number"
    # Where the prefilter looks (see detect/prefilter.py): two letters and six digits.
    triggers: tuple[str, ...] = (r"(?i)[A-Z]{2}[ \t]?\d\d[ \t]?\d\d[ \t]?\d\d",)
    reach: tuple[int, int] = (0, 2)

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for match in _NINO.finditer(text):
            prefix = match.group(1).upper()
            if prefix in _NOT_ALLOCATED:
                continue
            value = prefix + match.group(2) + match.group(3) + match.group(4)
            value += (match.group(5) or "").upper()
            before = text[max(0, match.start() - _CONTEXT_WINDOW) : match.start()]
            if _CONTEXT.search(before):
                confidence = Confidence.HIGH
            else:
                confidence = Confidence.MEDIUM if match.group(5) else Confidence.LOW
            hits.append(Hit(value, match.start(), match.end(), confidence))
        return hits

    def redact(self, value: str) -> str:
        """Only the last two digits and the suffix show: "NI number ** ** *4 56 C"."""
        spaced = " ".join((value[0:2], value[2:4], value[4:6], value[6:8], value[8:])).strip()
        return f"NI number {keep_last(spaced, 3 if len(value) == 9 else 2)}"


DETECTOR = NiNumberDetector()
