"""PDF, RTF, TNEF, HTML and plain-text extractors: what they read, flag, hand back and refuse.

PDF fixtures are drawn with reportlab and edited with pypdf (annotations,
encryption, attachments), as real tools would save them. RTF is written by
hand. TNEF (winmail.dat) is built attribute by attribute, with checksums,
because no library here writes it. Every extractor must answer hostile bytes
with an `Extraction` or `Uninspectable`, never another exception.
"""

from __future__ import annotations

import codecs
import io
import random
import struct
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter
from pypdf.annotations import FreeText, Rectangle, Text
from pypdf.generic import ArrayObject, DictionaryObject, FloatObject, NameObject, TextStringObject
from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped,unused-ignore]
from reportlab.pdfgen.canvas import Canvas  # type: ignore[import-untyped,unused-ignore]

from smtpguard.parse.extract import Extraction, Uninspectable
from smtpguard.parse.extract import html as html_extract
from smtpguard.parse.extract import pdf as pdf_extract
from smtpguard.parse.extract import plaintext as text_extract
from smtpguard.parse.extract import rtf as rtf_extract
from smtpguard.parse.extract import tnef as tnef_extract
from smtpguard.parse.model import Flag, Limits

LIMITS = Limits()
SECRET = "Child Jane Doe NHS 943 476 5919"
Draw = Callable[[Canvas], object]


def read(module: ModuleType, data: bytes, limits: Limits = LIMITS) -> Extraction:
    result = module.extract(data, limits)
    assert isinstance(result, Extraction)
    return result


def outcome(module: ModuleType, data: bytes, limits: Limits = LIMITS) -> Extraction | str:
    """What an extractor makes of any bytes: an Extraction, or the Uninspectable reason."""
    try:
        return read(module, data, limits)
    except Uninspectable as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return exc.reason


# -- PDF fixtures -------------------------------------------------------------------------


def make_pdf(*pages: Draw, title: str = "", author: str = "", compress: int = 1) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, pageCompression=compress)
    if title:
        canvas.setTitle(title)
    if author:
        canvas.setAuthor(author)
    for draw in pages:
        draw(canvas)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def text_at(words: str = SECRET, y: float = 700, colour: tuple[float, ...] = (0, 0, 0)) -> Draw:
    def draw(canvas: Canvas) -> None:
        canvas.setFillColorRGB(*colour)
        canvas.setFont("Helvetica", 12)
        canvas.drawString(72, y, words)

    return draw


def box(colour: tuple[float, ...] = (0, 0, 0), y: float = 696, height: float = 16) -> Draw:
    def draw(canvas: Canvas) -> None:
        canvas.setFillColorRGB(*colour)
        canvas.rect(70, y, 300, height, fill=1, stroke=0)

    return draw


def boxed_form(canvas: Canvas) -> None:
    """A black box drawn through a Form XObject, shifted by the page's transformation matrix."""
    canvas.beginForm("redaction")
    canvas.setFillColorRGB(0, 0, 0)
    canvas.rect(70, 796, 300, 16, fill=1, stroke=0)
    canvas.endForm()
    text_at()(canvas)
    canvas.saveState()
    canvas.translate(0, -100)
    canvas.doForm("redaction")
    canvas.restoreState()


def table_rules(canvas: Canvas) -> None:
    """Cell borders and an underline: dark, over the text, but covering none of it."""
    text_at()(canvas)
    canvas.setLineWidth(0.5)
    canvas.rect(70, 694, 300, 20, fill=0, stroke=1)
    canvas.setFillColorRGB(0, 0, 0)
    canvas.rect(72, 697, 200, 0.8, fill=1, stroke=0)


def both(*draws: Draw) -> Draw:
    def draw(canvas: Canvas) -> None:
        for step in draws:
            step(canvas)

    return draw


def edit_pdf(data: bytes, change: Callable[[PdfWriter], object]) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    change(writer)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def annotated(*annotations: Any) -> bytes:
    def change(writer: PdfWriter) -> None:
        for annotation in annotations:
            writer.add_annotation(page_number=0, annotation=annotation)

    return edit_pdf(make_pdf(text_at()), change)


def redact_annotation() -> DictionaryObject:
    """pypdf has no Redact class; this is the dictionary Acrobat writes when marking."""
    rect = ArrayObject([FloatObject(v) for v in (70, 696, 370, 712)])
    return DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Annot"),
            NameObject("/Subtype"): NameObject("/Redact"),
            NameObject("/Rect"): rect,
            NameObject("/OverlayText"): TextStringObject("Redacted under s.40"),
        }
    )


def encrypted(user: str, owner: str, algorithm: str | None = None) -> bytes:
    return edit_pdf(
        make_pdf(text_at()),
        lambda w: w.encrypt(user_password=user, owner_password=owner, algorithm=algorithm),
    )


def filled_form(canvas: Canvas) -> None:
    text_at("Referral form")(canvas)
    canvas.acroForm.textfield(name="child_name", value="Tommy Atkins", x=72, y=500, width=200)
    canvas.acroForm.checkbox(name="consent", checked=True, x=72, y=450)


