"""Extractors: the bytes of one file in, its text, flags and embedded files out.

Each format has one module with one `extract(data, limits) -> Extraction`
function. Extractors are pure and run inside worker processes (see pool.py),
so a hostile file costs a worker, never the relay. They raise
`Uninspectable` with a plain-words reason for anything they cannot read
(encrypted, corrupt, over a limit); any other exception is treated the same
way by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpguard.parse.model import Limits

__all__ = ["Embedded", "Extraction", "Limits", "Uninspectable"]


@dataclass(frozen=True)
class Embedded:
    """A file inside the file: an archive member, a TNEF attachment, an embedded object."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Extraction:
    text: str
    flags: frozenset[str] = frozenset()
    embedded: tuple[Embedded, ...] = field(default=())


class Uninspectable(Exception):
    """The file cannot be read; `reason` says why in words a reviewer understands."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
