"""The MIME walk, type sniffing, archives and limits: raw bytes in, a Document out."""

from __future__ import annotations

import base64
import gzip
import io
import time
import zipfile
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.parse import Document, Flag, Limits, Part, parse_message
from smtpguard.parse.sniff import sniff


def _message(*attachments: tuple[str, bytes, str], body: str = "Hello.", html: str = "") -> bytes:
    message = EmailMessage()
    message["From"] = "j.okafor@northshire.gov.uk"
    message["To"] = "s.mills@millsandco-solicitors.co.uk"
    message["Subject"] = "Case notes"
    message.set_content(body)
    if html:
        message.add_alternative(html, subtype="html")
    for filename, data, content_type in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes(policy=SMTP)


def _zip(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _part(document: Document, path: str) -> Part:
    matches = [p for p in document.parts if p.path == path]
    assert matches, f"no part {path!r} in {[p.path for p in document.parts]}"
    return matches[0]


def test_when_plain_message_then_subject_headers_and_body() -> None:
    document = parse_message(_message(body="Meeting at 10."))
    assert document.subject == "Case notes"
    assert ("To", "s.mills@millsandco-solicitors.co.uk") in document.headers
    body = _part(document, "body")
    assert body.kind == "text"
    assert body.text.strip() == "Meeting at 10."


def test_when_alternative_then_both_halves_are_read() -> None:
    document = parse_message(_message(body="plain half", html="<p>html <b>half</b></p>"))
    assert "plain half" in _part(document, "body").text
    assert _part(document, "body:html").kind in ("html", "uninspectable")


def test_when_forwarded_message_with_attachment_then_nested_paths() -> None:
    inner = _message(("inner.txt", b"the inner attachment", "text/plain"), body="inner body")
    outer = EmailMessage()
    outer["Subject"] = "Fwd: case notes"
    outer.set_content("see below")
    outer.add_attachment(inner, maintype="message", subtype="rfc822", filename="fwd.eml")
    document = parse_message(outer.as_bytes(policy=SMTP))
    paths = [p.path for p in document.parts]
    assert "attachment:fwd.eml" in paths
    assert "Subject: Case notes" in _part(document, "attachment:fwd.eml").text
    assert "inner body" in _part(document, "attachment:fwd.eml/body").text
    assert _part(document, "attachment:fwd.eml/inner.txt").text == "the inner attachment"


@pytest.mark.parametrize(
    "header, expected",
    [
        ('attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.txt?="', "résumé.txt"),
        ("attachment; filename*=utf-8''r%C3%A9sum%C3%A9.txt", "résumé.txt"),
        ('attachment; filename="../../etc/passwd"', ".._.._etc_passwd"),
    ],
    ids=["rfc2047", "rfc2231", "path-separators"],
)
def test_when_encoded_filename_then_decoded(header: str, expected: str) -> None:
    raw = (
        b"Subject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: "
        + header.encode()
        + b"\r\n\r\nattached text\r\n--b--\r\n"
    )
    document = parse_message(raw)
    assert _part(document, f"attachment:{expected}").text.strip() == "attached text"


@pytest.mark.parametrize(
    "charset, payload, expected",
    [
        ("utf-8", "Café £5".encode(), "Café £5"),
        ("iso-8859-1", "Café £5".encode("latin-1"), "Café £5"),
        ("windows-1252", "“quoted” \u2013 dash".encode("cp1252"), "“quoted” \u2013 dash"),
        ("x-unknown-charset", "Café".encode(), "Café"),
        ("utf-8", "Café".encode("latin-1"), "Café"),  # declared wrong: falls back
        ("", "Café".encode(), "Café"),  # undeclared 8-bit
    ],
)
def test_when_charset_declared_wrong_or_unknown_then_decoded_anyway(
    charset: str, payload: bytes, expected: str
) -> None:
    content_type = f"text/plain; charset={charset}" if charset else "text/plain"
    raw = (
        (
            f"Subject: x\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + payload
        + b"\r\n"
    )
    assert _part(parse_message(raw), "body").text.strip() == expected


@pytest.mark.parametrize(
    "encoding, encoded",
    [
        ("base64", base64.b64encode(b"NHS number 943 476 5919")),
        ("quoted-printable", b"NHS number 943=20476 5919"),
        ("base64", base64.b64encode(b"NHS number 943 476 5919")[:-3] + b"!!"),  # broken
        ("x-unknown", b"NHS number 943 476 5919"),
    ],
    ids=["base64", "qp", "broken-base64", "unknown-encoding"],
)
def test_when_transfer_encoded_then_decoded_without_error(encoding: str, encoded: bytes) -> None:
    raw = (
        (
            "Subject: x\r\nContent-Type: text/plain\r\n"
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
        ).encode()
        + encoded
        + b"\r\n"
    )
    body = _part(parse_message(raw), "body")
    assert "NHS number 943" in body.text


def test_when_pdf_named_txt_then_kind_from_bytes_and_mismatch_flag() -> None:
    pdf = b"%PDF-1.4\n" + b"0" * 100
    document = parse_message(_message(("notes.txt", pdf, "text/plain")))
    part = _part(document, "attachment:notes.txt")
    assert Flag.TYPE_MISMATCH in part.flags
    assert part.kind in ("pdf", "uninspectable")


def test_when_text_named_pdf_then_mismatch_flag() -> None:
    document = parse_message(_message(("report.pdf", b"just some words", "application/pdf")))
    part = _part(document, "attachment:report.pdf")
    assert part.kind in ("text", "uninspectable")
    assert Flag.TYPE_MISMATCH in part.flags


def test_when_zip_inside_zip_then_every_member_read_with_its_path() -> None:
    inner = _zip({"note.txt": b"inner note text"})
    outer = _zip({"inner.zip": inner, "top.txt": b"top level text"})
    document = parse_message(_message(("bundle.zip", outer, "application/zip")))
    assert _part(document, "attachment:bundle.zip").kind == "zip"
    assert _part(document, "attachment:bundle.zip/top.txt").text == "top level text"
    assert _part(document, "attachment:bundle.zip/inner.zip/note.txt").text == "inner note text"


def test_when_encrypted_zip_then_uninspectable_with_reason_and_flag() -> None:
    data = bytearray(_zip({"secret.txt": b"x" * 100}, compression=zipfile.ZIP_STORED))
    # Set the "encrypted" bit in the local header and the central directory entry.
    data[6] |= 0x1
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1
    document = parse_message(_message(("evidence.zip", bytes(data), "application/zip")))
    part = _part(document, "attachment:evidence.zip")
    assert part.kind == "uninspectable"
    assert "password-protected ZIP" in part.reason
    assert Flag.ENCRYPTED in part.flags


def test_when_zip_bomb_then_uninspectable_quickly() -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("zeros.bin", "w", force_zip64=True) as member,
    ):
        chunk = b"\0" * (1024 * 1024)
        for _ in range(200):  # 200 MB of zeros, ~200 KB compressed
            member.write(chunk)
    started = time.monotonic()
    document = parse_message(_message(("bomb.zip", buffer.getvalue(), "application/zip")))
    assert time.monotonic() - started < 5
    part = _part(document, "attachment:bomb.zip")
    assert part.kind == "uninspectable"
    assert "zip bomb" in part.reason or "size limit" in part.reason


def test_when_nested_archives_42_shape_then_bounded_by_depth_and_bytes() -> None:
    level = _zip({"zeros.txt": b"0" * 200_000})
    for depth in range(12):
        level = _zip({f"level{depth}-{i}.zip": level for i in range(4)})
        if len(level) > 5_000_000:
            break
    limits = Limits(max_depth=6, max_extracted_bytes=50_000_000)
    started = time.monotonic()
    document = parse_message(_message(("42.zip", level, "application/zip")), limits)
    assert time.monotonic() - started < 20
    reasons = {p.reason for p in document.parts if p.kind == "uninspectable"}
    assert reasons & {"nested too deeply", "message unpacks to more than the size limit"}


def test_when_too_many_members_then_uninspectable() -> None:
    archive = _zip({f"f{i}.txt": b"x" for i in range(50)})
    document = parse_message(
        _message(("many.zip", archive, "application/zip")), Limits(max_archive_members=10)
    )
    assert "more than the limit" in _part(document, "attachment:many.zip").reason


def test_when_gzip_then_member_read() -> None:
    data = gzip.compress(b"compressed case notes")
    document = parse_message(_message(("notes.txt.gz", data, "application/gzip")))
    assert _part(document, "attachment:notes.txt.gz/notes.txt").text == "compressed case notes"


def test_when_gzip_bomb_then_uninspectable() -> None:
    data = gzip.compress(b"\0" * 50_000_000)
    document = parse_message(
        _message(("bomb.gz", data, "application/gzip")), Limits(max_part_bytes=10_000_000)
    )
    part = _part(document, "attachment:bomb.gz")
    assert part.kind == "uninspectable"


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("archive.7z", b"7z\xbc\xaf\x27\x1c" + b"\0" * 50, "7Z archives cannot be inspected"),
        ("archive.rar", b"Rar!\x1a\x07\x00" + b"\0" * 50, "RAR archives cannot be inspected"),
        (
            "locked.docx",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
            + "EncryptedPackage".encode("utf-16-le")
            + b"\0" * 50,
            "password-protected Office document",
        ),
        ("program.exe", b"MZ\x90\x00" + b"\0\x01\x02" * 50, "unrecognised binary file"),
    ],
)
def test_when_unreadable_kind_then_uninspectable_with_reason(
    name: str, data: bytes, reason: str
) -> None:
    part = _part(
        parse_message(_message((name, data, "application/octet-stream"))), f"attachment:{name}"
    )
    assert part.kind == "uninspectable"
    assert part.reason == reason