def scanned_page(canvas: Canvas) -> None:
    from PIL import Image  # reportlab needs Pillow for images anyway

    picture = io.BytesIO()
    Image.new("L", (40, 40), 128).save(picture, format="PNG")
    picture.seek(0)
    from reportlab.lib.utils import (  # type: ignore[import-untyped,unused-ignore]
        ImageReader,
    )

    canvas.drawImage(ImageReader(picture), 50, 400, 400, 400)


# -- PDF tests ------------------------------------------------------------------------------


def test_when_pdf_has_several_pages_then_each_page_text_in_order_with_page_breaks() -> None:
    data = make_pdf(*(text_at(f"Page {n} of the core assessment") for n in range(1, 7)))

    result = read(pdf_extract, data)

    pages = result.text.split("\f")
    assert len(pages) == 6
    for number, page in enumerate(pages, start=1):
        assert f"Page {number} of the core assessment" in page
    assert result.flags == frozenset()


def test_when_pdf_has_metadata_then_it_is_name_value_lines() -> None:
    data = make_pdf(text_at(), title="OFFICIAL-SENSITIVE case notes", author="J Smith")

    text = read(pdf_extract, data).text

    assert "Title: OFFICIAL-SENSITIVE case notes" in text.splitlines()
    assert "Author: J Smith" in text.splitlines()


@pytest.mark.parametrize(
    ("draw", "flag"),
    [
        pytest.param(both(text_at(), box()), Flag.TEXT_UNDER_REDACTION, id="black-box-after-text"),
        pytest.param(boxed_form, Flag.TEXT_UNDER_REDACTION, id="black-box-in-form-xobject"),
        pytest.param(both(box(), text_at()), Flag.TEXT_UNDER_REDACTION, id="black-highlight"),
        pytest.param(
            both(box(), text_at(colour=(0, 0, 0.5))), Flag.TEXT_UNDER_REDACTION, id="navy-on-black"
        ),
        pytest.param(
            both(text_at(), box((0.1, 0.1, 0.15))), Flag.TEXT_UNDER_REDACTION, id="near-black"
        ),
        pytest.param(both(text_at(), box((1, 1, 1))), Flag.HIDDEN_TEXT, id="white-out-box"),
        pytest.param(text_at(colour=(1, 1, 1)), Flag.HIDDEN_TEXT, id="white-text-on-page"),
        pytest.param(
            both(text_at("Visible"), text_at(SECRET, y=-400)), Flag.HIDDEN_TEXT, id="off-page"
        ),
    ],
)
def test_when_pdf_has_text_under_black_box_then_flag_and_text_kept(draw: Draw, flag: str) -> None:
    result = read(pdf_extract, make_pdf(draw))

    assert flag in result.flags
    assert SECRET in result.text


@pytest.mark.parametrize(
    "draw",
    [
        pytest.param(both(text_at(), box(y=400)), id="black-box-over-nothing"),
        pytest.param(both(box(), text_at(colour=(1, 1, 1))), id="white-text-on-black-banner"),
        pytest.param(both(box((0.85, 0.85, 0.85)), text_at()), id="grey-shading-under-text"),
        pytest.param(table_rules, id="table-rules-and-underline"),
        pytest.param(both(text_at(), box((0, 0, 0), y=707, height=12)), id="box-over-top-third"),
    ],
)
def test_when_pdf_box_hides_no_text_then_no_redaction_flag(draw: Draw) -> None:
    result = read(pdf_extract, make_pdf(draw))

    assert Flag.TEXT_UNDER_REDACTION not in result.flags
    assert Flag.HIDDEN_TEXT not in result.flags


def test_when_pdf_has_dark_square_annotation_over_text_then_text_under_redaction() -> None:
    data = annotated(Rectangle(rect=(70, 696, 370, 712), interior_color="000000"))

    result = read(pdf_extract, data)

    assert Flag.TEXT_UNDER_REDACTION in result.flags
    assert SECRET in result.text


def test_when_pdf_has_redact_annotation_then_unapplied_redaction_and_text_kept() -> None:
    result = read(pdf_extract, annotated(redact_annotation()))

    assert Flag.UNAPPLIED_REDACTION in result.flags
    assert SECRET in result.text
    assert "Redacted under s.40" in result.text


def test_when_pdf_has_comments_then_their_text_and_comments_flag() -> None:
    data = annotated(
        Text(text="Check DOB with mum", rect=(10, 10, 30, 30)),
        FreeText(text="Sibling: Tom Doe", rect=(100, 100, 300, 150)),
    )

    result = read(pdf_extract, data)

    assert Flag.COMMENTS in result.flags
    assert "Check DOB with mum" in result.text
    assert "Sibling: Tom Doe" in result.text


@pytest.mark.parametrize("algorithm", [None, "AES-256"])
def test_when_pdf_needs_user_password_then_uninspectable(algorithm: str | None) -> None:
    with pytest.raises(Uninspectable) as raised:
        pdf_extract.extract(encrypted("secret", "owner", algorithm), LIMITS)

    assert raised.value.reason == "password-protected PDF"


