"""Encryption requests in the subject: "[secure]", "[encrypt]", "encrypt: ...".

Staff are trained to tag a subject to ask for the secure route; the relay
must honour the request, so a tag is HIGH. Only tags count, never the word in
a sentence ("keep this secure"), and this detector is meant for the subject:
the caller decides where to run it.
"""

from __future__ import annotations

import re

from smtpguard.detect.base import Confidence, Hit

_WORD = r"(?P<word>secure|encrypt(?:ed)?)"
# A bracketed tag anywhere in the subject, or "secure:"/"encrypt:" at the start
# (after any "RE:"/"FW:" prefixes a reply adds).
_REPLY = r"(?:[ \t]*(?:re|fw|fwd|aw|sv)[ \t]*:)*"
_TAG = re.compile(
    rf"\[[ \t]*{_WORD}[ \t]*\]"
    rf"|\([ \t]*{_WORD.replace('word', 'word2')}[ \t]*\)"
    rf"|^{_REPLY}[ \t]*(?P<lead>{_WORD.replace('word', 'word3')}[ \t]*:)",
    re.IGNORECASE,
)


class EncryptionRequestDetector:
    """Finds subject tags asking for the message to go by the secure route."""

    name = "encryption_request"

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for match in _TAG.finditer(text):
            word = match.group("word") or match.group("word2") or match.group("word3")
            value = "secure" if word.lower() == "secure" else "encrypt"
            start, end = match.span("lead") if match.group("lead") else match.span()
            hits.append(Hit(value, start, end, Confidence.HIGH))
        return hits

    def redact(self, value: str) -> str:
        """A request is not content."""
        return f"[{value}]"


DETECTOR = EncryptionRequestDetector()
