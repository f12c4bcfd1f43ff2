"""Raw message bytes in, a `Document` out: the whole MIME tree and every file in it.

The walk is depth-first in message order. Bodies are decoded with their
declared charset and sensible fallbacks; every attachment, forwarded message,
archive member and embedded file is sniffed for what it really is and handed
to the extractor for that kind. Anything that cannot be read becomes an
`uninspectable` part with the reason; nothing raises out of `parse_message`.

This runs in a worker process (see pool.py). A per-part alarm bounds time
spent in Python code; the pool's per-message timeout, which kills the
worker, is the backstop for native code that does not return.
"""

from __future__ import annotations

import binascii
import contextlib
import importlib
import quopri
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from smtpguard.parse.extract import Embedded, Extraction, Uninspectable
from smtpguard.parse.extract.archive import extract_gzip, extract_zip
from smtpguard.parse.model import Document, Flag, Limits, Part
from smtpguard.parse.sniff import mismatch, sniff

Extractor = Callable[[bytes, Limits], Extraction]

# Kind -> module with `extract(data, limits)`; imported on first use so a worker
# pays only for the formats it meets.
_EXTRACTOR_MODULES = {
    "pdf": "smtpguard.parse.extract.pdf",
    "docx": "smtpguard.parse.extract.docx",
    "xlsx": "smtpguard.parse.extract.xlsx",
    "pptx": "smtpguard.parse.extract.pptx",
    "odt": "smtpguard.parse.extract.odf",
    "ods": "smtpguard.parse.extract.odf",
    "odp": "smtpguard.parse.extract.odf",
    "rtf": "smtpguard.parse.extract.rtf",
    "tnef": "smtpguard.parse.extract.tnef",
    "html": "smtpguard.parse.extract.html",
    "csv": "smtpguard.parse.extract.plaintext",
    "calendar": "smtpguard.parse.extract.plaintext",
    "vcard": "smtpguard.parse.extract.plaintext",
}

_CHARSET_FALLBACKS = ("utf-8", "cp1252", "latin-1")
_IDENTIFYING = ("from", "to", "cc", "subject", "date", "message-id")


class _PartTimeout(BaseException):
    """A BaseException, so that a reader's own catch-all cannot swallow the alarm."""


@dataclass
class _Walk:
    """State of one message's walk: its limits, what it has spent, what it found."""

    limits: Limits
    deadline: float
    extracted: int = 0
    parts: list[Part] = field(default_factory=list)
    full: bool = False  # max_parts reached: one uninspectable part said so, no more added

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def no_room(self, location: str, data: bytes, declared_type: str) -> bool:
        """True once the message has `max_parts` parts; the first part refused says why."""
        if len(self.parts) < self.limits.max_parts:
            return False
        if not self.full:
            self.full = True
            self.parts.append(
                _uninspectable(location, data, declared_type, "message has too many parts")
            )
        return True


def parse_message(raw: bytes, limits: Limits | None = None) -> Document:
    """Never raises: a message that cannot be read at all is one uninspectable part."""
    limits = limits or Limits()
    walk = _Walk(limits, time.monotonic() + limits.message_seconds)
    try:
        message = BytesParser(policy=compat32).parsebytes(raw)
    except Exception as exc:  # the stdlib parser is lenient; this is a last resort
        return Document(
            subject="",
            headers=(),
            parts=(
                _uninspectable(
                    "message", raw, "", f"message cannot be parsed ({type(exc).__name__})"
                ),
            ),
        )
    headers = tuple((name, _decoded(str(value))) for name, value in message.items())
    subject = _decoded(str(message.get("Subject", "")))
    errors = tuple(sorted({type(defect).__name__ for defect in message.defects}))
    try:
        _visit(message, walk, prefix="", depth=0)
    except RecursionError:
        walk.parts.append(_uninspectable("message", b"", "", "MIME structure nested too deeply"))
    return Document(subject=subject, headers=headers, parts=tuple(walk.parts), errors=errors)


# -- the MIME tree ---------------------------------------------------------------