def test_when_image_then_recorded_as_image() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    part = _part(parse_message(_message(("scan.png", png, "image/png"))), "attachment:scan.png")
    assert part.kind == "image"
    assert Flag.IMAGE in part.flags


def test_when_attachment_over_size_limit_then_uninspectable() -> None:
    data = b"x" * 2_000_000
    document = parse_message(
        _message(("big.txt", data, "text/plain")), Limits(max_part_bytes=1_000_000)
    )
    assert _part(document, "attachment:big.txt").reason == "over the size limit for one file"


def test_when_25mb_attachment_then_read_in_bounded_time() -> None:
    line = b"Case reference CS-204817 meeting notes, nothing else of note here today.\n"
    data = line * (25 * 1024 * 1024 // len(line))
    started = time.monotonic()
    document = parse_message(_message(("big.csv", data, "text/csv")))
    elapsed = time.monotonic() - started
    assert elapsed < 20
    assert len(_part(document, "attachment:big.csv").text) == len(data)


def test_when_more_text_than_the_limit_then_uninspectable_not_cut() -> None:
    document = parse_message(
        _message(("long.txt", b"x" * 5000, "text/plain")), Limits(max_text_chars=1000)
    )
    part = _part(document, "attachment:long.txt")
    assert part.kind == "uninspectable"
    assert part.reason == "more text than the limit for one part"


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"%PDF-1.7\n", "pdf"),
        (b"{\\rtf1\\ansi hello}", "rtf"),
        (b"\x78\x9f\x3e\x22\x00", "tnef"),
        (b"\x1f\x8b\x08", "gzip"),
        (b"<!DOCTYPE html><html>", "html"),
        (b"BEGIN:VCALENDAR\r\n", "calendar"),
        (b"BEGIN:VCARD\r\n", "vcard"),
        (b"plain words", "text"),
        (b"\x00\x01\x02\x03", "binary"),
    ],
)
def test_sniff_by_magic(data: bytes, kind: str) -> None:
    assert sniff(data) == kind


