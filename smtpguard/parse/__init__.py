"""Parse: raw message bytes in, a `Document` out.

For now the stage reads the header block only (subject and the addressing
headers); reading every MIME part and attachment comes with the parse work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32


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


# compat32 keeps headers as the raw strings they are; the modern policy's
# header registry costs milliseconds per message and is only needed for the
# few headers we decode.
_HEADER_PARSER = BytesHeaderParser(policy=compat32)


def _unfold(value: str) -> str:
    return " ".join(value.split())


def _decoded(value: str) -> str:
    """RFC 2047 encoded-words decoded; undecodable input kept as it is."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def parse_message(raw: bytes) -> Document:
    """Never raises: a header block that cannot be read is recorded as an error."""
    end = raw.find(b"\r\n\r\n")
    header_block = raw if end == -1 else raw[: end + 2]
    try:
        message = _HEADER_PARSER.parsebytes(header_block)
        headers = tuple((name, _unfold(str(value))) for name, value in message.items())
        subject = _decoded(_unfold(str(message.get("Subject", ""))))
        errors = tuple(type(defect).__name__ for defect in message.defects)
    except Exception as exc:  # a parser fault must not stop the message being scanned
        return Document(
            subject="", headers=(), errors=(f"header parse failed: {type(exc).__name__}",)
        )
    return Document(subject=subject, headers=headers, errors=errors)
