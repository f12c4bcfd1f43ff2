"""Parse: raw message bytes in, a `Document` out.

For now the stage reads the header block only (subject and the addressing
headers); reading every MIME part and attachment comes with the parse work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8


@dataclass(frozen=True)
class Part:
    path: str  # "body", "attachment:report.pdf", "attachment:bundle.zip/annex.docx"
    kind: str  # the real type, sniffed from the bytes
    text: str
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Document:
    subject: str
    headers: tuple[tuple[str, str], ...]
    parts: tuple[Part, ...] = field(default=())
    errors: tuple[str, ...] = field(default=())


_HEADER_PARSER = BytesHeaderParser(policy=SMTPUTF8)


def parse_message(raw: bytes) -> Document:
    """Never raises: a header block that cannot be read is recorded as an error."""
    try:
        message = _HEADER_PARSER.parsebytes(raw)
        headers = tuple((name, str(value)) for name, value in message.items())
        subject = str(message.get("Subject", ""))
        errors = tuple(type(defect).__name__ for defect in message.defects)
    except Exception as exc:  # a parser fault must not stop the message being scanned
        return Document(
            subject="", headers=(), errors=(f"header parse failed: {type(exc).__name__}",)
        )
    return Document(subject=subject, headers=headers, errors=errors)
