"""The contract every detector keeps.

A detector reads one text and returns `Hit`s: where a value is, the value
normalised (so three mentions of one NHS number count once), and how sure it
is. It also knows how to redact a value for an excerpt. Values live only in
memory, inside the scan: a `Finding` carries the count and a redacted
excerpt, never the value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Confidence(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Hit:
    value: str  # normalised, e.g. "9434765919"; never logged, never in a finding
    start: int
    end: int
    confidence: Confidence


class Detector(Protocol):
    name: str  # "nhs_number": the same in config, logs, explanations and scan --json

    def scan(self, text: str) -> list[Hit]: ...

    def redact(self, value: str) -> str:
        """An excerpt a reviewer can recognise that does not disclose: "NHS number *** *** 5919"."""
        ...


def keep_last(value: str, visible: int = 4, mask: str = "*") -> str:
    """Mask all but the last `visible` characters, keeping spaces where they were."""
    shown = 0
    out = []
    for char in reversed(value):
        if char.isalnum() and shown >= visible:
            out.append(mask)
        else:
            out.append(char)
            if char.isalnum():
                shown += 1
    return "".join(reversed(out))