def _visit(entity: Message, walk: _Walk, prefix: str, depth: int) -> None:
    if walk.no_room(prefix or "message", b"", ""):
        return
    if depth > walk.limits.max_depth:
        walk.parts.append(_uninspectable(prefix or "message", b"", "", "nested too deeply"))
        return
    content_type = entity.get_content_type()
    filename = _filename(entity)
    # Before the multipart test: compat32 counts an attached message as multipart.
    if content_type == "message/rfc822" or (
        content_type == "application/octet-stream" and filename.lower().endswith(".eml")
    ):
        _visit_forwarded(entity, walk, prefix, depth, filename or "forwarded.eml")
        return
    if entity.is_multipart():
        payload = entity.get_payload()
        for child in payload if isinstance(payload, list) else []:
            if isinstance(child, Message):
                _visit(child, walk, prefix, depth + 1)
        return
    data = _payload(entity)
    disposition = (entity.get_content_disposition() or "").lower()
    is_body = (
        not filename
        and disposition != "attachment"
        and content_type in ("text/plain", "text/html", "text/enriched", "")
    )
    if is_body:
        location = f"attachment:{prefix}body" if prefix else "body"
        if content_type == "text/html":
            location += ":html"
        _read_body(entity, data, location, walk)
        return
    name = filename or _default_name(content_type, len(walk.parts))
    _read_file(data, name, content_type, f"attachment:{prefix}{name}", walk, depth)


def _visit_forwarded(entity: Message, walk: _Walk, prefix: str, depth: int, name: str) -> None:
    payload = entity.get_payload()
    encoding = str(entity.get("Content-Transfer-Encoding", "")).strip().lower()
    inner: Message | None = None
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
        if encoding in ("base64", "quoted-printable"):
            # Not allowed by RFC 2046, sent anyway: the parser read the encoded text
            # as a headerless message. Decode it and parse the real one.
            encoded = inner.get_payload()
            inner = None
            payload = encoded if isinstance(encoded, str) else ""
    if inner is None:
        raw = _transfer_decode(
            _as_bytes(payload) if isinstance(payload, str) else _payload(entity),
            encoding,
        )
        try:
            inner = BytesParser(policy=compat32).parsebytes(raw)
        except Exception:
            walk.parts.append(
                _uninspectable(
                    f"attachment:{prefix}{name}",
                    raw,
                    "message/rfc822",
                    "forwarded message cannot be parsed",
                )
            )
            return
    location = f"attachment:{prefix}{name}"
    summary = "\n".join(
        f"{key}: {_decoded(str(value))}"
        for key, value in inner.items()
        if key.lower() in _IDENTIFYING
    )
    walk.parts.append(
        Part(path=location, kind="message", text=summary, declared_type="message/rfc822")
    )
    _visit(inner, walk, prefix=f"{prefix}{name}/", depth=depth + 1)


def _payload(entity: Message) -> bytes:
    """The part's bytes, transfer-decoded leniently: damaged base64 still yields text."""
    encoding = str(entity.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        encoded = entity.get_payload()
        return _transfer_decode(_as_bytes(encoded), encoding) if isinstance(encoded, str) else b""
    try:
        data = entity.get_payload(decode=True)  # the bytes as received, for 7bit/8bit/qp
    except Exception:
        data = None
    return data if isinstance(data, bytes) else b""


def _as_bytes(text: str) -> bytes:
    """Back to the bytes the parser read (it keeps undecodable bytes as surrogates)."""
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def _transfer_decode(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        if len(cleaned) % 4 == 1:
            cleaned = cleaned[:-1]  # a lone sextet cannot make a byte
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error:
            return data
    if encoding == "quoted-printable":
        return quopri.decodestring(data)
    return data


def _filename(entity: Message) -> str:
    try:
        name = entity.get_filename() or entity.get_param("name") or ""
    except Exception:
        return ""
    if isinstance(name, tuple):  # an undecoded RFC 2231 triple
        name = str(name[2])
    return _decoded(str(name)).replace("/", "_").strip()


def _default_name(content_type: str, index: int) -> str:
    subtype = content_type.partition("/")[2] or "bin"
    return f"part{index + 1}.{subtype[:10]}"


def _decoded(value: str) -> str:
    """RFC 2047 encoded-words decoded; undecodable input kept as it is."""
    value = " ".join(value.split())
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, TypeError):
        return value


def _decode_text(data: bytes, charset: str | None) -> str:
    """The declared charset if it works, else UTF-8, else cp1252: never an exception."""
    for candidate in (charset, *_CHARSET_FALLBACKS):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, ValueError):  # ValueError: a NUL in the charset's name
            continue
    return data.decode("latin-1")


def _read_body(entity: Message, data: bytes, location: str, walk: _Walk) -> None:
    content_type = entity.get_content_type()
    text = _decode_text(data, entity.get_content_charset())
    if content_type != "text/html":
        walk.parts.append(_text_part(location, text, set(), data, content_type, walk.limits))
        return
    # Re-encoded with a BOM: the MIME charset is authoritative, whatever an HTML
    # meta tag inside says, and readers honour a BOM first.
    part, _ = _extracted_part(
        b"\xef\xbb\xbf" + text.encode("utf-8"), "html", location, content_type, walk, size=len(data)
    )
    walk.parts.append(part)


# -- files ------------------------------------------------------------------------


