"""Whole messages with real documents attached: the walk hands each file to its reader."""

from __future__ import annotations

import io
import zipfile

import docx
import openpyxl

from smtpguard.parse import Flag, parse_message
from tests.parse.test_mime import _message, _part, _zip


def _docx(text: str) -> bytes:
    document = docx.Document()
    document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _xlsx_with_hidden_sheet() -> bytes:
    book = openpyxl.Workbook()
    book.active.title = "summary"
    book.active.append(["open cases", 3])
    hidden = book.create_sheet("everyone")
    hidden.append(["Amelia Hart", "2015-03-14"])
    hidden.sheet_state = "veryHidden"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def test_when_docx_attached_then_its_text_is_read() -> None:
    raw = _message(("report.docx", _docx("Strategy meeting for CS-204817"), DOCX_TYPE))
    part = _part(parse_message(raw), "attachment:report.docx")
    assert part.kind == "docx"
    assert "Strategy meeting for CS-204817" in part.text


def test_when_xlsx_has_very_hidden_sheet_then_text_and_flag_reach_the_document() -> None:
    raw = _message(("caseload.xlsx", _xlsx_with_hidden_sheet(), "application/octet-stream"))
    part = _part(parse_message(raw), "attachment:caseload.xlsx")
    assert part.kind == "xlsx"
    assert "Amelia Hart" in part.text
    assert Flag.VERY_HIDDEN_SHEET in part.flags


def test_when_docx_inside_zip_inside_forwarded_message_then_path_names_every_level() -> None:
    bundle = _zip({"annex.docx": _docx("Annex: section 47 enquiry")})
    inner = _message(("bundle.zip", bundle, "application/zip"), body="see bundle")
    from email.message import EmailMessage
    from email.policy import SMTP

    outer = EmailMessage()
    outer["Subject"] = "Fwd"
    outer.set_content("forwarding")
    outer.add_attachment(inner, maintype="message", subtype="rfc822", filename="fwd.eml")
    document = parse_message(outer.as_bytes(policy=SMTP))
    part = _part(document, "attachment:fwd.eml/bundle.zip/annex.docx")
    assert "section 47 enquiry" in part.text


def test_when_docx_renamed_pdf_then_read_as_docx_and_flagged() -> None:
    raw = _message(("statement.pdf", _docx("Witness statement"), "application/pdf"))
    part = _part(parse_message(raw), "attachment:statement.pdf")
    assert part.kind == "docx"
    assert Flag.TYPE_MISMATCH in part.flags
    assert "Witness statement" in part.text


def test_when_corrupt_docx_then_uninspectable_and_rest_of_message_still_read() -> None:
    broken = _docx("x")[:300] + b"\0" * 100
    good = _docx("The good one")
    raw = _message(("broken.docx", broken, DOCX_TYPE), ("good.docx", good, DOCX_TYPE))
    document = parse_message(raw)
    assert _part(document, "attachment:broken.docx").kind == "uninspectable"
    assert "The good one" in _part(document, "attachment:good.docx").text
    assert zipfile.is_zipfile(io.BytesIO(good))
