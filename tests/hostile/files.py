"""Hostile files, generated (nothing binary is checked in): bombs, entity expansion,
broken PDFs, absurd MIME. Each builder is cached: several tests send the same file.

Every file carries, where it could be read at all, an NHS number from the test range:
whatever the parser makes of it, the message cannot pass as harmless.
"""

from __future__ import annotations

import base64
import functools
import io
import random
import struct
import zipfile
import zlib
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

from tests.scenarios import builders

NHS = builders.nhs_numbers(1)[0]
SENDER = "m.patel@northshire.gov.uk"
OUTSIDE = "s.mills@millsandco-solicitors.co.uk"
GIB = 1024**3


def message(
    attachments: list[tuple[str, str, bytes]], subject: str = "Papers", to: str = OUTSIDE
) -> bytes:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = to
    mail["Subject"] = subject
    mail.set_content("Papers attached.")
    for filename, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return mail.as_bytes(policy=SMTP_POLICY)


# -- archives -------------------------------------------------------------------------------


def _zeros_deflated(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of `size` zero bytes, and its CRC-32, without compressing `size`
    bytes: one megabyte is compressed after a full flush (which resets the compressor), so
    its output can be repeated."""
    mib = bytes(1024 * 1024)
    assert size % len(mib) == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // len(mib)):
        crc = zlib.crc32(mib, crc)
    return block * (size // len(mib)) + compressor.flush(zlib.Z_FINISH), crc


def _zip_one(name: str, deflated: bytes, crc: int, size: int) -> bytes:
    """A zip with one deflated member, written by hand (zipfile would deflate it itself)."""
    encoded = name.encode()
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(deflated), size, len(encoded), 0
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        20,
        20,
        0,
        8,
        0,
        0x21,
        crc,
        len(deflated),
        size,
        len(encoded),
        0,
        0,
        0,
        0,
        0,
        0,
    )
    body = local + encoded + deflated
    directory = central + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(directory), len(body), 0)
    return body + directory + end


@functools.cache
def gigabyte_zip() -> bytes:
    """One member that inflates to 1 GiB of zeros (about 1 MB compressed)."""
    deflated, crc = _zeros_deflated(GIB)
    return _zip_one("zeros.bin", deflated, crc, GIB)


@functools.cache
def gigabyte_zip_in_a_zip() -> bytes:
    """The 1 GiB member, zipped once more: a few KB on the wire."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("inner.zip", gigabyte_zip())
    return buffer.getvalue()


@functools.cache
def nested_zips(levels: int = 10, fan_out: int = 10) -> bytes:
    """42.zip's shape: every level holds `fan_out` copies of the level below."""
    level = builders.zip_bytes({"notes.txt": f"NHS number {NHS}".encode() * 1000})
    for depth in range(levels):
        level = builders.zip_bytes({f"level{depth}-{i}.zip": level for i in range(fan_out)})
    return level


# -- XML entity expansion -----------------------------------------------------------------------


def _laughs(root: str, namespace: str) -> bytes:
    entities = "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
        for i in range(1, 10)
    )
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE {root} [\n<!ENTITY lol "lol">\n{entities}]>\n'
        f'<{root} xmlns="{namespace}">&lol9;</{root}>'
    ).encode()


