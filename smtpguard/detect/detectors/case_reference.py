"""Case references from the council's case-management systems.

A case reference is what ties a message to a case (and so to the people who
must never receive it), so each council configures its own formats. Each
pattern is a regex with named groups `prefix` and `number`; the value is
normalised to `PREFIX-NUMBER` so "cs 204817" and "CS/204817" count once.
Patterns are compiled case-insensitively: people type references any way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from smtpguard.detect.base import Confidence, Hit

# Separators people actually type between prefix and number: hyphen, the
# dashes Word substitutes for it, slash, dot, underscore, or nothing.
_SEP = r"[ \t]*[-\u2010\u2011\u2012\u2013\u2014\u2212/._]?[ \t]*"

# Northshire: children's services CS-nnnnnn, adult services AS-nnnnnn.
# The lookarounds stop a match inside a longer code ("ABCS-2048171"), and
# refuse the English word "as" before a number ("quote it as 410772"): a
# lower- or mixed-case "as" counts only with a separator other than a space.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"(?<![A-Za-z0-9])(?!(?-i:as|As|aS)[ \t]+\d)"
    rf"(?P<prefix>CS|AS){_SEP}(?P<number>\d{{6}})(?![A-Za-z0-9])",
)


class CaseReferenceDetector:
    """Finds case references by the configured patterns."""

    name = "case_reference"

    # The configured patterns are their own triggers (see detect/prefilter.py);
    # with lookarounds they match approximately, so reach counts back from the end.
    reach: tuple[int, int] = (64, 0)

    def __init__(self, patterns: Sequence[re.Pattern[str]]) -> None:
        self._patterns = tuple(patterns)
        self.triggers: tuple[str, ...] = tuple(f"(?i){p.pattern}" for p in patterns)

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for pattern in self._patterns:
            for match in pattern.finditer(text):
                prefix = match.group("prefix").upper()
                number = match.group("number")
                hits.append(Hit(f"{prefix}-{number}", match.start(), match.end(), Confidence.HIGH))
        if len(self._patterns) > 1:
            hits = _drop_overlaps(hits)
        return hits

    def redact(self, value: str) -> str:
        """Keep the prefix (which service) and the number's ends, as in "CS-2***17"."""
        prefix, sep, number = value.rpartition("-")
        if not sep:
            prefix, number = "", value
        if len(number) <= 3:
            masked = "*" * len(number)
        else:
            masked = number[0] + "*" * (len(number) - 3) + number[-2:]
        return f"{prefix}-{masked}" if prefix else masked


def _drop_overlaps(hits: list[Hit]) -> list[Hit]:
    """Two patterns matching one reference must not count it twice: keep the first, longest."""
    hits.sort(key=lambda hit: (hit.start, -(hit.end - hit.start)))
    kept: list[Hit] = []
    for hit in hits:
        if not kept or hit.start >= kept[-1].end:
            kept.append(hit)
    return kept


def build(patterns: Sequence[str] = DEFAULT_PATTERNS) -> CaseReferenceDetector:
    """Compile configured patterns; a bad pattern is an admin's config error, said plainly."""
    if not patterns:
        raise ValueError("case_reference: no patterns configured")
    compiled: list[re.Pattern[str]] = []
    for source in patterns:
        try:
            pattern = re.compile(source, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"case_reference: invalid pattern {source!r}: {exc}") from exc
        missing = {"prefix", "number"} - set(pattern.groupindex)
        if missing:
            raise ValueError(
                f"case_reference: pattern {source!r} lacks named group(s) "
                + ", ".join(sorted(missing))
            )
        compiled.append(pattern)
    return CaseReferenceDetector(compiled)


DETECTOR = build()
