"""What a file really is, from its bytes: never from the name or the declared type.

A sender cannot hide a spreadsheet by calling it `notes.txt`: the kind comes
from magic numbers (and, for zip-based formats, from the members inside).
The declared type and extension only matter for the `type_mismatch` flag.
"""

from __future__ import annotations

import io
import zipfile

# Kinds the extractors read; anything else is "binary" (recorded, not read).
TEXT_KINDS = frozenset({"text", "html", "csv", "calendar", "vcard"})

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "pdf"),
    (b"{\\rtf", "rtf"),
    (b"\x78\x9f\x3e\x22", "tnef"),
    (b"\x1f\x8b", "gzip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),
    (b"\x89PNG\r\n\x1a\n", "image"),
    (b"\xff\xd8\xff", "image"),
    (b"GIF87a", "image"),
    (b"GIF89a", "image"),
    (b"II*\x00", "image"),
    (b"MM\x00*", "image"),
)
# A bitmap starts "BM", and so does a text about BMI: the rest of its header must agree.
_BMP_INFO_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

_OOXML_MAIN = (
    ("word/document.xml", "docx"),
    ("xl/workbook.xml", "xlsx"),
    ("ppt/presentation.xml", "pptx"),
)

_ODF_MIMETYPES = {
    b"application/vnd.oasis.opendocument.text": "odt",
    b"application/vnd.oasis.opendocument.spreadsheet": "ods",
    b"application/vnd.oasis.opendocument.presentation": "odp",
}

# What a declared MIME type or extension should be for each kind (for type_mismatch).
_EXPECTED_EXTENSIONS = {
    "pdf": {"pdf"},
    "docx": {"docx", "docm", "dotx", "dotm"},
    "xlsx": {"xlsx", "xlsm", "xltx", "xltm"},
    "pptx": {"pptx", "pptm", "ppsx", "potx"},
    "odt": {"odt", "ott"},
    "ods": {"ods", "ots"},
    "odp": {"odp", "otp"},
    "rtf": {"rtf", "doc"},
    "zip": {"zip"},
    "gzip": {"gz", "tgz"},
    "7z": {"7z"},
    "rar": {"rar"},
    "tnef": {"dat"},
    "ole": {"doc", "xls", "ppt", "msg", "docx", "xlsx", "pptx", "xlsm", "docm"},
    "image": {"png", "jpg", "jpeg", "gif", "tif", "tiff", "bmp", "webp"},
    "html": {"html", "htm"},
    "csv": {"csv", "tsv", "txt"},
    "calendar": {"ics", "ical", "vcs"},
    "vcard": {"vcf", "vcard"},
    "text": {"txt", "text", "log", "md", "csv", "tsv", "eml"},
    "message": {"eml", "msg"},
}


def sniff(data: bytes) -> str:
    """The kind of `data`: "pdf", "docx", "zip", "text", ..., or "binary"."""
    head = data[:16]
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(data)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image"
    if _is_bmp(data):
        return "image"
    if b"%PDF-" in data[:1024]:  # PDF readers accept junk before the header, so must we
        return "pdf"
    return _text_kind(data[:4096])


def _is_bmp(data: bytes) -> bool:
    """BITMAPFILEHEADER: "BM", size, four reserved zero bytes, offset; then a known
    BITMAPINFOHEADER size."""
    return (
        data[:2] == b"BM"
        and len(data) >= 26
        and data[6:10] == b"\x00\x00\x00\x00"
        and int.from_bytes(data[14:18], "little") in _BMP_INFO_SIZES
    )


def _zip_kind(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if "mimetype" in names:
                info = archive.getinfo("mimetype")
                if info.file_size < 200:
                    kind = _ODF_MIMETYPES.get(archive.read("mimetype").strip())
                    if kind:
                        return kind
            for member, kind in _OOXML_MAIN:
                if member in names:
                    return kind
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, NotImplementedError, EOFError):
        pass
    return "zip"


def _text_kind(head: bytes) -> str:
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "binary"
    sample = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if sample.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<div", b"<p>")):
        return "html"
    if sample.startswith(b"begin:vcalendar"):
        return "calendar"
    if sample.startswith(b"begin:vcard"):
        return "vcard"
    return "text"


def mismatch(kind: str, filename: str, declared_type: str) -> bool:
    """True when the name or declared type claims something the bytes are not."""
    extension = filename.rpartition(".")[2].lower() if "." in filename else ""
    if extension and kind in _EXPECTED_EXTENSIONS:
        allowed = _EXPECTED_EXTENSIONS[kind]
        if kind in TEXT_KINDS:
            allowed = allowed | _EXPECTED_EXTENSIONS["text"] | {"htm", "html", "xml", "json"}
        if extension not in allowed:
            return True
    declared = declared_type.lower()
    if declared in ("", "application/octet-stream"):
        return False
    if kind in TEXT_KINDS:
        return not (declared.startswith("text/") or declared.endswith(("+xml", "/xml", "/json")))
    if kind == "image":
        return not declared.startswith("image/")
    return declared.startswith(("text/", "image/"))