def _cpython_email_corpus() -> list[Path]:
    try:
        import test.test_email as corpus
    except ImportError:
        return []
    assert corpus.__file__ is not None
    return sorted((Path(corpus.__file__).parent / "data").glob("msg_*.txt"))


@pytest.mark.skipif(not _cpython_email_corpus(), reason="CPython's test suite is not installed")
def test_every_message_of_cpythons_email_corpus_parses() -> None:
    for path in _cpython_email_corpus():
        document = parse_message(path.read_bytes())
        assert isinstance(document, Document), path.name


_mime_leaf = st.builds(
    lambda subtype, payload, name: (
        MIMEApplication(payload, _subtype=subtype, Name=name)
        if subtype != "plain"
        else MIMEText(payload.decode("latin-1"), "plain", "utf-8")
    ),
    st.sampled_from(["plain", "octet-stream", "pdf", "zip"]),
    st.binary(max_size=300),
    st.text(max_size=20),
)


def _tree(children: list[object]) -> MIMEMultipart:
    node = MIMEMultipart()
    for child in children:
        node.attach(child)  # type: ignore[arg-type]
    return node


_mime_tree = st.recursive(
    _mime_leaf, lambda inner: st.lists(inner, max_size=4).map(_tree), max_leaves=12
)


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(_mime_tree)
def test_random_mime_trees_never_raise(tree: object) -> None:
    raw = tree.as_bytes()  # type: ignore[attr-defined]
    document = parse_message(raw)
    assert isinstance(document, Document)


@settings(max_examples=150, deadline=2000)
@given(st.binary(max_size=4000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_message(raw), Document)


@settings(max_examples=100, deadline=2000)
@given(
    st.binary(min_size=1, max_size=2000),
    st.sampled_from([b"PK\x03\x04", b"%PDF-", b"\x1f\x8b", b"{\\rtf", b"\x78\x9f\x3e\x22"]),
)
def test_random_bytes_behind_a_magic_number_never_raise(tail: bytes, magic: bytes) -> None:
    document = parse_message(_message(("file.bin", magic + tail, "application/octet-stream")))
    part = _part(document, "attachment:file.bin")
    assert part.kind == "uninspectable" or isinstance(part.text, str)
