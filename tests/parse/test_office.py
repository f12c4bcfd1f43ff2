"""Office and OpenDocument extractors: what they read, what they flag, what they refuse.

Fixtures are made with the real libraries (python-docx, openpyxl, python-pptx,
odfpy); features those libraries cannot write (tracked changes, footnotes,
legacy PowerPoint comments, encrypted ODF manifests, hostile XML) are added by
rewriting the generated package with zipfile, as a real file would carry them.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import io
import random
import re
import struct
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import docx
import openpyxl
import pptx
import pytest
from docx.enum.style import WD_STYLE_TYPE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree as lxml_etree
from odf import dc, meta, text
from odf.draw import Frame, Page, TextBox
from odf.office import Annotation
from odf.opendocument import (
    OpenDocumentPresentation,
    OpenDocumentSpreadsheet,
    OpenDocumentText,
)
from odf.presentation import Notes
from odf.style import (
    DrawingPageProperties,
    Footer,
    Header,
    MasterPage,
    PageLayout,
    Style,
    TableProperties,
)
from odf.table import Table, TableCell, TableColumn, TableRow
from openpyxl.comments import Comment
from openpyxl.workbook.defined_name import DefinedName
from pptx.util import Inches

from smtpguard.parse.extract import Extraction, Uninspectable, safexml
from smtpguard.parse.extract import docx as docx_extract
from smtpguard.parse.extract import odf as odf_extract
from smtpguard.parse.extract import pptx as pptx_extract
from smtpguard.parse.extract import xlsx as xlsx_extract
from smtpguard.parse.model import Flag, Limits

Extractor = Callable[[bytes, Limits], Extraction]
LIMITS = Limits()
W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
DOC_RELS = "word/_rels/document.xml.rels"
CONTENT_TYPES = "[Content_Types].xml"


# -- package surgery ------------------------------------------------------------------


def rezip(
    data: bytes,
    edit: dict[str, Callable[[bytes], bytes]] | None = None,
    add: dict[str, bytes] | None = None,
) -> bytes:
    """Copy a zip, editing some members and adding others, as a real editor would save it."""
    edit = edit or {}
    add = dict(add or {})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename in edit:
                body = edit[info.filename](body)
            if info.filename in add:
                body = add.pop(info.filename)
            compression = (
                zipfile.ZIP_STORED if info.filename == "mimetype" else zipfile.ZIP_DEFLATED
            )
            dst.writestr(info.filename, body, compress_type=compression)
        for name, body in add.items():
            dst.writestr(name, body, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def insert_before(marker: bytes, snippet: bytes) -> Callable[[bytes], bytes]:
    def change(body: bytes) -> bytes:
        assert marker in body, marker
        return body.replace(marker, snippet + marker, 1)

    return change


def replace_run(marker: str, replacement: str) -> Callable[[bytes], bytes]:
    """Replace the w:r holding `marker` text with raw WordprocessingML."""

    def change(body: bytes) -> bytes:
        pattern = re.compile(rb"<w:r>(?:(?!</w:r>).)*?" + marker.encode() + rb"</w:t></w:r>", re.S)
        new, count = pattern.subn(replacement.encode(), body, count=1)
        assert count == 1, marker
        return new

    return change


def chain(*changes: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def change(body: bytes) -> bytes:
        for step in changes:
            body = step(body)
        return body

    return change


def override(part: str, content_type: str) -> Callable[[bytes], bytes]:
    return insert_before(
        b"</Types>", f'<Override PartName="/{part}" ContentType="{content_type}"/>'.encode()
    )


def relationship(rel_id: str, rel_type: str, target: str) -> Callable[[bytes], bytes]:
    uri = f"http://schemas.openxmlformats.org/officeDocument/2006/relationships/{rel_type}"
    return insert_before(
        b"</Relationships>",
        f'<Relationship Id="{rel_id}" Type="{uri}" Target="{target}"/>'.encode(),
    )


def save(document: object) -> bytes:
    buffer = io.BytesIO()
    document.save(buffer)  # type: ignore[attr-defined]
    return buffer.getvalue()


# -- DOCX fixtures --------------------------------------------------------------------


def notes_part(kind: str, text_: str) -> bytes:
    """A footnotes.xml or endnotes.xml with the two separator notes Word writes, and one note."""
    tag = kind[:-1]  # footnote / endnote
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<w:{kind} xmlns:w="{W_NS}">'
        f'<w:{tag} w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:{tag}>'
        f'<w:{tag} w:type="continuationSeparator" w:id="0"><w:p><w:r><w:continuationSeparator/>'
        f"</w:r></w:p></w:{tag}>"
        f'<w:{tag} w:id="1"><w:p><w:r><w:t>{text_}</w:t></w:r></w:p></w:{tag}>'
        f"</w:{kind}>"
    ).encode()


@functools.cache
def docx_basic() -> bytes:
    d = docx.Document()
    d.add_heading("Case summary", level=1)
    d.add_paragraph("Body paragraph about the family.")
    table = d.add_table(rows=2, cols=2)
    for r, row in enumerate(table.rows):
        for c, cell in enumerate(row.cells):
            cell.text = f"r{r + 1}c{c + 1}"
    d.add_paragraph("FOOTNOTE_HERE")
    d.add_paragraph("ENDNOTE_HERE")
    d.add_paragraph("Closing paragraph.")
    section = d.sections[0]
    section.header.paragraphs[0].text = "Header OFFICIAL-SENSITIVE"
    section.footer.paragraphs[0].text = "Footer page text"
    return rezip(
        save(d),
        edit={
            "word/document.xml": chain(
                replace_run(
                    "FOOTNOTE_HERE",
                    '<w:r><w:t>See note</w:t></w:r><w:r><w:footnoteReference w:id="1"/></w:r>',
                ),
                replace_run(
                    "ENDNOTE_HERE",
                    '<w:r><w:t>See end</w:t></w:r><w:r><w:endnoteReference w:id="1"/></w:r>',
                ),
            ),
            DOC_RELS: chain(
                relationship("rIdFn", "footnotes", "footnotes.xml"),
                relationship("rIdEn", "endnotes", "endnotes.xml"),
            ),
            CONTENT_TYPES: chain(
                override(
                    "word/footnotes.xml",
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.footnotes+xml",
                ),
                override(
                    "word/endnotes.xml",
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.endnotes+xml",
                ),
            ),
        },
        add={
            "word/footnotes.xml": notes_part("footnotes", "Footnote names the school"),
            "word/endnotes.xml": notes_part("endnotes", "Endnote cites the source"),
        },
    )


@functools.cache
def docx_comment() -> bytes:
    d = docx.Document()
    paragraph = d.add_paragraph("Commented sentence.")
    d.add_comment(paragraph.runs, text="Reviewer: remove the address", author="Jo", initials="JB")
    return save(d)


TRACKED = (
    '<w:ins w:id="91" w:author="Jo" w:date="2024-01-01T00:00:00Z"><w:r>'
    "<w:t>inserted clause</w:t></w:r></w:ins>"
    '<w:del w:id="92" w:author="Jo" w:date="2024-01-01T00:00:00Z"><w:r>'
    '<w:delText xml:space="preserve">deleted NHS number 943 476 5919</w:delText></w:r></w:del>'
)


@functools.cache
def docx_tracked() -> bytes:
    d = docx.Document()
    d.add_paragraph("Before the change.")
    d.add_paragraph("TRACKED_HERE")
    return rezip(save(d), edit={"word/document.xml": replace_run("TRACKED_HERE", TRACKED)})


@functools.cache
def docx_hidden() -> bytes:
    d = docx.Document()
    paragraph = d.add_paragraph("Visible words. ")
    paragraph.add_run("secret hidden words").font.hidden = True
    return save(d)


@functools.cache
def docx_hidden_style() -> bytes:
    d = docx.Document()
    style = d.styles.add_style("Secret", WD_STYLE_TYPE.CHARACTER)
    style.font.hidden = True
    paragraph = d.add_paragraph("Visible. ")
    paragraph.add_run("hidden through a style", style="Secret")
    return save(d)


CUSTOM_XML = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/custom-properties" '
    b'xmlns:vt="http://schemas.openxmlformats.org/officeDocument/2006/docPropsVTypes">'
    b'<property fmtid="{D5CDD505-2E9C-101B-9397-08002B2CF9AE}" pid="2" '
    b'name="MSIP_Label_1234_Name"><vt:lpwstr>OFFICIAL-SENSITIVE</vt:lpwstr></property>'
    b"</Properties>"
)


def with_properties(data: bytes, company: str) -> bytes:
    return rezip(
        data,
        edit={
            "docProps/app.xml": insert_before(
                b"</Properties>", f"<Company>{company}</Company>".encode()
            ),
            "_rels/.rels": relationship("rIdCustom", "custom-properties", "docProps/custom.xml"),
            CONTENT_TYPES: override(
                "docProps/custom.xml",
                "application/vnd.openxmlformats-officedocument.custom-properties+xml",
            ),
        },
        add={"docProps/custom.xml": CUSTOM_XML},
    )


@functools.cache
def docx_properties() -> bytes:
    d = docx.Document()
    d.add_paragraph("Body.")
    props = d.core_properties
    props.title = "Case review"
    props.subject = "Child protection conference"
    props.author = "Jo Bloggs"
    props.keywords = "MARAC"
    props.comments = "Draft for panel"
    return with_properties(save(d), "Borough Council")


@functools.cache
def docx_macro() -> bytes:
    return rezip(docx_basic(), add={"word/vbaProject.bin": b"\xd0\xcf\x11\xe0 fake VBA project"})


TEXTBOX = (
    "<w:r><mc:AlternateContent>"
    '<mc:Choice Requires="wps"><w:drawing><wp:anchor>'
    '<a:graphic xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"><a:graphicData>'
    "<wps:wsp>"
    "<wps:txbx><w:txbxContent><w:p><w:r><w:t>Text box words</w:t></w:r></w:p></w:txbxContent>"
    "</wps:txbx></wps:wsp></a:graphicData></a:graphic></wp:anchor></w:drawing></mc:Choice>"
    '<mc:Fallback><w:pict><v:shape xmlns:v="urn:schemas-microsoft-com:vml"><v:textbox>'
    "<w:txbxContent><w:p><w:r>"
    "<w:t>Text box words</w:t></w:r></w:p></w:txbxContent></v:textbox></v:shape></w:pict>"
    "</mc:Fallback></mc:AlternateContent></w:r>"
)


@functools.cache
def docx_textbox() -> bytes:
    d = docx.Document()
    d.add_paragraph("TEXTBOX_HERE")
    return rezip(save(d), edit={"word/document.xml": replace_run("TEXTBOX_HERE", TEXTBOX)})


# -- XLSX fixtures --------------------------------------------------------------------


@functools.cache
def xlsx_basic() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Clients"
    ws.append(["Name", "NHS number", "Date of birth", "Balance", "Seen", "Visit"])
    ws.append(["Alice Smith", 9434765919, dt.date(1985, 4, 12), 3.14, True, None])
    ws.append(["Bob Jones", 1234567881, dt.date(2001, 12, 1), 0.1, False, None])
    ws["F2"] = dt.datetime(2020, 1, 2, 13, 45)
    wb.properties.title = "Client list"
    return rezip(
        save(wb),
        edit={
            "xl/worksheets/sheet1.xml": insert_before(
                b"</row>", b'<c r="G1" t="inlineStr"><is><t>inline words</t></is></c>'
            )
        },
    )


@functools.cache
def xlsx_hidden_sheets() -> bytes:
    wb = openpyxl.Workbook()
    wb.active["A1"] = "front sheet"
    hidden = wb.create_sheet("Lookup")
    hidden.sheet_state = "hidden"
    hidden["A1"] = "hidden sheet data"
    very = wb.create_sheet("Secret")
    very.sheet_state = "veryHidden"
    very["A1"] = "very hidden sheet data"
    return save(wb)


@functools.cache
def xlsx_hidden_rows_cols() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["name", "ni number", "note"])
    ws.append(["Carol", "QQ123456C", "row two"])
    ws.append(["Dan", "QQ654321A", "hidden row"])
    ws.row_dimensions[3].hidden = True
    ws.column_dimensions["B"].hidden = True
    return save(wb)


@functools.cache
def xlsx_comment() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws["A1"] = "Value"
    ws["A1"].comment = Comment("Check the date of birth", "Jo")
    return save(wb)


THREADED = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<ThreadedComments xmlns="http://schemas.microsoft.com/office/spreadsheetml/2018/threadedcomments">'
    b'<threadedComment ref="B2" dT="2024-01-01T00:00:00.00" personId="{0}" id="{1}">'
    b"<text>Threaded: is this the right family?</text></threadedComment></ThreadedComments>"
)


@functools.cache
def xlsx_threaded_comment() -> bytes:
    wb = openpyxl.Workbook()
    wb.active["B2"] = "value"
    return rezip(
        save(wb),
        add={
            "xl/threadedComments/threadedComment1.xml": THREADED,
            "xl/worksheets/_rels/sheet1.xml.rels": (
                b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                b'<Relationship Id="rIdTc" Type="http://schemas.microsoft.com/office/2017/10/'
                b'relationships/threadedComment" '
                b'Target="../threadedComments/threadedComment1.xml"/>'
                b"</Relationships>"
            ),
        },
    )


S_NS = b"http://schemas.openxmlformats.org/spreadsheetml/2006/main"
PIVOT_DEFINITION = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><pivotCacheDefinition xmlns="'
    + S_NS
    + b'" recordCount="2"><cacheSource type="worksheet"><worksheetSource ref="A1:B3" '
    b'sheet="Deleted"/></cacheSource><cacheFields count="2"><cacheField name="Client">'
    b'<sharedItems><s v="Fiona Green"/><s v="Gary Hill"/></sharedItems></cacheField>'
    b'<cacheField name="NHS"><sharedItems containsNumber="1"/></cacheField></cacheFields>'
    b"</pivotCacheDefinition>"
)
PIVOT_RECORDS = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><pivotCacheRecords xmlns="'
    + S_NS
    + b'" count="2"><r><x v="0"/><n v="9434765919"/></r><r><x v="1"/><n v="4010232137"/></r>'
    b"</pivotCacheRecords>"
)


@functools.cache
def xlsx_pivot_cache() -> bytes:
    wb = openpyxl.Workbook()
    wb.active["A1"] = "summary only"
    return rezip(
        save(wb),
        add={
            "xl/pivotCache/pivotCacheDefinition1.xml": PIVOT_DEFINITION,
            "xl/pivotCache/pivotCacheRecords1.xml": PIVOT_RECORDS,
            "xl/pivotCache/_rels/pivotCacheDefinition1.xml.rels": (
                b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
                b'2006/relationships/pivotCacheRecords" Target="pivotCacheRecords1.xml"/>'
                b"</Relationships>"
            ),
        },
    )


@functools.cache
def xlsx_defined_name() -> bytes:
    wb = openpyxl.Workbook()
    wb.active["A1"] = "x"
    wb.defined_names["ClientList"] = DefinedName("ClientList", attr_text="Sheet!$A$1:$B$3")
    return save(wb)


@functools.cache
def xlsx_invisible_format() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws["A1"] = "shown"
    ws["A2"] = "invisible value"
    ws["A2"].number_format = ";;;"
    return save(wb)


@functools.cache
def xlsx_macro() -> bytes:
    return rezip(xlsx_basic(), add={"xl/vbaProject.bin": b"\xd0\xcf\x11\xe0 fake VBA project"})


@functools.cache
def xlsx_big() -> bytes:
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("Register")
    ws.append(["id", "name", "nhs", "dob", "amount", "status"])
    for i in range(50_000):
        ws.append([i, f"Person {i}", 9434765919 + i, dt.date(1980, 1, 1), 3.25, "open"])
    return save(wb)


# -- PPTX fixtures --------------------------------------------------------------------


def deck(hide_second: bool = False) -> bytes:
    prs = pptx.Presentation()
    first = prs.slides.add_slide(prs.slide_layouts[1])
    first.shapes.title.text = "First slide title"
    first.placeholders[1].text = "First bullet"
    first.notes_slide.notes_text_frame.text = "Speaker notes mention the address"
    second = prs.slides.add_slide(prs.slide_layouts[5])
    second.shapes.title.text = "Second slide title"
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(2)).table
    table.cell(0, 0).text = "t00"
    table.cell(0, 1).text = "t01"
    table.cell(1, 0).text = "t10"
    if hide_second:
        second._element.set("show", "0")
    # python-pptx cannot add shapes to a master; a marking text box is added to its XML.
    return rezip(
        save(prs),
        edit={"ppt/slideMasters/slideMaster1.xml": insert_before(b"</p:spTree>", MASTER_MARKING)},
    )


MASTER_MARKING = (
    b'<p:sp><p:nvSpPr><p:cNvPr id="99" name="Marking"/><p:cNvSpPr txBox="1"/><p:nvPr/>'
    b"</p:nvSpPr><p:spPr/><p:txBody><a:bodyPr/><a:p><a:r><a:t>OFFICIAL on the master</a:t>"
    b"</a:r></a:p></p:txBody></p:sp>"
)


@functools.cache
def pptx_basic() -> bytes:
    return deck()


@functools.cache
def pptx_hidden() -> bytes:
    return deck(hide_second=True)


LEGACY_PPT_COMMENT = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<p:cmLst xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main">'
    b'<p:cm authorId="0" dt="2024-01-01T00:00:00.000" idx="1"><p:pos x="10" y="10"/>'
    b"<p:text>Slide comment: drop this figure</p:text></p:cm></p:cmLst>"
)


@functools.cache
def pptx_comment() -> bytes:
    return rezip(
        deck(),
        edit={
            "ppt/slides/_rels/slide1.xml.rels": relationship(
                "rIdCm", "comments", "../comments/comment1.xml"
            ),
            CONTENT_TYPES: override(
                "ppt/comments/comment1.xml",
                "application/vnd.openxmlformats-officedocument.presentationml.comments+xml",
            ),
        },
        add={"ppt/comments/comment1.xml": LEGACY_PPT_COMMENT},
    )


@functools.cache
def pptx_macro() -> bytes:
    return rezip(deck(), add={"ppt/vbaProject.bin": b"\xd0\xcf\x11\xe0 fake VBA project"})


# -- ODF fixtures ---------------------------------------------------------------------


def odf_bytes(document: object) -> bytes:
    buffer = io.BytesIO()
    document.write(buffer)  # type: ignore[attr-defined]
    return buffer.getvalue()


def para(value: str) -> text.P:
    return text.P(text=value)


@functools.cache
def odt_basic() -> bytes:
    d = OpenDocumentText()
    layout = PageLayout(name="pl1")
    d.automaticstyles.addElement(layout)
    master = MasterPage(name="Standard", pagelayoutname=layout)
    header = Header()
    header.addElement(para("ODT header OFFICIAL"))
    footer = Footer()
    footer.addElement(para("ODT footer text"))
    master.addElement(header)
    master.addElement(footer)
    d.masterstyles.addElement(master)
    d.text.addElement(text.H(outlinelevel=1, text="Referral"))
    body = text.P(text="Child named in")
    body.addElement(text.S(c=3))
    body.addText("the referral")
    d.text.addElement(body)
    table = Table(name="Contacts")
    for values in (("c1", "c2"), ("c3", "c4")):
        row = TableRow()
        for value in values:
            cell = TableCell()
            cell.addElement(para(value))
            row.addElement(cell)
        table.addElement(row)
    d.text.addElement(table)
    d.meta.addElement(dc.Title(text="Referral form"))
    d.meta.addElement(meta.UserDefined(name="Classification", text="OFFICIAL-SENSITIVE"))
    return odf_bytes(d)


@functools.cache
def odt_annotation() -> bytes:
    d = OpenDocumentText()
    paragraph = text.P(text="Annotated sentence ")
    note = Annotation()
    note.addElement(dc.Creator(text="Jo"))
    note.addElement(para("Annotation: check consent"))
    paragraph.addElement(note)
    paragraph.addText("continues")
    d.text.addElement(paragraph)
    return odf_bytes(d)


ODF_TRACKED = (
    b'<text:tracked-changes><text:changed-region text:id="ct1" xml:id="ct1"><text:deletion>'
    b"<office:change-info><dc:creator>Jo</dc:creator><dc:date>2024-01-01T00:00:00</dc:date>"
    b"</office:change-info><text:p>deleted sentence naming the father</text:p></text:deletion>"
    b"</text:changed-region></text:tracked-changes>"
)


@functools.cache
def odt_tracked() -> bytes:
    d = OpenDocumentText()
    d.text.addElement(para("TRACK_HERE"))
    data = odf_bytes(d)

    def change(body: bytes) -> bytes:
        body = re.sub(rb"<office:text([^>]*)>", rb"<office:text\1>" + ODF_TRACKED, body, count=1)
        return body.replace(
            b"TRACK_HERE", b'Kept text<text:change text:change-id="ct1"/> after change'
        )

    return rezip(data, edit={"content.xml": change})


@functools.cache
def odt_hidden_section() -> bytes:
    d = OpenDocumentText()
    d.text.addElement(para("Visible paragraph"))
    section = text.Section(name="Hidden1", display="none")
    section.addElement(para("hidden section text"))
    d.text.addElement(section)
    return odf_bytes(d)


@functools.cache
def odt_macro() -> bytes:
    return rezip(
        odt_basic(),
        add={"Basic/Standard/Module1.xml": b"<script:module>Sub Main\nEnd Sub</script:module>"},
    )


@functools.cache
def odt_encrypted() -> bytes:
    encryption = (
        b'<manifest:encryption-data manifest:checksum-type="SHA1/1K" manifest:checksum="AAAA">'
        b'<manifest:algorithm manifest:algorithm-name="Blowfish CFB" '
        b'manifest:initialisation-vector="AAAA"/>'
        b'<manifest:key-derivation manifest:key-derivation-name="PBKDF2" '
        b'manifest:iteration-count="1024" manifest:salt="AAAA"/></manifest:encryption-data>'
    )

    def change(body: bytes) -> bytes:
        return re.sub(
            rb'(<manifest:file-entry[^>]*manifest:full-path="content.xml"[^>]*?)/>',
            rb"\1>" + encryption + b"</manifest:file-entry>",
            body,
            count=1,
        )

    return rezip(
        odt_basic(),
        edit={"META-INF/manifest.xml": change},
        add={"content.xml": random.Random(7).randbytes(2000)},
    )


def ods(build: Callable[[OpenDocumentSpreadsheet], None]) -> bytes:
    d = OpenDocumentSpreadsheet()
    build(d)
    return odf_bytes(d)


def row_of(*values: str | float, **attrs: str) -> TableRow:
    row = TableRow(**attrs)
    for value in values:
        if isinstance(value, float):
            cell = TableCell(valuetype="float", value=value)
            cell.addElement(para(f"{value:g}"))
        else:
            cell = TableCell(valuetype="string")
            cell.addElement(para(value))
        row.addElement(cell)
    return row


@functools.cache
def ods_basic() -> bytes:
    def build(d: OpenDocumentSpreadsheet) -> None:
        sheet = Table(name="Visits")
        sheet.addElement(row_of("name", "amount"))
        sheet.addElement(row_of("Erin", 12.5))
        cell = TableCell(valuetype="string")
        cell.addElement(para("with note"))
        note = Annotation()
        note.addElement(para("Cell annotation text"))
        cell.addElement(note)
        row = TableRow()
        row.addElement(cell)
        sheet.addElement(row)
        d.spreadsheet.addElement(sheet)

    return ods(build)


@functools.cache
def ods_hidden() -> bytes:
    def build(d: OpenDocumentSpreadsheet) -> None:
        hidden_table = Style(name="taHidden", family="table")
        hidden_table.addElement(TableProperties(display="false"))
        d.automaticstyles.addElement(hidden_table)
        sheet = Table(name="Main")
        sheet.addElement(TableColumn())
        sheet.addElement(TableColumn(visibility="collapse"))
        sheet.addElement(row_of("shown", "in hidden column"))
        sheet.addElement(row_of("collapsed row text", "x", visibility="collapse"))
        d.spreadsheet.addElement(sheet)
        secret = Table(name="Secret", stylename=hidden_table)
        secret.addElement(row_of("hidden sheet cell"))
        d.spreadsheet.addElement(secret)

    return ods(build)


@functools.cache
def odp_basic() -> bytes:
    d = OpenDocumentPresentation()
    layout = PageLayout(name="pl1")
    d.automaticstyles.addElement(layout)
    master = MasterPage(name="Default", pagelayoutname=layout)
    d.masterstyles.addElement(master)
    hidden = Style(name="dpHidden", family="drawing-page")
    hidden.addElement(DrawingPageProperties(visibility="hidden"))
    d.automaticstyles.addElement(hidden)

    def frame(value: str) -> Frame:
        box = Frame(width="10cm", height="2cm", x="1cm", y="1cm")
        inner = TextBox()
        inner.addElement(para(value))
        box.addElement(inner)
        return box

    first = Page(name="p1", masterpagename=master)
    first.addElement(frame("ODP first slide"))
    notes = Notes()
    notes.addElement(frame("ODP speaker notes"))
    first.addElement(notes)
    second = Page(name="p2", masterpagename=master, stylename=hidden)
    second.addElement(frame("ODP hidden slide text"))
    d.presentation.addElement(first)
    d.presentation.addElement(second)
    return odf_bytes(d)


# -- the table of readable fixtures ---------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    extract: Extractor
    build: Callable[[], bytes]
    fragments: tuple[str, ...]
    flags: frozenset[str] = frozenset()
    absent: tuple[str, ...] = ()


CASES = [
    Case(
        "docx_has_body_table_header_footer_and_notes_then_all_text_and_no_flags",
        docx_extract.extract,
        docx_basic,
        (
            "Case summary\nBody paragraph about the family.\nr1c1\tr1c2\nr2c1\tr2c2\n",
            "See note",
            "Header OFFICIAL-SENSITIVE",
            "Footer page text",
            "Footnote names the school",
            "Endnote cites the source",
            "Closing paragraph.",
        ),
    ),
    Case(
        "docx_has_comment_then_comment_text_and_flag",
        docx_extract.extract,
        docx_comment,
        ("Commented sentence.", "Reviewer: remove the address"),
        frozenset({Flag.COMMENTS}),
    ),
    Case(
        "docx_has_tracked_deletion_then_deleted_text_and_flag",
        docx_extract.extract,
        docx_tracked,
        ("inserted clause", "deleted NHS number 943 476 5919"),
        frozenset({Flag.TRACKED_CHANGES}),
    ),
    Case(
        "docx_has_vanish_run_then_hidden_text_and_flag",
        docx_extract.extract,
        docx_hidden,
        ("Visible words. secret hidden words",),
        frozenset({Flag.HIDDEN_TEXT}),
    ),
    Case(
        "docx_has_hidden_character_style_then_text_and_flag",
        docx_extract.extract,
        docx_hidden_style,
        ("hidden through a style",),
        frozenset({Flag.HIDDEN_TEXT}),
    ),
    Case(
        "docx_has_properties_then_name_value_lines",
        docx_extract.extract,
        docx_properties,
        (
            "title: Case review",
            "subject: Child protection conference",
            "creator: Jo Bloggs",
            "keywords: MARAC",
            "description: Draft for panel",
            "company: Borough Council",
            "MSIP_Label_1234_Name: OFFICIAL-SENSITIVE",
        ),
    ),
    Case(
        "docm_has_vba_project_then_macros_flag",
        docx_extract.extract,
        docx_macro,
        ("Body paragraph about the family.",),
        frozenset({Flag.MACROS}),
    ),
    Case(
        "xlsx_has_strings_numbers_dates_then_cells_as_text",
        xlsx_extract.extract,
        xlsx_basic,
        (
            "sheet: Clients\nName\tNHS number\tDate of birth\tBalance\tSeen\tVisit\tinline words\n",
            "Alice Smith\t9434765919\t1985-04-12\t3.14\tTRUE\t2020-01-02 13:45:00\n",
            "Bob Jones\t1234567881\t2001-12-01\t0.1\tFALSE",
            "title: Client list",
        ),
    ),
    Case(
        "xlsx_has_hidden_and_very_hidden_sheets_then_both_read_and_flagged",
        xlsx_extract.extract,
        xlsx_hidden_sheets,
        ("sheet: Lookup\nhidden sheet data", "sheet: Secret\nvery hidden sheet data"),
        frozenset({Flag.HIDDEN_SHEET, Flag.VERY_HIDDEN_SHEET}),
    ),
    Case(
        "xlsx_has_hidden_row_and_column_then_cells_read_and_flagged",
        xlsx_extract.extract,
        xlsx_hidden_rows_cols,
        ("Carol\tQQ123456C\trow two", "Dan\tQQ654321A\thidden row"),
        frozenset({Flag.HIDDEN_ROWS, Flag.HIDDEN_COLUMNS}),
    ),
    Case(
        "xlsx_has_cell_comment_then_comment_text_and_flag",
        xlsx_extract.extract,
        xlsx_comment,
        ("comment A1: Check the date of birth",),
        frozenset({Flag.COMMENTS}),
    ),
    Case(
        "xlsx_has_threaded_comment_then_comment_text_and_flag",
        xlsx_extract.extract,
        xlsx_threaded_comment,
        ("comment B2: Threaded: is this the right family?",),
        frozenset({Flag.COMMENTS}),
    ),
    Case(
        "xlsx_has_pivot_cache_then_cached_source_rows",
        xlsx_extract.extract,
        xlsx_pivot_cache,
        ("Client\tNHS\nFiona Green\t9434765919\nGary Hill\t4010232137",),
    ),
    Case(
        "xlsx_has_defined_name_then_name_and_value",
        xlsx_extract.extract,
        xlsx_defined_name,
        ("defined name ClientList: Sheet!$A$1:$B$3",),
    ),
    Case(
        "xlsx_has_invisible_number_format_then_value_and_hidden_text_flag",
        xlsx_extract.extract,
        xlsx_invisible_format,
        ("invisible value",),
        frozenset({Flag.HIDDEN_TEXT}),
    ),
    Case(
        "xlsm_has_vba_project_then_macros_flag",
        xlsx_extract.extract,
        xlsx_macro,
        ("Alice Smith",),
        frozenset({Flag.MACROS}),
    ),
    Case(
        "pptx_has_two_slides_notes_and_table_then_all_in_order",
        pptx_extract.extract,
        pptx_basic,
        (
            "slide: 1\nFirst slide title\nFirst bullet\nnotes: 1\nSpeaker notes mention the address"
            "\nslide: 2\nSecond slide title\nt00\tt01\nt10\n",
            "OFFICIAL on the master",
        ),
        absent=("Click to edit Master title style",),
    ),
    Case(
        "pptx_has_hidden_slide_then_text_and_hidden_flag",
        pptx_extract.extract,
        pptx_hidden,
        ("Second slide title",),
        frozenset({Flag.HIDDEN_TEXT}),
    ),
    Case(
        "pptx_has_comment_then_comment_text_and_flag",
        pptx_extract.extract,
        pptx_comment,
        ("comment: Slide comment: drop this figure",),
        frozenset({Flag.COMMENTS}),
    ),
    Case(
        "pptm_has_vba_project_then_macros_flag",
        pptx_extract.extract,
        pptx_macro,
        ("First slide title",),
        frozenset({Flag.MACROS}),
    ),
    Case(
        "odt_has_heading_body_table_header_footer_meta_then_all_text",
        odf_extract.extract,
        odt_basic,
        (
            "Referral\nChild named in   the referral\nc1\tc2\nc3\tc4\n",
            "ODT header OFFICIAL",
            "ODT footer text",
            "title: Referral form",
            "Classification: OFFICIAL-SENSITIVE",
        ),
    ),
    Case(
        "odt_has_annotation_then_annotation_text_and_flag",
        odf_extract.extract,
        odt_annotation,
        ("Annotated sentence continues", "Annotation: check consent"),
        frozenset({Flag.COMMENTS}),
        absent=("Jo",),
    ),
    Case(
        "odt_has_tracked_deletion_then_deleted_text_and_flag",
        odf_extract.extract,
        odt_tracked,
        ("deleted sentence naming the father", "Kept text after change"),
        frozenset({Flag.TRACKED_CHANGES}),
    ),
    Case(
        "odt_has_hidden_section_then_text_and_flag",
        odf_extract.extract,
        odt_hidden_section,
        ("Visible paragraph", "hidden section text"),
        frozenset({Flag.HIDDEN_TEXT}),
    ),
    Case(
        "odt_has_basic_macro_then_macros_flag",
        odf_extract.extract,
        odt_macro,
        ("Referral",),
        frozenset({Flag.MACROS}),
    ),
    Case(
        "ods_has_sheet_numbers_and_cell_annotation_then_rows_and_flag",
        odf_extract.extract,
        ods_basic,
        ("sheet: Visits\nname\tamount\nErin\t12.5\n", "with note Cell annotation text"),
        frozenset({Flag.COMMENTS}),
    ),
    Case(
        "ods_has_collapsed_row_column_and_hidden_sheet_then_read_and_flagged",
        odf_extract.extract,
        ods_hidden,
        (
            "sheet: Main\nshown\tin hidden column\ncollapsed row text\tx\n",
            "sheet: Secret\nhidden sheet cell",
        ),
        frozenset({Flag.HIDDEN_ROWS, Flag.HIDDEN_COLUMNS, Flag.HIDDEN_SHEET}),
    ),
    Case(
        "odp_has_slides_notes_and_hidden_slide_then_all_text_and_flag",
        odf_extract.extract,
        odp_basic,
        (
            "slide: 1\nODP first slide\nnotes: 1\nODP speaker notes\nslide: 2\n"
            "ODP hidden slide text",
        ),
        frozenset({Flag.HIDDEN_TEXT}),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_when_readable_fixture_then_expected_text_and_flags(case: Case) -> None:
    result = case.extract(case.build(), LIMITS)
    for fragment in case.fragments:
        assert fragment in result.text, f"{fragment!r} missing from:\n{result.text}"
    for fragment in case.absent:
        assert fragment not in result.text
    assert result.flags == case.flags


def test_when_docx_text_box_has_matching_fallback_then_text_once() -> None:
    result = docx_extract.extract(docx_textbox(), LIMITS)
    assert result.text.count("Text box words") == 1


def test_when_docx_fallback_differs_from_choice_then_both_kept() -> None:
    body = TEXTBOX.replace(
        "<w:t>Text box words</w:t></w:r></w:p></w:txbxContent></v:textbox>",
        "<w:t>Only in fallback</w:t></w:r></w:p></w:txbxContent></v:textbox>",
    )
    d = docx.Document()
    d.add_paragraph("TEXTBOX_HERE")
    data = rezip(save(d), edit={"word/document.xml": replace_run("TEXTBOX_HERE", body)})
    result = docx_extract.extract(data, LIMITS)
    assert "Text box words" in result.text
    assert "Only in fallback" in result.text


def test_when_docx_has_embedded_workbook_then_returned_as_embedded() -> None:
    workbook = xlsx_basic()
    data = rezip(docx_basic(), add={"word/embeddings/Microsoft_Excel_Worksheet.xlsx": workbook})
    result = docx_extract.extract(data, LIMITS)
    assert [e.name for e in result.embedded] == ["word/embeddings/Microsoft_Excel_Worksheet.xlsx"]
    assert result.embedded[0].data == workbook
    assert "Alice Smith" in xlsx_extract.extract(result.embedded[0].data, LIMITS).text


def test_when_odt_is_password_protected_then_uninspectable() -> None:
    with pytest.raises(Uninspectable) as caught:
        odf_extract.extract(odt_encrypted(), LIMITS)
    assert caught.value.reason == "password-protected OpenDocument file"


def test_when_text_exceeds_limit_then_cut_at_limit() -> None:
    result = xlsx_extract.extract(xlsx_basic(), Limits(max_text_chars=40))
    assert len(result.text) == 40
    assert result.text.startswith("sheet: Clients\nName")


# -- size and speed -------------------------------------------------------------------


def _uncompressed(data: bytes) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return sum(i.file_size for i in z.infolist())


def test_when_xlsx_has_50000_rows_then_read_under_5_seconds() -> None:
    data = xlsx_big()
    start = time.perf_counter()
    result = xlsx_extract.extract(data, LIMITS)
    elapsed = time.perf_counter() - start
    lines = result.text.split("\n")
    assert lines[0] == "sheet: Register"
    assert lines[2] == "0\tPerson 0\t9434765919\t1980-01-01\t3.25\topen"
    assert "49999\tPerson 49999\t9434815918\t1980-01-01\t3.25\topen" in result.text
    print(
        f"\nxlsx 50,000 rows: {elapsed:.2f} s, {len(data) / elapsed / 1e6:.1f} MB/s of file, "
        f"{_uncompressed(data) / elapsed / 1e6:.1f} MB/s of XML"
    )
    assert elapsed < 5


@functools.cache
def docx_big() -> bytes:
    d = docx.Document()
    for i in range(200):
        d.add_paragraph(f"Paragraph {i} about the child and the family, with some detail. " * 3)
    table = d.add_table(rows=20, cols=4)
    for row in table.rows:
        for cell in row.cells:
            cell.text = "cell text"
    data = save(d)

    def grow(body: bytes) -> bytes:
        start = body.index(b"<w:body>") + len(b"<w:body>")
        end = body.index(b"<w:sectPr")
        copies = [
            body[start:end].replace(b"with some detail", f"copy {k} detail".encode())
            for k in range(200)
        ]
        return body[:start] + b"".join(copies) + body[end:]

    return rezip(data, edit={"word/document.xml": grow})


def test_when_docx_is_large_then_read_quickly() -> None:
    data = docx_big()
    start = time.perf_counter()
    result = docx_extract.extract(data, LIMITS)
    elapsed = time.perf_counter() - start
    assert result.text.count("Paragraph 199 about the child") == 3 * 200
    print(
        f"\ndocx {_uncompressed(data) / 1e6:.1f} MB of XML: {elapsed:.2f} s, "
        f"{len(data) / elapsed / 1e6:.1f} MB/s of file, "
        f"{_uncompressed(data) / elapsed / 1e6:.1f} MB/s of XML"
    )
    assert elapsed < 5


# -- hostile input --------------------------------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE w:document [\n<!ENTITY lol "lol">\n'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'.encode()
        for i in range(1, 10)
    )
    + f'<!ENTITY x "&lol9;">]>\n<w:document xmlns:w="{W_NS}"><w:body><w:p><w:r><w:t>&lol9;'
    "</w:t></w:r></w:p></w:body></w:document>".encode()
)
XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    + f'<w:document xmlns:w="{W_NS}"><w:body><w:p><w:r><w:t>&xxe;</w:t></w:r></w:p>'
    "</w:body></w:document>".encode()
)
PARAMETER_XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE w:document [<!ENTITY % pe SYSTEM "file:///etc/passwd">'
    b" %pe;]>\n"
    + f'<w:document xmlns:w="{W_NS}"><w:body><w:p><w:r><w:t>hello</w:t></w:r></w:p>'
    "</w:body></w:document>".encode()
)


@pytest.mark.parametrize(
    "payload",
    [BILLION_LAUGHS, XXE, PARAMETER_XXE],
    ids=["billion_laughs", "external_entity", "parameter_entity"],
)
def test_when_document_xml_declares_entities_then_uninspectable_and_nothing_leaks(
    payload: bytes,
) -> None:
    data = rezip(docx_basic(), edit={"word/document.xml": lambda _body: payload})
    start = time.perf_counter()
    with pytest.raises(Uninspectable) as caught:
        docx_extract.extract(data, LIMITS)
    assert time.perf_counter() - start < 1
    assert "entities" in caught.value.reason
    assert "root:" not in caught.value.reason


def test_when_doctype_is_external_only_then_parsed_without_fetching() -> None:
    # Old OpenOffice manifests carry a DOCTYPE with no internal subset; it must parse, unfetched.
    xml = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd"><r><a>ok</a></r>'
    root = safexml.parse(xml, "manifest.xml")
    assert [e.text for e in root.iter() if e.text] == ["ok"]
    undeclared = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd"><r>&x;</r>'
    try:
        root = safexml.parse(undeclared, "part.xml")
    except Uninspectable as exc:
        assert "root:" not in exc.reason
    else:
        assert not any("root:" in (e.text or "") for e in root.iter())


def test_when_xml_part_is_corrupt_then_uninspectable_names_the_part() -> None:
    data = rezip(docx_basic(), edit={"word/document.xml": lambda body: body[: len(body) // 2]})
    with pytest.raises(Uninspectable) as caught:
        docx_extract.extract(data, LIMITS)
    assert "word/document.xml is not well-formed XML" in caught.value.reason


def zeros_member(template: bytes, member: str, size: int) -> bytes:
    """Replace one member with `size` zero bytes, written streaming so no big buffer exists."""
    out = io.BytesIO()
    chunk = bytes(1024 * 1024)
    with (
        zipfile.ZipFile(io.BytesIO(template)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        for info in src.infolist():
            if info.filename == member:
                with dst.open(member, "w", force_zip64=True) as stream:
                    for _ in range(size // len(chunk)):
                        stream.write(chunk)
            else:
                dst.writestr(info.filename, src.read(info))
    return out.getvalue()


@functools.cache
def docx_bomb_50mb() -> bytes:
    return zeros_member(docx_basic(), "word/document.xml", 50 * 1024 * 1024)


def test_when_member_is_over_part_limit_then_uninspectable_before_decompressing() -> None:
    data = docx_bomb_50mb()
    assert len(data) < 1_000_000
    limits = Limits(max_part_bytes=10 * 1024 * 1024)
    start = time.perf_counter()
    with pytest.raises(Uninspectable) as caught:
        docx_extract.extract(data, limits)
    assert time.perf_counter() - start < 0.5
    assert "over the limit" in caught.value.reason
    assert "word/document.xml" in caught.value.reason


def test_when_member_compression_ratio_is_extreme_then_uninspectable_as_zip_bomb() -> None:
    data = zeros_member(docx_basic(), "word/document.xml", 5 * 1024 * 1024)
    with pytest.raises(Uninspectable) as caught:
        docx_extract.extract(data, LIMITS)
    assert "zip bomb" in caught.value.reason


def test_when_zip_header_understates_size_then_bounded_read_refuses() -> None:
    data = bytearray(docx_basic())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("word/document.xml")
    lie = 100
    # Local header: uncompressed size at offset 22.
    struct.pack_into("<I", data, info.header_offset + 22, lie)
    # Central directory entry: uncompressed size at offset 24.
    name = info.filename.encode()
    position = 0
    while True:
        position = data.index(b"PK\x01\x02", position)
        name_length = struct.unpack_from("<H", data, position + 28)[0]
        if bytes(data[position + 46 : position + 46 + name_length]) == name:
            struct.pack_into("<I", data, position + 24, lie)
            break
        position += 4
    with pytest.raises(Uninspectable) as caught:
        docx_extract.extract(bytes(data), LIMITS)
    assert "word/document.xml" in caught.value.reason


def test_when_package_has_too_many_members_then_uninspectable() -> None:
    with pytest.raises(Uninspectable) as caught:
        docx_extract.extract(docx_basic(), Limits(max_archive_members=5))
    assert "more than the limit of 5" in caught.value.reason


def test_when_main_part_is_missing_then_uninspectable() -> None:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(docx_basic())) as src,
        zipfile.ZipFile(out, "w") as dst,
    ):
        for info in src.infolist():
            if info.filename != "word/document.xml":
                dst.writestr(info, src.read(info))
    with pytest.raises(Uninspectable) as caught:
        docx_extract.extract(out.getvalue(), LIMITS)
    assert (
        caught.value.reason == "not a valid Word document file (the main document part is missing)"
    )


FORMATS: list[tuple[str, Extractor, Callable[[], bytes]]] = [
    ("docx", docx_extract.extract, docx_basic),
    ("xlsx", xlsx_extract.extract, xlsx_basic),
    ("pptx", pptx_extract.extract, pptx_basic),
    ("odf", odf_extract.extract, odt_basic),
]


def _corrupt(data: bytes) -> bytes:
    damaged = bytearray(data)
    rng = random.Random(1)
    for _ in range(200):
        position = rng.randrange(len(damaged) // 4, len(damaged))
        damaged[position] ^= 0xFF
    return bytes(damaged)


BAD_INPUTS: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("empty", lambda _d: b"", "not a valid"),
    ("random_bytes", lambda _d: random.Random(3).randbytes(5000), "not a valid"),
    ("truncated", lambda d: d[: len(d) // 2], "not a valid"),
    ("corrupt", _corrupt, ""),
    ("ole2_container", lambda _d: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "OLE2"),
    ("zip_of_nothing_useful", lambda _d: _plain_zip(), "not a valid"),
]


def _plain_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("readme.txt", "hello")
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "bad"),
    [(f, b) for f in FORMATS for b in BAD_INPUTS],
    ids=[f"{f[0]}-{b[0]}" for f in FORMATS for b in BAD_INPUTS],
)
def test_when_input_is_not_a_readable_package_then_uninspectable_with_reason(
    fmt: tuple[str, Extractor, Callable[[], bytes]],
    bad: tuple[str, Callable[[bytes], bytes], str],
) -> None:
    _name, extract, build = fmt
    _label, damage, expected = bad
    with pytest.raises(Uninspectable) as caught:
        extract(damage(build()), LIMITS)
    assert caught.value.reason
    assert expected in caught.value.reason


# -- nothing else escapes -------------------------------------------------------------

MUTABLE = [
    (docx_extract.extract, docx_basic, "word/document.xml"),
    (xlsx_extract.extract, xlsx_basic, "xl/worksheets/sheet1.xml"),
    (pptx_extract.extract, pptx_basic, "ppt/slides/slide1.xml"),
    (odf_extract.extract, odt_basic, "content.xml"),
]

mutations = st.lists(
    st.tuples(st.floats(0, 1, allow_nan=False), st.integers(0, 255), st.sampled_from("fdi")),
    min_size=1,
    max_size=8,
)


def mutate(data: bytes, edits: list[tuple[float, int, str]]) -> bytes:
    buffer = bytearray(data)
    for where, value, op in edits:
        if not buffer:
            break
        position = min(int(where * len(buffer)), len(buffer) - 1)
        if op == "f":
            buffer[position] = value
        elif op == "d":
            del buffer[position : position + value % 16 + 1]
        else:
            buffer[position:position] = bytes([value]) * (value % 8 + 1)
    return bytes(buffer)


def _only_extraction_or_uninspectable(extract: Extractor, data: bytes) -> None:
    start = time.perf_counter()
    try:
        result = extract(data, LIMITS)
    except Uninspectable as exc:
        assert exc.reason
        assert "unexpected" not in exc.reason, exc.reason  # the safety net must not be needed
    else:
        assert isinstance(result, Extraction)
        assert isinstance(result.text, str)
    assert time.perf_counter() - start < 2


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
@given(index=st.integers(0, len(MUTABLE) - 1), edits=mutations)
def test_when_package_bytes_are_mutated_then_only_extraction_or_uninspectable(
    index: int, edits: list[tuple[float, int, str]]
) -> None:
    extract, build, _member = MUTABLE[index]
    _only_extraction_or_uninspectable(extract, mutate(build(), edits))


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
@given(index=st.integers(0, len(MUTABLE) - 1), edits=mutations)
def test_when_main_xml_is_mutated_then_only_extraction_or_uninspectable(
    index: int, edits: list[tuple[float, int, str]]
) -> None:
    # Mutating the XML before zipping reaches the XML readers, not just the zip CRC check.
    extract, build, member = MUTABLE[index]
    data = rezip(build(), edit={member: lambda body: mutate(body, edits)})
    _only_extraction_or_uninspectable(extract, data)


VALUES = [
    "",
    "0",
    "1",
    "-1",
    "999999999999",
    "true",
    "hidden",
    "veryHidden",
    "s",
    "b",
    "e",
    "str",
    "inlineStr",
    "A1",
    "ZZZZ99",
    "1E+400",
    "nan",
    "../../x",
    "collapse",
    "none",
    "rId1",
    "rId2",
]
ATTRIBUTES = [
    "hidden",
    "state",
    "t",
    "s",
    "r",
    "show",
    "min",
    "max",
    "ht",
    "customHeight",
    f"{{{W_NS}}}val",
    "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}c",
    "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}number-rows-repeated",
]
structural_edits = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 4), st.integers(0, 10_000)),
    min_size=1,
    max_size=6,
)


def restructure(body: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Delete, duplicate or move elements and set odd attribute values: valid XML, odd meaning."""
    root = lxml_etree.fromstring(body)
    for target, op, pick in edits:
        elements = list(root.iter())
        element = elements[target % len(elements)]
        parent = element.getparent()
        if op == 0 and parent is not None:
            parent.remove(element)
        elif op == 1 and parent is not None:
            parent.insert(pick % (len(parent) + 1), copy.deepcopy(element))
        elif op == 2:
            element.set(ATTRIBUTES[pick % len(ATTRIBUTES)], VALUES[pick // 7 % len(VALUES)])
        elif op == 3:
            element.text = VALUES[pick % len(VALUES)]
        elif parent is not None:
            other = elements[pick % len(elements)]
            if other is not element and element not in other.iterancestors():
                parent.remove(element)
                other.append(element)
    return lxml_etree.tostring(root)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
@given(index=st.integers(0, len(MUTABLE) - 1), edits=structural_edits)
def test_when_main_xml_is_restructured_then_only_extraction_or_uninspectable(
    index: int, edits: list[tuple[int, int, int]]
) -> None:
    extract, build, member = MUTABLE[index]
    data = rezip(build(), edit={member: lambda body: restructure(body, edits)})
    _only_extraction_or_uninspectable(extract, data)