def _read_file(
    data: bytes, name: str, declared_type: str, location: str, walk: _Walk, depth: int
) -> None:
    limits = walk.limits
    if walk.no_room(location, data, declared_type):
        return
    if len(data) > limits.max_part_bytes:
        walk.parts.append(
            _uninspectable(location, data, declared_type, "over the size limit for one file")
        )
        return
    walk.extracted += len(data)
    if walk.extracted > limits.max_extracted_bytes:
        walk.parts.append(
            _uninspectable(
                location, data, declared_type, "message unpacks to more than the size limit"
            )
        )
        return
    if walk.expired():
        walk.parts.append(
            _uninspectable(location, data, declared_type, "message took too long to read")
        )
        return
    kind = sniff(data)
    flags = {Flag.TYPE_MISMATCH} if mismatch(kind, name, declared_type) else set()
    if kind == "image":
        walk.parts.append(
            Part(location, "image", "", frozenset(flags | {Flag.IMAGE}), len(data), declared_type)
        )
        return
    if kind == "text":
        walk.parts.append(
            _text_part(location, _decode_text(data, None), flags, data, declared_type, limits)
        )
        return
    if kind in ("zip", "gzip") or kind in _EXTRACTOR_MODULES:
        part, embedded = _extracted_part(
            data, kind, location, declared_type, walk, size=len(data), flags=flags, name=name
        )
        walk.parts.append(part)
        for member in embedded:
            if walk.no_room(f"{location}/{member.name}", member.data, ""):
                break
            if depth + 1 > limits.max_depth:
                walk.parts.append(
                    _uninspectable(
                        f"{location}/{member.name}", member.data, "", "nested too deeply"
                    )
                )
                continue
            _read_file(member.data, member.name, "", f"{location}/{member.name}", walk, depth + 1)
        return
    walk.parts.append(
        _uninspectable(location, data, declared_type, _unreadable_reason(kind, data), flags)
    )


def _unreadable_reason(kind: str, data: bytes) -> str:
    if kind == "ole":
        if "EncryptedPackage".encode("utf-16-le") in data:
            return "password-protected Office document"
        return "legacy binary Office or Outlook file (.doc, .xls, .msg) cannot be read"
    if kind in ("7z", "rar"):
        return f"{kind.upper()} archives cannot be inspected"
    return "unrecognised binary file"


def _extractor(kind: str) -> Extractor:
    if kind == "zip":
        return extract_zip
    if kind == "gzip":
        return extract_gzip
    module = importlib.import_module(_EXTRACTOR_MODULES[kind])
    extract: Extractor = module.extract
    return extract


def _extracted_part(
    data: bytes,
    kind: str,
    location: str,
    declared_type: str,
    walk: _Walk,
    *,
    size: int,
    flags: set[str] | None = None,
    name: str = "",
) -> tuple[Part, tuple[Embedded, ...]]:
    """The part as read, and the files found inside it (for the caller to read in turn)."""
    flags = set(flags or ())
    remaining = max(walk.deadline - time.monotonic(), 0.001)
    try:
        with _alarm(min(walk.limits.part_seconds, remaining)):
            if kind == "gzip":
                extraction = extract_gzip(data, walk.limits, name)
            else:
                extraction = _extractor(kind)(data, walk.limits)
    except Uninspectable as exc:
        reason = exc.reason
    except _PartTimeout:
        reason = "took too long to read"
    except MemoryError:
        reason = "needs too much memory to read"
    except Exception as exc:  # a reader's bug must not stop the message being scanned
        reason = f"could not be read ({type(exc).__name__})"
    else:
        text = extraction.text[: walk.limits.max_text_chars]
        flags |= extraction.flags
        return Part(
            location, kind, text, frozenset(flags), size, declared_type
        ), extraction.embedded
    return _uninspectable(location, data, declared_type, reason, flags), ()


_TOO_MUCH_TEXT = "more text than the limit for one part"


def _text_part(
    location: str, text: str, flags: set[str], data: bytes, declared_type: str, limits: Limits
) -> Part:
    """Text read whole, or not at all: a part is never scanned only in part."""
    if len(text) > limits.max_text_chars:
        return _uninspectable(location, data, declared_type, _TOO_MUCH_TEXT, flags)
    return Part(location, "text", text, frozenset(flags), len(data), declared_type)


def _uninspectable(
    location: str,
    data: bytes,
    declared_type: str,
    reason: str,
    flags: set[str] | None = None,
) -> Part:
    flags = set(flags or ())
    if "password" in reason or "encrypted" in reason:
        flags.add(Flag.ENCRYPTED)
    return Part(location, "uninspectable", "", frozenset(flags), len(data), declared_type, reason)


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt Python code that runs too long (main thread only; else no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: object) -> None:
        raise _PartTimeout

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