@pytest.mark.parametrize("algorithm", [None, "AES-256"])
def test_when_pdf_has_owner_password_only_then_read_and_flag_encrypted(
    algorithm: str | None,
) -> None:
    result = read(pdf_extract, encrypted("", "owner", algorithm))

    assert Flag.ENCRYPTED in result.flags
    assert SECRET in result.text


def test_when_pdf_has_attached_file_then_returned_as_embedded() -> None:
    csv = b"name,dob\nJane Doe,01/02/2015\n"
    data = edit_pdf(make_pdf(text_at()), lambda w: w.add_attachment("caseload.csv", csv))

    result = read(pdf_extract, data)

    assert [(e.name, e.data) for e in result.embedded] == [("caseload.csv", csv)]


def test_when_pdf_form_is_filled_in_then_field_values_are_text() -> None:
    result = read(pdf_extract, make_pdf(filled_form))

    assert "child_name: Tommy Atkins" in result.text
    assert "consent" not in result.text  # tick boxes say "Yes"/"Off", nothing to read


def test_when_pdf_page_is_only_an_image_then_image_flag() -> None:
    result = read(pdf_extract, make_pdf(scanned_page))

    assert Flag.IMAGE in result.flags


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75, 0.9, 0.99])
def test_when_pdf_is_truncated_then_best_effort_text_or_corrupt(fraction: float) -> None:
    data = make_pdf(*(text_at(f"Page {n} {SECRET}") for n in range(1, 7)), compress=0)

    result = outcome(pdf_extract, data[: int(len(data) * fraction)])

    if isinstance(result, str):
        assert result.startswith("corrupt PDF")
    else:
        assert "Page 1" in result.text


def test_when_pdf_text_is_longer_than_limit_then_cut() -> None:
    data = make_pdf(*(text_at(SECRET * 3) for _ in range(3)))

    result = read(pdf_extract, data, Limits(max_text_chars=50))

    assert len(result.text) == 50


def test_when_pdf_is_read_then_it_is_fast() -> None:
    """Six pages of dense text well under the 20 ms budget (generous margin for slow CI)."""
    lines = [text_at(f"{SECRET} line {n} " * 3, y=800 - 16 * n) for n in range(45)]
    data = make_pdf(*(both(*lines) for _ in range(6)), compress=0)
    read(pdf_extract, data)

    started = time.perf_counter()
    for _ in range(5):
        read(pdf_extract, data)
    per_file = (time.perf_counter() - started) / 5

    assert per_file < 0.2


# -- RTF --------------------------------------------------------------------------------

RTF_HEAD = rb"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0\fswiss\fcharset0 Arial;}}"


@pytest.mark.parametrize(
    ("rtf", "expected", "flags"),
    [
        pytest.param(RTF_HEAD + rb"\pard Child: Zo\'eb Smith\par}", ["Child: Zoë Smith"], set()),
        pytest.param(
            rb"{\rtf1\ansi\ansicpg1251 \'cf\'f0\'e8\'e2\'e5\'f2}", ["Привет"], set(), id="cp1251"
        ),
        pytest.param(
            rb"{\rtf1{\fonttbl{\f1\fcharset128 MS Gothic;}}\f1 \'93\'fa\'96\'7b}",
            ["日本"],
            set(),
            id="shift-jis-font",
        ),
        pytest.param(
            RTF_HEAD + rb"\u8364? and \uc2\u26085\'93\'fa then \uc1\u-10179?\u-8704?}",
            ["€ and 日 then 😀"],
            set(),
            id="unicode-and-surrogates",
        ),
        pytest.param(
            RTF_HEAD + rb"Visible {\v NHS 943 476 5919} end}",
            ["Visible NHS 943 476 5919 end"],
            {Flag.HIDDEN_TEXT},
            id="hidden-text",
        ),
        pytest.param(
            RTF_HEAD + rb"{\header OFFICIAL-SENSITIVE}{\footer Page}Body}",
            ["Body", "OFFICIAL-SENSITIVE", "Page"],
            set(),
            id="header-footer",
        ),
        pytest.param(
            RTF_HEAD + rb"Text{\*\atnid JS}\chatn{\*\annotation{\*\atnref 1}Check the DOB}}",
            ["Text", "Comments:\nCheck the DOB"],
            {Flag.COMMENTS},
            id="comment",
        ),
        pytest.param(
            RTF_HEAD + rb"{\info{\title Case file}{\author J Smith}{\creatim\yr2024}}"
            rb"{\*\userprops{\propname Classification}\proptype30{\staticval OFFICIAL}}Body}",
            ["Title: Case file", "Author: J Smith", "Classification: OFFICIAL"],
            set(),
            id="properties",
        ),
        pytest.param(
            RTF_HEAD + rb"{\field{\*\fldinst HYPERLINK \"http://x\"}{\fldrslt shown link}}}",
            ["shown link"],
            set(),
            id="field-result",
        ),
        pytest.param(
            RTF_HEAD + rb"Kept {\deleted removed words} text}",
            ["Kept removed words text"],
            {Flag.TRACKED_CHANGES},
            id="tracked-deletion",
        ),
        pytest.param(
            RTF_HEAD + rb"A\tab B\par C\line D\~E\emdash F\{G\}\\}",
            ["A\tB\nC\nD E\u2014F{G}\\"],
            set(),
            id="specials",
        ),
    ],
)
def test_when_rtf_has_content_then_text_and_flags(
    rtf: bytes, expected: list[str], flags: set[str]
) -> None:
    result = read(rtf_extract, rtf)

    for fragment in expected:
        assert fragment in result.text
    assert result.flags == frozenset(flags)


