"""UK telephone numbers, normalised to national digits ("01632960123").

A phone number is not sensitive alone; these are LOW and count toward bulk
(a list of families' numbers). The grammar follows how numbers are written:
a leading 0 or +44/0044, an area code of 2-4 digits after the 0, then groups
of 3-4 digits. Requiring the leading 0 keeps NHS numbers out, and the first
group's length keeps dates such as 01-02-2015 out.
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit

_PHONE = re.compile(
    r"(?:(?<![\w+])(?:\+|00)44[ \t]?(?:\(0\)[ \t]?)?(?P<nsn>\d{2,4})"
    r"|(?<![\w+/.\-])(?:\(0(?P<pa>\d{2,4})\)|0(?P<na>\d{2,4})))"
    r"[ \t\-]?(?P<g1>\d{3,4})(?:[ \t\-]?(?P<g2>\d{3,4}))?"
    r"(?![\w/]|[.:\-]\d|[ \t]\d)"
)
_VALID_START = frozenset("1235789")


class PhoneNumberDetector:
    """Finds UK phone numbers; always LOW."""

    name: str = "phone_number"
    # Where the prefilter looks (see detect/prefilter.py): +44, (0 or a leading 0 and digits.
    triggers: tuple[str, ...] = (r"(?:\+|00)44|\(0\d|\b0\d{2,4}[ \t\-]?\d{3}",)
    reach: tuple[int, int] = (0, 16)

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for match in _PHONE.finditer(text):
            area = match.group("nsn") or match.group("pa") or match.group("na")
            digits = "0" + area + match.group("g1") + (match.group("g2") or "")
            if len(digits) not in (10, 11) or digits[1] not in _VALID_START:
                continue
            hits.append(Hit(digits, match.start(), match.end(), Confidence.LOW))
        return hits

    def redact(self, value: str) -> str:
        """The dialling code shows (which area or a mobile); the last three digits do."""
        return f"phone {value[:3]}{'*' * (len(value) - 6)}{value[-3:]}"


DETECTOR = PhoneNumberDetector()
