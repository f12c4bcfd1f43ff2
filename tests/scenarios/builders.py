"""Build the scenario messages: plain mail, DOCX (comments, hidden text), ZIP, XLSX caseloads.

Everything here is fictional: Northshire County Council's invented cases from
config/example, NHS numbers from the 999 test range that is never issued, and
made-up names for the caseload spreadsheet.
"""

from __future__ import annotations

import email
import io
import itertools
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid

import docx
import openpyxl
from openpyxl.worksheet.worksheet import Worksheet

DOCX_TYPE = ("application", "vnd.openxmlformats-officedocument.wordprocessingml.document")
XLSX_TYPE = ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet")
ZIP_TYPE = ("application", "zip")
_counter = itertools.count(1)


def message(
    sender: str,
    subject: str,
    body: str,
    *,
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    attachments: Iterable[tuple[str, tuple[str, str], bytes]] = (),
) -> bytes:
    """One message as a mail client writes it. Bcc recipients are envelope-only: no header."""
    mail = EmailMessage()
    mail["From"] = sender
    if to:
        mail["To"] = ", ".join(to)
    if cc:
        mail["Cc"] = ", ".join(cc)
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(f"scenario{next(_counter)}", domain="northshire.gov.uk")
    for name, value in headers:
        mail[name] = value
    mail.set_content(body)
    for filename, (maintype, subtype), data in attachments:
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return mail.as_bytes(policy=SMTP_POLICY)


def forward(sender: str, subject: str, body: str, original: bytes, *, to: Sequence[str]) -> bytes:
    """A message that carries `original` as an attached message (message/rfc822)."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(f"scenario{next(_counter)}", domain="northshire.gov.uk")
    mail.set_content(body)
    mail.add_attachment(email.message_from_bytes(original, policy=SMTP_POLICY))
    return mail.as_bytes(policy=SMTP_POLICY)


def docx_bytes(
    paragraphs: Sequence[str],
    *,
    comment: tuple[str, str] | None = None,
    hidden: str | None = None,
) -> bytes:
    """A Word document. `comment` is (the paragraph it is anchored to, the comment's text);
    `hidden` is a run formatted as hidden text (Word's "vanish"), shown to nobody who opens it."""
    document = docx.Document()
    for text in paragraphs:
        paragraph = document.add_paragraph(text)
        if comment is not None and text == comment[0]:
            document.add_comment(paragraph.runs, text=comment[1], author="M Patel", initials="MP")
    if hidden is not None:
        run = document.add_paragraph("Summary: ").add_run(hidden)
        run.font.hidden = True
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def nhs_numbers(count: int) -> list[str]:
    """Valid (modulus 11) NHS numbers in the 999 test range, spaced 3-3-4."""
    found: list[str] = []
    for serial in range(1_000_000):
        digits = [9, 9, 9, *(int(d) for d in f"{serial:06d}")]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check == 10:
            continue  # no valid number with these nine digits
        number = "".join(map(str, digits)) + str(0 if check == 11 else check)
        found.append(f"{number[:3]} {number[3:6]} {number[6:]}")
        if len(found) == count:
            return found
    raise AssertionError("not enough test NHS numbers")


def is_valid_nhs_number(spaced: str) -> bool:
    digits = [int(d) for d in spaced.replace(" ", "")]
    check = 11 - sum(d * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True)) % 11
    return len(digits) == 10 and check != 10 and digits[9] == (0 if check == 11 else check)


_FIRST = ("Ava", "Ben", "Cara", "Dylan", "Ella", "Finn", "Grace", "Harry", "Isla", "Jack")
_LAST = ("Ashdown", "Birtle", "Corran", "Dunmore", "Elsby")


def children(count: int) -> Iterator[tuple[str, str, str]]:
    """(invented name, NHS number, date of birth dd/mm/yyyy) for `count` children."""
    names = (f"{first} {last}" for last in _LAST for first in _FIRST)
    for index, (name, number) in enumerate(zip(names, nhs_numbers(count), strict=False)):
        yield name, number, f"{1 + index % 28:02d}/{1 + index % 12:02d}/{2008 + index % 10}"


def caseload_rows(sheet: Worksheet, count: int) -> Worksheet:
    """Fill `sheet` with a team's caseload: name, NHS number, date of birth per child."""
    sheet.append(["Child", "NHS number", "Date of birth", "Allocated worker"])
    for name, number, dob in children(count):
        sheet.append([name, number, dob, "M Patel"])
    return sheet


def caseload_xlsx(count: int = 25) -> bytes:
    """A workbook with one sheet, the caseload of `count` children."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Caseload"
    caseload_rows(sheet, count)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
