"""What the parse stage produces, and the limits it works within.

A `Document` is every readable thing a message carries, flattened: the
subject, the headers a rule may need, and one `Part` per body, attachment,
archive member or embedded file, each with where it was found, what it
really is, its text and its flags. Parts that could not be read are still
parts: kind `uninspectable`, with the reason, so that policy decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Flag:
    """Flags policy can act on. Plain strings, so they read the same in config and logs."""

    HIDDEN_SHEET = "hidden_sheet"
    VERY_HIDDEN_SHEET = "very_hidden_sheet"
    HIDDEN_ROWS = "hidden_rows"
    HIDDEN_COLUMNS = "hidden_columns"
    HIDDEN_TEXT = "hidden_text"  # HTML or Office text made invisible
    COMMENTS = "comments"
    TRACKED_CHANGES = "tracked_changes"
    TEXT_UNDER_REDACTION = "text_under_redaction"  # text still present under a box
    UNAPPLIED_REDACTION = "unapplied_redaction"  # redaction annotations never applied
    TYPE_MISMATCH = "type_mismatch"  # declared type or extension disagrees with the bytes
    MACROS = "macros"
    ENCRYPTED = "encrypted"
    IMAGE = "image"  # recorded, not read (no OCR yet)


@dataclass(frozen=True)
class Part:
    path: str  # "body", "attachment:report.pdf", "attachment:bundle.zip/annex.docx"
    kind: str  # what the bytes are: "text", "html", "pdf", "docx", ..., "uninspectable"
    text: str
    flags: frozenset[str] = frozenset()
    size: int = 0  # bytes of the part as carried (decoded from its transfer encoding)
    declared_type: str = ""  # the MIME type the message claimed
    reason: str = ""  # for uninspectable parts: why, in plain words


@dataclass(frozen=True)
class Document:
    subject: str
    headers: tuple[tuple[str, str], ...]
    parts: tuple[Part, ...] = field(default=())
    errors: tuple[str, ...] = field(default=())  # problems with the message itself

    @property
    def uninspectable(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.kind == "uninspectable")


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one message may cause; past any of them a part is uninspectable."""

    max_depth: int = 8  # nesting of messages, archives and embedded files
    max_archive_members: int = 1000
    max_extracted_bytes: int = 200 * 1024 * 1024  # everything unpacked from one message
    max_part_bytes: int = 64 * 1024 * 1024  # one decoded part or member
    max_ratio: float = 100.0  # uncompressed / compressed, per archive member
    max_text_chars: int = 64_000_000  # more text than this in one part: uninspectable
    part_seconds: float = 20.0
    message_seconds: float = 60.0
    # Parts of the whole message, every level together: a 42.zip-shaped archive of a
    # few KB otherwise becomes hundreds of thousands of parts (and findings).
    max_parts: int = 5000