@pytest.mark.parametrize(
    "rtf",
    [
        RTF_HEAD + rb"{\pict\pngblip 89504e470d0a}Body}",
        RTF_HEAD + rb"{\*\htmltag84 <p class=x>}Body}",
        RTF_HEAD + rb"{\colortbl;\red0\green0\blue0;}{\stylesheet{\s0 Normal;}}Body}",
        RTF_HEAD + rb"{\*\unknowndest secret-looking junk}Body}",
    ],
)
def test_when_rtf_has_non_text_destinations_then_they_are_ignored(rtf: bytes) -> None:
    assert read(rtf_extract, rtf).text == "Body"


def ole1(classname: str, native: bytes) -> bytes:
    def ansi(value: str) -> bytes:
        raw = value.encode("cp1252") + b"\0" if value else b""
        return struct.pack("<I", len(raw)) + raw

    return (
        struct.pack("<II", 0x0501, 2)
        + ansi(classname)
        + ansi("")
        + ansi("")
        + struct.pack("<I", len(native))
        + native
    )


def packaged(filename: str, data: bytes) -> bytes:
    path = f"C:\\Users\\sw\\{filename}".encode("cp1252") + b"\0"
    return (
        struct.pack("<H", 2)
        + filename.encode("cp1252")
        + b"\0"
        + path
        + struct.pack("<II", 0x00030000, len(path))
        + path
        + struct.pack("<I", len(data))
        + data
    )


def rtf_object(classname: str, native: bytes) -> bytes:
    hexdata = ole1(classname, native).hex().encode()
    lines = b"\r\n".join(hexdata[i : i + 64] for i in range(0, len(hexdata), 64))
    return (
        RTF_HEAD
        + rb"Before {\object\objemb{\*\objclass "
        + classname.encode()
        + rb"}{\*\objdata "
        + lines
        + rb"}{\result shown icon}} After}"
    )


def test_when_rtf_embeds_packaged_file_then_file_returned_with_its_name() -> None:
    csv = b"name,nhs\nJane Doe,9434765919\n"

    result = read(rtf_extract, rtf_object("Package", packaged("caseload.csv", csv)))

    assert [(e.name, e.data) for e in result.embedded] == [("caseload.csv", csv)]
    assert "Before" in result.text
    assert "After" in result.text


def test_when_rtf_embeds_ole_object_then_native_data_returned() -> None:
    native = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 56

    result = read(rtf_extract, rtf_object("Word.Document.8", native))

    assert len(result.embedded) == 1
    assert result.embedded[0].data == native
    assert "Word.Document.8" in result.embedded[0].name


@pytest.mark.parametrize(
    "rtf",
    [
        rb"{\rtf1 unbalanced {\b bold",
        rb"}}}}{{{{\rtf1 text}",
        rb"{\rtf1 \bin999999 short}",
        rb"{\rtf1 \u",
        rb"{\rtf1 \'4",
        rb"{\rtf1 \uc9999999999\u65 abc}",
        rb"{\rtf1 \u99999999 \u-99999 \u-10179}",
        rb"{\rtf1 {\*\objdata zz-not-hex}}",
        rb"{\rtf1 {\*\objdata 0105}}",
        b"{" * 50_000 + b"deep" + b"}" * 10,
        b"\\",
        b"",
    ],
)
def test_when_rtf_is_malformed_then_best_effort_and_no_exception(rtf: bytes) -> None:
    read(rtf_extract, rtf)


# -- TNEF ---------------------------------------------------------------------------------


