"""Outlook's winmail.dat (TNEF): the message text and every attachment, for the caller to read.

tnefparse does the attribute and MAPI decoding. Around it we (1) check the
attribute chain and every count inside MAPI property lists first, because
tnefparse copies the rest of the stream for each attribute and trusts 32-bit
counts, so a 1 KB hostile file could keep a worker busy for hours; and
(2) decompress the RTF body ourselves (MS-OXRTFCP "LZFu"), since tnefparse
needs the separate compressed_rtf package for it, then read it with rtf.py.

Every body present (RTF, HTML, plain) is read, because Outlook shows one and
other software another; identical text is kept once.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from tnefparse import TNEF  # type: ignore[import-untyped,unused-ignore]

from smtpguard.parse.extract import Embedded, Extraction, Uninspectable
from smtpguard.parse.extract import html as html_extract
from smtpguard.parse.extract import rtf as rtf_extract
from smtpguard.parse.extract.plaintext import decode_text
from smtpguard.parse.model import Limits

# tnefparse logs every oddity of the input (and an INFO line per call); for hostile files
# that is noise in the worker's log. Our own verdict comes back as Uninspectable.
logging.getLogger("tnefparse").setLevel(logging.CRITICAL)

SIGNATURE = struct.pack("<I", 0x223E9F78)
IMESSAGE_SIGNATURE = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"

LEVEL_MESSAGE = 1
LEVEL_ATTACHMENT = 2
ATT_SUBJECT = 0x8004
ATT_FROM = 0x8000
ATT_MAPI_PROPS = 0x9003
ATT_RECIPIENTS = 0x9004
ATT_ATTACHMENT = 0x9005
MAPI_LISTS = frozenset({ATT_MAPI_PROPS, ATT_ATTACHMENT})

MAX_ATTRIBUTES = 100_000
# tnefparse copies the remainder of the stream once per attribute; bound that work.
MAX_COPY_BYTES = 4 << 30

# MAPI properties a reader sees as part of the message, in display order.
MESSAGE_PROPERTIES = (
    (0x0037, "Subject"),
    (0x0042, "From"),
    (0x0065, "From address"),
    (0x0C1A, "Sender"),
    (0x0C1F, "Sender address"),
    (0x0E04, "To"),
    (0x0E03, "Cc"),
    (0x0E02, "Bcc"),
)
MAPI_ATTACH_LONG_FILENAME = 0x3707
MAPI_ATTACH_FILENAME = 0x3704
MAPI_DISPLAY_NAME = 0x3001
MAPI_ATTACH_DATA_OBJ = 0x3701
MAX_NESTED_MESSAGES = 8

FIXED_SIZES = {0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8}
FIXED_SIZES |= {0x0007: 8, 0x0014: 8, 0x0040: 8, 0x0048: 16}
VARIABLE_TYPES = frozenset({0x0000, 0x000D, 0x001E, 0x001F, 0x0102})

# MS-OXRTFCP 2.1.3.1.1: the dictionary every compressed RTF stream starts from.
RTF_PREBUF = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss "
    b"\\fmodern \\fscript \\fdecor MS Sans SerifSymbolArialTimes New RomanCourier"
    b"{\\colortbl\\red0\\green0\\blue0\r\n\\par \\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)
LZFU = 0x75465A4C
MELA = 0x414C454D


class _Corrupt(Exception):
    """The stream contradicts itself (a count larger than the bytes that could hold it)."""


def extract(data: bytes, limits: Limits) -> Extraction:
    """Text and attachments of a TNEF stream; `Uninspectable` if it is not one or is broken."""
    if len(data) > limits.max_part_bytes:
        raise Uninspectable("winmail.dat is larger than the size limit")
    if len(data) < 6 or not data.startswith(SIGNATURE):
        raise Uninspectable("corrupt winmail.dat (not a TNEF stream)")
    try:
        _check_stream(data)
    except (_Corrupt, struct.error) as exc:
        raise Uninspectable("corrupt winmail.dat") from exc
    try:
        tnef = TNEF(data, do_checksum=False)
    except Exception as exc:  # tnefparse raises anything from ValueError to TypeError
        raise Uninspectable("corrupt winmail.dat") from exc
    return _Reader(limits).read(tnef)


# structural checks


def _check_stream(data: bytes, depth: int = 0) -> None:
    """Walk the attribute chain (and every message embedded in it) the way tnefparse will."""
    if depth > MAX_NESTED_MESSAGES:
        raise _Corrupt("messages nested too deeply")
    if depth and not data.startswith(SIGNATURE):
        raise _Corrupt("embedded message is not TNEF")
    offset = 6
    end = len(data)
    attributes = 0
    copied = 0
    while offset + 12 < end:  # tnefparse's own loop condition
        level = data[offset]
        name, _kind, length = struct.unpack_from("<HHI", data, offset + 1)
        if level not in (LEVEL_MESSAGE, LEVEL_ATTACHMENT):
            raise _Corrupt(f"attribute level {level}")
        body = offset + 9
        # An embedded message loses trailing NULs (tnefparse strips them), so its last
        # checksum may be short; a top-level stream must be whole.
        if body + length + (0 if depth else 2) > end:
            raise _Corrupt("truncated attribute")
        attributes += 1
        copied += end - offset
        if attributes > MAX_ATTRIBUTES or copied > MAX_COPY_BYTES:
            raise _Corrupt("too many attributes")
        payload = data[body : body + length]
        if name in MAPI_LISTS:
            _check_mapi(payload, 0, depth)
        elif name == ATT_RECIPIENTS and len(payload) >= 4:
            (rows,) = struct.unpack_from("<I", payload, 0)
            _plausible(rows, len(payload) - 4, 4)
            position = 4
            for _ in range(rows):
                if position + 4 > len(payload):
                    break
                position = _check_mapi(payload, position, depth)
        offset = body + length + 2
    if not depth and data[offset:].strip(b"\0"):
        raise _Corrupt("truncated attribute")  # too short for a header: the stream was cut


def _plausible(count: int, remaining: int, item_size: int) -> None:
    if count > max(remaining, 0) // item_size:
        raise _Corrupt("count larger than the data")


def _check_mapi(data: bytes, offset: int, depth: int) -> int:
    """Walk a MAPI property list as tnefparse will, rejecting impossible counts; return its end.

    Anything else odd (a short read, an unknown type) is left to tnefparse, which stops
    reading the list there, as this walk does.
    """
    try:
        return _walk_mapi(data, offset, depth)
    except struct.error:
        return len(data)


def _walk_mapi(data: bytes, offset: int, depth: int) -> int:
    end = len(data)
    if offset + 4 > end:
        return end
    (count,) = struct.unpack_from("<I", data, offset)
    offset += 4
    _plausible(count, end - offset, 4)
    for _ in range(count):
        if offset + 4 > end:
            return offset
        kind, ident = struct.unpack_from("<HH", data, offset)
        offset += 4
        if ident >= 0x8000:  # named property: GUID, then a number or a name
            offset += 16
            (name_kind,) = struct.unpack_from("<I", data, offset)
            offset += 4
            if name_kind == 0:
                offset += 4
            else:
                (size,) = struct.unpack_from("<I", data, offset)
                offset += 4 + _padded(size)
        values = None
        if kind & 0x1000:
            kind ^= 0x1000
            (values,) = struct.unpack_from("<I", data, offset)
            offset += 4
            _plausible(values, end - offset, 2)
        for _ in range(values or 1):
            if kind in FIXED_SIZES:
                offset += FIXED_SIZES[kind]
            elif kind in VARIABLE_TYPES:
                items = 1
                if values is None:
                    (items,) = struct.unpack_from("<I", data, offset)
                    offset += 4
                    _plausible(items, end - offset, 4)
                for _ in range(items):
                    (size,) = struct.unpack_from("<I", data, offset)
                    offset += 4
                    value = data[offset : offset + _padded(size)]  # as tnefparse slices it
                    if ident == MAPI_ATTACH_DATA_OBJ and value.startswith(IMESSAGE_SIGNATURE):
                        # tnefparse parses an attached message at once, with no checks of its own
                        nested = value.rstrip(b"\0")[len(IMESSAGE_SIGNATURE) :]
                        _check_stream(nested, depth + 1)
                    offset += _padded(size)
            else:
                return end  # tnefparse stops at a type it does not know; so do we
        if (values or 1) % 2 and kind in (0x0002, 0x000B):
            offset += 2
        if offset > end:
            return end
    return offset


def _padded(size: int) -> int:
    return size + (-size % 4)


# compressed RTF


def decompress_rtf(blob: bytes, max_bytes: int) -> bytes:
    """MS-OXRTFCP: "MELA" is stored as is, "LZFu" is LZ77 over a 4 KB ring buffer."""
    if len(blob) < 16:
        raise ValueError("compressed RTF header truncated")
    comp_size, raw_size, comp_type, _crc = struct.unpack_from("<IIII", blob, 0)
    if raw_size > max_bytes:
        raise ValueError("compressed RTF larger than the limit")
    if comp_type == MELA:
        return blob[16 : 16 + raw_size]
    if comp_type != LZFU:
        raise ValueError(f"unknown compressed RTF type {comp_type:#x}")
    src = blob[16 : 4 + comp_size] if comp_size >= 12 else blob[16:]
    ring = bytearray(4096)
    ring[: len(RTF_PREBUF)] = RTF_PREBUF
    write = len(RTF_PREBUF)
    out = bytearray()
    pos = 0
    end = len(src)
    while pos < end and len(out) < raw_size:
        control = src[pos]
        pos += 1
        for bit in range(8):
            if pos >= end:
                break
            if not control & (1 << bit):  # a literal byte
                byte = src[pos]
                pos += 1
                out.append(byte)
                ring[write] = byte
                write = (write + 1) & 0xFFF
                continue
            if pos + 1 >= end:
                pos = end
                break
            token = (src[pos] << 8) | src[pos + 1]
            pos += 2
            offset = token >> 4
            if offset == write:  # a reference to the write position marks the end
                return bytes(out[:raw_size])
            for _ in range((token & 0xF) + 2):
                byte = ring[offset]
                out.append(byte)
                ring[write] = byte
                write = (write + 1) & 0xFFF
                offset = (offset + 1) & 0xFFF
    return bytes(out[:raw_size])


# reading


class _Reader:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.flags: set[str] = set()
        self.embedded: list[Embedded] = []

    def read(self, tnef: Any) -> Extraction:
        codepage = str(getattr(tnef, "codepage", None) or "cp1252")
        lines = self._properties(tnef, codepage)
        bodies = self._bodies(tnef)
        names = self._attachments(tnef, codepage)
        parts = ["\n".join(lines), *bodies]
        if names:
            parts.append("\n".join(f"Attachment: {name}" for name in names))
        text = "\n\n".join(part for part in parts if part.strip())
        return Extraction(
            text=text[: self.limits.max_text_chars],
            flags=frozenset(self.flags),
            embedded=tuple(self.embedded),
        )

    def _properties(self, tnef: Any, codepage: str) -> list[str]:
        values: dict[str, str] = {}
        for obj in getattr(tnef, "msgprops", []):
            if obj.name == ATT_SUBJECT and isinstance(obj.data, str):
                values["Subject"] = obj.data
            elif obj.name == ATT_FROM and isinstance(obj.data, tuple) and len(obj.data) == 3:
                sender, _kind, address = obj.data
                values["From"] = _text(sender, codepage)
                values["From address"] = _text(address, codepage)
        by_id = {prop.name: prop for prop in getattr(tnef, "mapiprops", [])}
        for ident, label in MESSAGE_PROPERTIES:
            prop = by_id.get(ident)
            if prop is None or label in values:
                continue
            value = _property_text(prop, codepage)
            if value:
                values[label] = value
        return [f"{label}: {value.strip()}" for label, value in values.items() if value.strip()]

    def _bodies(self, tnef: Any) -> list[str]:
        found: list[str] = []
        rtf_blob = getattr(tnef, "_rtfbody", None)
        if isinstance(rtf_blob, bytes) and rtf_blob:
            try:
                raw = decompress_rtf(rtf_blob, self.limits.max_part_bytes)
            except ValueError as exc:
                if not (tnef.body or tnef.htmlbody):
                    raise Uninspectable("corrupt winmail.dat (message body)") from exc
            else:
                self._add_body(found, rtf_extract.extract(raw, self.limits))
        html = getattr(tnef, "htmlbody", None)
        if isinstance(html, bytes) and html:
            self._add_body(found, html_extract.extract(html, self.limits))
        elif isinstance(html, str) and html:
            self._add_body(found, html_extract.extract_text(html, self.limits))
        body = getattr(tnef, "body", None)
        if isinstance(body, bytes) and body:
            self._add_body(found, Extraction(text=decode_text(body.rstrip(b"\x00"))))
        elif isinstance(body, str) and body:
            self._add_body(found, Extraction(text=body.rstrip("\x00")))
        return found

    def _add_body(self, found: list[str], extraction: Extraction) -> None:
        self.flags |= extraction.flags
        self.embedded.extend(extraction.embedded)
        text = extraction.text.replace("\r\n", "\n").strip()
        if text and _squash(text) not in {_squash(other) for other in found}:
            found.append(text)

    def _attachments(self, tnef: Any, codepage: str) -> list[str]:
        names: list[str] = []
        attachments = list(getattr(tnef, "attachments", []))
        if len(attachments) > self.limits.max_archive_members:
            raise Uninspectable("winmail.dat has more attachments than the limit")
        total = 0
        for index, attachment in enumerate(attachments, start=1):
            name = _attachment_name(attachment, codepage) or f"attachment-{index}"
            data = attachment.data if isinstance(attachment.data, bytes) else b""
            if data.startswith(SIGNATURE) and hasattr(attachment, "embed"):
                name = name if name.lower().endswith(".tnef") else f"{name}.tnef"
            names.append(name)
            if not data:
                continue  # attached by reference, or an OLE object with no data
            total += len(data)
            if total > self.limits.max_extracted_bytes:
                raise Uninspectable("winmail.dat attachments are larger than the size limit")
            self.embedded.append(Embedded(name=name, data=data))
        return names


def _attachment_name(attachment: Any, codepage: str) -> str:
    """Long filename, then the short one, then the display name (tnefparse's `name` may raise)."""
    by_id = {prop.name: prop for prop in getattr(attachment, "mapi_attrs", [])}
    for ident in (MAPI_ATTACH_LONG_FILENAME, MAPI_ATTACH_FILENAME, MAPI_DISPLAY_NAME):
        prop = by_id.get(ident)
        if prop is not None:
            value = _property_text(prop, codepage)
            if value:
                return value
    return _text(getattr(attachment, "_name", b""), codepage)


def _property_text(prop: Any, codepage: str) -> str:
    try:
        value = prop.data
    except Exception:  # tnefparse decodes lazily and trusts the bytes
        return ""
    if isinstance(value, list):
        value = value[0] if value else ""
    return _text(value, codepage)


def _text(value: Any, codepage: str) -> str:
    if isinstance(value, bytes):
        return decode_text(value.rstrip(b"\x00"), codepage).strip()
    if isinstance(value, str):
        return value.rstrip("\x00").strip()
    return ""


def _squash(text: str) -> str:
    return " ".join(text.split())