def _replace_member(document: bytes, member: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(document)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            target.writestr(info, data if info.filename == member else source.read(info))
    return out.getvalue()


@functools.cache
def laughing_docx() -> bytes:
    document = builders.docx_bytes([f"NHS number {NHS}"])
    main = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    return _replace_member(document, "word/document.xml", _laughs("document", main))


@functools.cache
def laughing_xlsx() -> bytes:
    book = builders.caseload_xlsx(3)
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    return _replace_member(book, "xl/worksheets/sheet1.xml", _laughs("worksheet", main))


# -- PDF ----------------------------------------------------------------------------------------


def _pdf(objects: list[bytes], trailer: bytes, xref: bytes | None = None) -> bytes:
    """Objects numbered from 1; `xref=None` writes a correct table, else that text."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    start = len(out)
    if xref is None:
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
        out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    else:
        out += xref
    out += b"trailer\n" + trailer + b"\nstartxref\n%d\n%%%%EOF\n" % start
    return bytes(out)


def _page_objects(text: str) -> list[bytes]:
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    return [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]


@functools.cache
def cyclic_pdf() -> bytes:
    """The page tree is its own kid and the xref stream chain points back at itself."""
    objects = _page_objects(f"NHS number {NHS}")
    objects[1] = b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>"
    objects[2] = objects[2].replace(b"/Parent 2 0 R", b"/Parent 3 0 R")
    pdf = _pdf(objects, b"<< /Size 6 /Root 1 0 R /Prev 9 >>")
    # A second section whose /Prev is itself: a reader that follows /Prev loops forever.
    start = len(pdf)
    return (
        pdf
        + b"xref\n0 1\n0000000000 65535 f \ntrailer\n<< /Size 6 /Root 1 0 R /Prev %d >>" % (start)
        + b"\nstartxref\n%d\n%%%%EOF\n" % start
    )


def _zlib_stream(unit: bytes, count: int, tail: bytes) -> bytes:
    """A zlib stream of `unit` * `count` + `tail`, compressing `unit` only once."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(unit) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = block * count + compressor.compress(tail) + compressor.flush(zlib.Z_FINISH)
    adler = 1
    for _ in range(count):
        adler = zlib.adler32(unit, adler)
    return b"\x78\xda" + body + struct.pack(">I", zlib.adler32(tail, adler))


@functools.cache
def huge_stream_pdf() -> bytes:
    """The page's content stream inflates to 256 MiB (of blanks) before its one line of text,
    and an object stream claims ten million objects in 256 MiB of zeros."""
    text = f"BT /F1 12 Tf 72 720 Td (NHS number {NHS}) Tj ET".encode()
    mib = 1024 * 1024
    content = _zlib_stream(b" " * mib, 256, text)
    objects = _page_objects("")
    objects[3] = (
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream"
    )
    zeros = _zlib_stream(bytes(mib), 256, b"")
    objects.append(
        b"<< /Type /ObjStm /N 10000000 /First 20 /Filter /FlateDecode /Length %d >>\nstream\n"
        % len(zeros)
        + zeros
        + b"\nendstream"
    )
    return _pdf(objects, b"<< /Size 7 /Root 1 0 R >>")


@functools.cache
def broken_trailer_pdf() -> bytes:
    """No usable xref or trailer: offsets are garbage and the trailer has no /Root."""
    objects = _page_objects(f"NHS number {NHS}")
    return _pdf(objects, b"<< /Size 999999999 /Root 77 0 R /Info (", xref=b"xref\n0 9999\nzzzz\n")


# -- MIME -----------------------------------------------------------------------------------------


@functools.cache
def mime_nested(levels: int = 200) -> bytes:
    """A multipart 200 levels deep, a text part with an NHS number at the bottom."""
    head = f"From: {SENDER}\r\nTo: {OUTSIDE}\r\nSubject: Nested\r\nMIME-Version: 1.0\r\n"
    lines = []
    for level in range(levels):
        lines.append(f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n')
    inner = f"Content-Type: text/plain\r\n\r\nNHS number {NHS}\r\n"
    tail = "".join(f"\r\n--b{level}--\r\n" for level in reversed(range(levels)))
    return (head + "".join(lines) + inner + tail).encode()


def declared_10gb() -> bytes:
    """A part that declares a 10 GB Content-Length (a header the MIME parser does not trust)."""
    return (
        f"From: {SENDER}\r\nTo: {OUTSIDE}\r\nSubject: Big\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        f"Content-Type: text/plain\r\nContent-Length: {10 * 1000**3}\r\n\r\n"
        f"NHS number {NHS}\r\n"
        "--b\r\nContent-Type: application/pdf; name=big.pdf\r\n"
        f"Content-Length: {10 * 1000**3}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{base64.encodebytes(b'%PDF-1.7 truncated').decode()}\r\n--b--\r\n"
    ).encode()


def base64_garbage() -> bytes:
    """A "PDF" whose base64 is broken: characters outside the alphabet, lines cut short,
    no padding, and random bytes underneath."""
    noise = base64.b64encode(random.Random(5).randbytes(15_000)).decode().rstrip("=")
    cut = "\r\n".join(noise[i : i + 61] + "!*~" for i in range(0, len(noise), 61))
    return (
        f"From: {SENDER}\r\nTo: {OUTSIDE}\r\nSubject: Scan\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: text/plain\r\n\r\nThe scan is attached.\r\n"
        "--b\r\nContent-Type: application/pdf; name=scan.pdf\r\n"
        'Content-Disposition: attachment; filename="scan.pdf"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{cut[:-7]}\r\n--b--\r\n"
    ).encode()


# -- found while writing these tests: text the sniffer took for something else ---------------


def bmi_text() -> bytes:
    """A text file that starts "BM" (a bitmap's magic): it was taken for an image, never read."""
    return f"BMI readings for the clinic\nAmelia Hart, NHS number {NHS}, BMI 17\n".encode()


@functools.cache
def pdf_after_junk() -> bytes:
    """Junk before "%PDF-" (readers accept up to 1024 bytes of it) and no NUL in the first
    4 KB: it was read as plain text, its compressed page never inflated."""
    text = f"BT /F1 12 Tf 72 720 Td (NHS number {NHS}) Tj ET".encode()
    content = _zlib_stream(b" ", 1, text)
    objects = _page_objects("")
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R /Pad (" + b"padding " * 800 + b") >>"
    objects[3] = (
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream"
    )
    pdf = _pdf(objects, b"<< /Size 6 /Root 1 0 R >>").replace(b"%\xe2\xe3\xcf\xd3\n", b"")
    return b"Scanned by the office copier\n" + pdf
