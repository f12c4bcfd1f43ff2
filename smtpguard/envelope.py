"""The envelope: what the SMTP conversation said about a message.

It travels with the raw bytes through every stage, from the listener to the
upstream, and is what the store persists beside the spool file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Envelope:
    sender: str  # "" for the null sender <>
    recipients: tuple[str, ...]
    client_address: str
    client_name: str  # HELO/EHLO argument
    received_at: float
    smtputf8: bool = False
    body_8bit: bool = False
    tls: bool = False
    mail_options: tuple[str, ...] = field(default=())

    @property
    def recipient_domains(self) -> tuple[str, ...]:
        """Distinct recipient domains, lower-cased: safe to log, unlike addresses."""
        return tuple(sorted({r.rpartition("@")[2].lower() for r in self.recipients}))