def tnef_attribute(level: int, name: int, kind: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BHHI", level, name, kind, len(data)) + data + struct.pack("<H", checksum)


def mapi_properties(*props: tuple[int, int, bytes]) -> bytes:
    out = struct.pack("<I", len(props))
    for kind, ident, value in props:
        out += struct.pack("<HH", kind, ident)
        if kind == 0x0003:
            out += value
        else:  # strings and binary: one value, length, data padded to 4
            out += struct.pack("<II", 1, len(value)) + value + b"\0" * (-len(value) % 4)
    return out


def lzfu(raw: bytes) -> bytes:
    """Compressed RTF using literals only, ended by a reference to the write position."""
    body = bytearray()
    write = 207
    for start in range(0, len(raw) + 1, 8):
        chunk = raw[start : start + 8]
        if len(chunk) == 8:
            body += b"\0" + chunk
            write = (write + 8) % 4096
            continue
        body += bytes([1 << len(chunk)]) + chunk
        write = (write + len(chunk)) % 4096
        body += struct.pack(">H", write << 4)
        break
    return struct.pack("<IIII", len(body) + 12, len(raw), 0x75465A4C, 0) + bytes(body)


def mela(raw: bytes) -> bytes:
    return struct.pack("<IIII", len(raw) + 12, len(raw), 0x414C454D, 0) + raw


def winmail(
    *,
    subject: bytes = b"Core group minutes",
    body_props: tuple[tuple[int, int, bytes], ...] = (),
    attachments: tuple[tuple[bytes, bytes], ...] = (),
    message_body: bytes | None = None,
    embedded_message: bytes | None = None,
) -> bytes:
    stream = struct.pack("<IH", 0x223E9F78, 0x0101)
    stream += tnef_attribute(1, 0x9006, 0x0008, struct.pack("<I", 0x10000))
    stream += tnef_attribute(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))
    stream += tnef_attribute(1, 0x8008, 0x0007, b"IPM.Microsoft Mail.Note\0")
    stream += tnef_attribute(1, 0x8004, 0x0001, subject + b"\0")
    if message_body is not None:
        stream += tnef_attribute(1, 0x800C, 0x0002, message_body)
    props = ((0x001E, 0x0E04, b"Jane Doe\0"), *body_props)
    stream += tnef_attribute(1, 0x9003, 0x0006, mapi_properties(*props))
    for name, data in attachments:
        stream += tnef_attribute(2, 0x9002, 0x0006, b"\x01\x00\xff\xff\xff\xff" + b"\0" * 8)
        stream += tnef_attribute(2, 0x8010, 0x0001, name + b"\0")
        stream += tnef_attribute(2, 0x800F, 0x0006, data)
        long_name = (0x001E, 0x3707, name + b"\0")
        method = (0x0003, 0x3705, struct.pack("<I", 1))
        stream += tnef_attribute(2, 0x9005, 0x0006, mapi_properties(long_name, method))
    if embedded_message is not None:
        stream += tnef_attribute(2, 0x9002, 0x0006, b"\x05\x00\xff\xff\xff\xff" + b"\0" * 8)
        stream += tnef_attribute(2, 0x8010, 0x0001, b"Forwarded referral\0")
        obj = tnef_extract.IMESSAGE_SIGNATURE + embedded_message
        stream += tnef_attribute(2, 0x9005, 0x0006, mapi_properties((0x000D, 0x3701, obj)))
    return stream


RTF_BODY = RTF_HEAD + rb"\pard Child Zo\'eb Smith, NHS 943 476 5919\par {\v hidden note}}"


def test_compressed_rtf_specification_example_decompresses() -> None:
    compressed = bytes.fromhex(
        "2d0000002b0000004c5a4675f1c5c7a703000a007263706731323542320af32068656c0900206277"
        "05b06c647d0a800fa0"
    )

    raw = tnef_extract.decompress_rtf(compressed, 1 << 20)

    assert raw == b"{\\rtf1\\ansi\\ansicpg1252\\pard hello world}\r\n"


@pytest.mark.parametrize("pack", [lzfu, mela], ids=["lzfu", "mela"])
def test_when_winmail_has_rtf_body_and_attachments_then_text_and_embedded(
    pack: Callable[[bytes], bytes],
) -> None:
    pdf = make_pdf(text_at())
    data = winmail(
        body_props=((0x0102, 0x1009, pack(RTF_BODY)),),
        attachments=((b"Referral Zo\xeb.pdf", pdf), (b"notes.txt", b"plain notes")),
    )

    result = read(tnef_extract, data)

    assert "Subject: Core group minutes" in result.text
    assert "To: Jane Doe" in result.text
    assert "Child Zoë Smith, NHS 943 476 5919" in result.text
    assert "Attachment: Referral Zoë.pdf" in result.text
    assert Flag.HIDDEN_TEXT in result.flags  # carried over from the RTF body
    assert [(e.name, e.data) for e in result.embedded] == [
        ("Referral Zoë.pdf", pdf),
        ("notes.txt", b"plain notes"),
    ]


def test_when_winmail_has_html_and_plain_bodies_then_both_read_once_each() -> None:
    html = b"<html><body><p>Visit at <b>1 High St</b></p><div hidden>x</div></body></html>"
    data = winmail(
        body_props=((0x0102, 0x1013, html),),
        message_body=b"Plain body: call 07700 900123\0",
    )

    result = read(tnef_extract, data)

    assert "Visit at 1 High St" in result.text
    assert "Plain body: call 07700 900123" in result.text
    assert result.text.count("1 High St") == 1
    assert Flag.HIDDEN_TEXT in result.flags


def test_when_winmail_carries_a_message_then_it_is_embedded_for_the_caller() -> None:
    inner = winmail(subject=b"Inner", message_body=b"inner body\0")

    result = read(tnef_extract, winmail(embedded_message=inner))

    assert [e.name for e in result.embedded] == ["Forwarded referral.tnef"]
    assert result.embedded[0].data == inner
    inner_result = read(tnef_extract, result.embedded[0].data)
    assert "inner body" in inner_result.text


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"not tnef at all", id="wrong-signature"),
        pytest.param(b"\x78\x9f\x3e", id="short"),
        pytest.param(winmail(attachments=((b"a.txt", b"x" * 100),))[:-40], id="truncated"),
        pytest.param(
            struct.pack("<IH", 0x223E9F78, 1) + b"\x07" + b"\0" * 40, id="bad-attribute-level"
        ),
        pytest.param(
            struct.pack("<IH", 0x223E9F78, 1)
            + tnef_attribute(1, 0x9003, 0x0006, struct.pack("<I", 0xFFFFFFFF) + b"\0" * 16),
            id="absurd-property-count",
        ),
        pytest.param(
            struct.pack("<IH", 0x223E9F78, 1)
            + tnef_attribute(
                1, 0x9003, 0x0006, struct.pack("<IHHI", 1, 0x1002, 0x0017, 0x7FFFFFFF)
            ),
            id="absurd-multivalue-count",
        ),
        pytest.param(
            struct.pack("<IH", 0x223E9F78, 1)
            + tnef_attribute(1, 0x8004, 0x0001, b"no codepage yet\0"),
            id="string-before-codepage",
        ),
        pytest.param(
            winmail(
                embedded_message=struct.pack("<IH", 0x223E9F78, 1)
                + tnef_attribute(1, 0x9003, 0x0006, struct.pack("<I", 0x7FFFFFFF) + b"\1" * 8)
            ),
            id="absurd-count-in-attached-message",
        ),
    ],
)
def test_when_winmail_is_corrupt_then_uninspectable_quickly(data: bytes) -> None:
    started = time.perf_counter()

    with pytest.raises(Uninspectable) as raised:
        tnef_extract.extract(data, LIMITS)

    assert raised.value.reason.startswith("corrupt winmail.dat")
    assert time.perf_counter() - started < 1.0


# -- HTML ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "markup",
    [
        "<p>Dear parent</p><div hidden>NHS 943 476 5919</div>",
        '<p>Dear parent</p><span style="display: none !important">NHS 943 476 5919</span>',
        '<p>Dear parent</p><p style="visibility:hidden">NHS 943 476 5919</p>',
        '<p>Dear parent</p><span style="font-size:0px">NHS 943 476 5919</span>',
        '<p>Dear parent</p><span style="opacity:0">NHS 943 476 5919</span>',
        '<p>Dear parent</p><span style="mso-hide:all">NHS 943 476 5919</span>',
        '<p>Dear parent</p><div style="max-height:0;overflow:hidden">NHS 943 476 5919</div>',
        '<p>Dear parent</p><p style="color:#FFFFFF">NHS 943 476 5919</p>',
        '<p>Dear parent</p><font color="white">NHS 943 476 5919</font>',
        '<p>Dear parent</p><table><tr><td bgcolor="#000000"><font color="black">NHS 943 476 5919'
        "</font></td></tr></table>",
        '<style>.pre { display:none }</style><p>Dear parent</p><i class="pre">NHS 943 476 5919</i>',
        '<p>Dear parent</p><span style="position:absolute;left:-9999px">NHS 943 476 5919</span>',
    ],
)
def test_when_html_hides_text_then_text_kept_and_hidden_flag(markup: str) -> None:
    result = read(html_extract, markup.encode())

    assert "Dear parent" in result.text
    assert "NHS 943 476 5919" in result.text
    assert Flag.HIDDEN_TEXT in result.flags


@pytest.mark.parametrize(
    "markup",
    [
        "<p>Dear parent, <b>welcome</b></p>",
        '<div style="background:#003366"><span style="color:#fff">Banner</span></div>',
        '<table bgcolor="black"><tr><td><font color="white">Banner</font></td></tr></table>',
        '<p style="display:block;font-size:12px;opacity:1">Shown</p>',
        "<style>.shown { color: red }</style><p class=shown>Shown</p>",
    ],
)
def test_when_html_shows_all_text_then_no_hidden_flag(markup: str) -> None:
    assert Flag.HIDDEN_TEXT not in read(html_extract, markup.encode()).flags


def test_when_html_has_structure_then_text_in_reading_order_with_line_breaks() -> None:
    markup = (
        "<html><head><title>Case &amp; notes</title><style>p { color: red }</style>"
        "<script>var secret = 1;</script></head><body>"
        "<h1>Referral</h1><p>Child:&nbsp;Zo&euml; Smith</p>"
        "<table><tr><th>Name</th><th>DOB</th></tr><tr><td>A B</td><td>01/01/2010</td></tr></table>"
        '<img src="x.png" alt="photo of the child"><a href="#" title="case file">link</a>'
        "<ul><li>one</li><li>two</li></ul>line<br>break</body></html>"
    )

    text = read(html_extract, markup.encode()).text

    assert text.splitlines() == [
        "Case & notes",
        "Referral",
        "Child: Zoë Smith",
        "Name\tDOB",
        "A B\t01/01/2010",
        "photo of the child case file link",
        "one",
        "two",
        "line",
        "break",
    ]
    assert "secret" not in text
    assert "color" not in text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            '<meta charset="windows-1252"><p>Zoë £5</p>'.encode("cp1252"), "Zoë £5", id="meta"
        ),
        pytest.param(
            b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'
            + "<p>Zoë</p>".encode("latin-1"),
            "Zoë",
            id="http-equiv",
        ),
        pytest.param(
            codecs.BOM_UTF16_LE + "<p>Zoë 日本</p>".encode("utf-16-le"), "Zoë 日本", id="utf16-bom"
        ),
        pytest.param(
            '<meta charset="iso-8859-1"><p>Zoë</p>'.encode(), "Zoë", id="already-utf8-stale-meta"
        ),
        pytest.param("<p>Zoë</p>".encode("cp1252"), "Zoë", id="undeclared-cp1252"),
        pytest.param(
            '<meta charset="no-such-charset"><p>Zoë</p>'.encode(), "Zoë", id="unknown-charset"
        ),
    ],
)
def test_when_html_bytes_declare_or_imply_charset_then_decoded(data: bytes, expected: str) -> None:
    assert expected in read(html_extract, data).text


@pytest.mark.parametrize(
    "markup",
    [
        b"<p>unclosed <b>bold <i>italic",
        b"</div></p></table>stray closers",
        b"<table><td>cell<tr>row</table>",
        b"<<<>>>&&&;;&#xFFFFFFFF;&#0;",
        b"<p \x00 attr='\x00'>\x00nul</p>",
        b"<!-- unterminated comment",
        b"<span>" * 5_000 + b"deep spans",
    ],
)
def test_when_html_is_malformed_then_best_effort_and_no_exception(markup: bytes) -> None:
    read(html_extract, markup)


def test_when_html_is_nested_absurdly_deep_then_uninspectable_quickly() -> None:
    started = time.perf_counter()

    with pytest.raises(Uninspectable):
        html_extract.extract(b"<div>" * 60_000 + b"x", LIMITS)

    assert time.perf_counter() - started < 2.0


# -- plain text, CSV/TSV, iCalendar, vCard ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            'name,dob,nhs\nZoë Smith,01/02/2012,9434765919\n"Doe, Jane",03/04/2010,1\n'.encode(
                "cp1252"
            ),
            "name\tdob\tnhs\nZoë Smith\t01/02/2012\t9434765919\nDoe, Jane\t03/04/2010\t1",
            id="csv-cp1252",
        ),
        pytest.param(
            b"name\tpostcode\nA Smith\tLS1 1AA\nB Jones\tM1 2BB\n",
            "name\tpostcode\nA Smith\tLS1 1AA\nB Jones\tM1 2BB",
            id="tsv",
        ),
        pytest.param(
            "Name;Straße\nMüller;Hauptstr. 1\nKöhler;Ring 2\n".encode("latin-1"),
            "Name\tStraße\nMüller\tHauptstr. 1\nKöhler\tRing 2",
            id="semicolon-latin1",
        ),
        pytest.param(
            codecs.BOM_UTF8 + b'id,note\n1,"two\nlines"\n2,"say ""hi"""\n',
            'id\tnote\n1\ttwo\nlines\n2\tsay "hi"',
            id="quoted-multiline-bom",
        ),
        pytest.param(
            b"Dear John,\nThanks for the report, it was useful.\nRegards, Sue\n",
            "Dear John,\nThanks for the report, it was useful.\nRegards, Sue\n",
            id="prose-with-commas-stays-prose",
        ),
        pytest.param(
            codecs.BOM_UTF16_LE + "Zoë 日本\r\nline".encode("utf-16-le"),
            "Zoë 日本\nline",
            id="utf16-text",
        ),
        pytest.param(b"caf\xc3\xa9 and caf\xe9", "café and caf\ufffd", id="mostly-utf8"),
    ],
)
def test_when_text_or_table_then_cells_and_lines_kept(data: bytes, expected: str) -> None:
    assert read(text_extract, data).text == expected


def test_when_ics_then_people_and_meeting_text_kept_unfolded() -> None:
    ics = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\n"
        "DTSTART:20240101T100000Z\r\n"
        "SUMMARY:Strategy meeting re Zoë\r\n  Smith\\, age 7\r\n"
        'ORGANIZER;CN="Sue Worker":mailto:sue@council.gov.uk\r\n'
        "ATTENDEE;ROLE=REQ-PARTICIPANT;CN=Jane Doe:mailto:jane@example.org\r\n"
        "LOCATION:1 High St\\; Leeds\r\n"
        "DESCRIPTION:Line one\\nLine two\r\n"
        "UID:abc@council\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode("latin-1")

    text = read(text_extract, ics).text

    assert text.splitlines() == [
        "SUMMARY: Strategy meeting re Zoë Smith, age 7",
        "ORGANIZER: Sue Worker <sue@council.gov.uk>",
        "ATTENDEE: Jane Doe <jane@example.org>",
        "LOCATION: 1 High St; Leeds",
        "DESCRIPTION: Line one",
        "Line two",
    ]


def test_when_vcard_then_contact_details_kept_including_quoted_printable() -> None:
    vcf = (
        b"BEGIN:VCARD\r\nVERSION:2.1\r\n"
        b"N;CHARSET=ISO-8859-1;ENCODING=QUOTED-PRINTABLE:M=FCller;J=FCrgen;;;\r\n"
        b"FN;CHARSET=ISO-8859-1:J\xfcrgen M\xfcller\r\n"
        b"ADR;HOME:;;1 High St;Leeds;;LS1 1AA;UK\r\n"
        b"TEL;CELL:07700 900123\r\n"
        b"NOTE;ENCODING=QUOTED-PRINTABLE:Foster carer=0D=0A=\r\nsince 2019\r\n"
        b"PHOTO;ENCODING=BASE64:iVBORw0KGgo=\r\n"
        b"END:VCARD\r\n"
        b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Jane Doe\r\n"
        b"item1.EMAIL;TYPE=INTERNET:jane@example.org\r\n"
        b"END:VCARD\r\n"
    )

    text = read(text_extract, vcf).text

    assert text.splitlines() == [
        "N: Jürgen Müller",
        "FN: Jürgen Müller",
        "ADR: 1 High St, Leeds, LS1 1AA, UK",
        "TEL: 07700 900123",
        "NOTE: Foster carer",
        "since 2019",
        "",
        "FN: Jane Doe",
        "EMAIL: jane@example.org",
    ]


def test_when_calling_helpers_directly_then_same_readers() -> None:
    assert text_extract.extract_csv(b"a;b\n1;2\n", LIMITS).text == "a\tb\n1\t2"
    assert text_extract.extract_calendar(b"BEGIN:VCALENDAR\nSUMMARY:x\n", LIMITS).text == (
        "SUMMARY: x"
    )
    assert text_extract.extract_vcard(b"BEGIN:VCARD\nFN:y\n", LIMITS).text == "FN: y"


# -- every extractor against hostile input -------------------------------------------------------

MODULES = [pdf_extract, rtf_extract, tnef_extract, html_extract, text_extract]
MODULE_IDS = ["pdf", "rtf", "tnef", "html", "plaintext"]


def seeds() -> dict[str, bytes]:
    """One valid file per format, for mutation."""
    return {
        "pdf": make_pdf(text_at(), both(text_at(), box())),
        "rtf": rtf_object("Package", packaged("a.csv", b"a,b\n1,2\n")),
        "tnef": winmail(
            body_props=((0x0102, 0x1009, lzfu(RTF_BODY)),), attachments=((b"a.txt", b"hi"),)
        ),
        "html": b"<html><title>t</title><p style='color:#fff'>x</p><table><td>c</td></table>",
        "plaintext": b"a,b,c\n1,2,3\n4,5,6\n",
    }


SEEDS = seeds()


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\0" * 1000, id="zeros"),
        pytest.param(b"A" * 3_000_000, id="huge-single-line"),
        pytest.param(b"{\\" * 200_000, id="huge-control-soup"),
        pytest.param(bytes(range(256)) * 64, id="every-byte"),
    ],
)
def test_when_input_is_hostile_then_only_extraction_or_uninspectable(
    module: ModuleType, data: bytes
) -> None:
    started = time.perf_counter()

    outcome(module, data)

    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.binary(max_size=2048))
def test_when_input_is_random_bytes_then_only_extraction_or_uninspectable(
    module: ModuleType, data: bytes
) -> None:
    outcome(module, data)


@pytest.mark.parametrize(
    ("module", "name"), list(zip(MODULES, MODULE_IDS, strict=True)), ids=MODULE_IDS
)
@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), flips=st.integers(1, 24))
def test_when_valid_file_is_damaged_then_only_extraction_or_uninspectable(
    module: ModuleType, name: str, seed: int, flips: int
) -> None:
    rng = random.Random(seed)
    data = bytearray(SEEDS[name])
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    cut = rng.choice([len(data), rng.randrange(len(data) + 1)])

    outcome(module, bytes(data[:cut]))


@pytest.mark.parametrize(
    ("module", "name"), list(zip(MODULES, MODULE_IDS, strict=True)), ids=MODULE_IDS
)
def test_when_file_is_over_size_limit_then_uninspectable(module: ModuleType, name: str) -> None:
    with pytest.raises(Uninspectable) as raised:
        module.extract(SEEDS[name], Limits(max_part_bytes=10))

    assert "size limit" in raised.value.reason


@pytest.mark.parametrize(
    ("module", "data"),
    [
        (pdf_extract, make_pdf(text_at(SECRET * 4))),
        (rtf_extract, RTF_HEAD + SECRET.encode() * 10 + b"}"),
        (tnef_extract, winmail(message_body=SECRET.encode() * 10 + b"\0")),
        (html_extract, b"<p>" + SECRET.encode() * 10),
        (text_extract, SECRET.encode() * 10),
    ],
    ids=MODULE_IDS,
)
def test_when_text_exceeds_max_text_chars_then_cut(module: ModuleType, data: bytes) -> None:
    result = read(module, data, Limits(max_text_chars=40))

    assert len(result.text) <= 40
    assert result.text
