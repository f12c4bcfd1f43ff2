"""Benchmark messages: a ~2 KB plain-text mail and a ~60 KB mail with a real PDF.

Everything is generated deterministically in pure Python (no dependencies).
The content is deliberately benign council business (highways, libraries,
waste) with no identifiers, markings or case references, so that a DLP relay
with its default policy delivers it: the benchmark measures the relay's cost,
not its quarantine.

Each scenario is a `MessageTemplate`; `render(n)` gives the bytes of message
number ``n`` with a unique Message-ID (cheap: two concatenations).

For peers_bench.py there are more (`MIXES`, `mix()`): ``office`` (~2 MB with
a DOCX and an XLSX, written with python-docx and openpyxl and cached in a temp
file), ``blend`` (a `MessageMix` of council mail in which a few messages are
held by smtpguard's default policy), and the size series (``text-<N>k``:
plain text of N KiB, ``pdfs-<N>``: N small PDFs).
"""

from __future__ import annotations

import base64
import functools
import io
import os
import random
import re
import struct
import tempfile
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

SENDER = "highways.programme@northshire.gov.uk"
RECIPIENT = "contracts@roadworks-partner.example.com"

SCENARIOS: tuple[str, ...] = ("plain", "pdf")
# peers_bench.py's mixes; "blend" is a `MessageMix` of several templates.
MIXES: tuple[str, ...] = ("plain", "pdf", "office", "blend")

_MSGID_PLACEHOLDER = b"@@MSGID@@"

_SENTENCES: tuple[str, ...] = (
    "The resurfacing programme for the spring quarter is now on schedule after the delays "
    "caused by the February cold spell.",
    "Contractors have confirmed that the carriageway works on the ring road will be carried "
    "out overnight to reduce disruption to bus services.",
    "The gritting fleet completed forty-two precautionary runs this winter, slightly fewer "
    "than the five-year average.",
    "We have agreed with the parish councils that the footway repairs near the village "
    "greens will be grouped into a single closure where possible.",
    "The drainage survey identified a number of blocked gullies, most of which were cleared "
    "within the ten working day target.",
    "Library opening hours will be extended on Thursday evenings from the start of next "
    "month, following the consultation last autumn.",
    "The mobile library route has been revised so that every village is visited at least "
    "once a fortnight.",
    "Household waste recycling centres reported a steady rise in garden waste tonnage over "
    "the Easter weekend.",
    "The new booking system for recycling centre visits has reduced queues at the busiest "
    "sites on Saturday mornings.",
    "Please note that the figures in the attached report are provisional until the finance "
    "team completes the year-end reconciliation.",
    "The capital allocation for bridge maintenance remains unchanged at one point two "
    "million pounds for the financial year.",
    "Street lighting conversion to LED lanterns is about two thirds complete across the "
    "county network.",
    "Energy consumption for street lighting has fallen by roughly a third compared with the "
    "baseline year.",
    "A short pause in the works is planned for the county show week to keep the main routes "
    "clear for visitors.",
    "Members asked for a clearer explanation of how schemes are prioritised, so a summary of "
    "the scoring method is included as an appendix.",
    "The pothole reporting page on the council website received more reports in March than "
    "in any month last year.",
    "Average time to repair a category two defect is now within the published service standard.",
    "Traffic management plans for each closure will be shared with the emergency services at "
    "least two weeks in advance.",
    "We would welcome your comments on the draft programme before the end of the month so "
    "that they can be reflected in the final version.",
    "The cycle route extension between the station and the business park is expected to open "
    "in late summer.",
    "Signage on the diversion routes will be checked daily by the site supervisor and "
    "replaced where necessary.",
    "The highways depot will host an open morning for local councillors to see the new "
    "vehicles and equipment.",
    "Weed control on urban footways will follow the reduced-chemical approach trialled last year.",
    "Verge cutting will continue on the usual two-cut regime, with wildflower verges left "
    "until late summer.",
    "The bus shelter replacement programme has been brought forward to coincide with the "
    "resurfacing works.",
    "Public notices for the temporary traffic regulation orders were published in the local "
    "press as required.",
    "Any questions about the programme can be raised at the monthly liaison meeting or sent "
    "to the programme mailbox.",
    "The joint inspection with the contractor found the quality of the recent patching work "
    "to be good overall.",
    "Two schemes have been deferred to next year because of utility company works planned on "
    "the same streets.",
    "The winter service plan will be reviewed in the summer in the light of this year's "
    "experience.",
)

_HEADINGS: tuple[str, ...] = (
    "Summary",
    "Carriageway resurfacing",
    "Footways and cycle routes",
    "Drainage",
    "Street lighting",
    "Winter service",
    "Libraries and community buildings",
    "Waste and recycling",
    "Budget position",
    "Programme risks",
    "Next steps",
)


def _paragraphs(rng: random.Random, count: int, sentences: tuple[int, int] = (3, 6)) -> list[str]:
    """Return ``count`` paragraphs of plausible council prose."""
    out: list[str] = []
    for _ in range(count):
        n = rng.randint(*sentences)
        out.append(" ".join(rng.sample(_SENTENCES, n)))
    return out


def _wrap(text: str, width: int = 76) -> list[str]:
    return textwrap.wrap(text, width=width, break_long_words=False) or [""]


# --------------------------------------------------------------------------- PDF


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _page_stream(title: str, lines: list[str], page_no: int, pages: int) -> bytes:
    """A page content stream: a bold heading, body lines, a footer."""
    ops: list[str] = [
        "BT",
        "/F2 14 Tf",
        "56 790 Td",
        f"({_pdf_escape(title)}) Tj",
        "/F1 10 Tf",
        "13 TL",
        "0 -26 Td",
    ]
    for i, line in enumerate(lines):
        ops.append(f"({_pdf_escape(line)}) Tj" if i == 0 else f"({_pdf_escape(line)}) '")
    ops.append("ET")
    ops.append("BT /F1 8 Tf 270 40 Td " + f"(Page {page_no} of {pages}) Tj ET")
    return ("\n".join(ops) + "\n").encode("latin-1")


def build_pdf(pages: int = 6, seed: int = 1) -> bytes:
    """Build a valid, uncompressed, multi-page PDF 1.4 with real text content.

    Objects: 1 catalog, 2 page tree, 3/4 fonts (Helvetica, Helvetica-Bold),
    5 info dictionary, then a page and its content stream per page.
    The cross-reference table holds the exact byte offset of every object.
    """
    rng = random.Random(seed)
    lines_per_page = 54
    objects: dict[int, bytes] = {}
    page_ids = [6 + 2 * i for i in range(pages)]
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[2] = f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode()
    objects[3] = (
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    objects[4] = (
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>"
    )
    objects[5] = (
        b"<< /Title (Highways and Community Services - Quarterly Programme Report) "
        b"/Author (Highways Programme Team) /Producer (smtpguard bench messages.py) "
        b"/CreationDate (D:20240405093000Z) >>"
    )
    for i, pid in enumerate(page_ids):
        lines: list[str] = []
        while len(lines) < lines_per_page:
            heading = rng.choice(_HEADINGS)
            lines.append(heading.upper())
            for para in _paragraphs(rng, 2):
                lines.extend(textwrap.wrap(para, width=92))
                lines.append("")
        lines = lines[:lines_per_page]
        title = "Quarterly Programme Report" + (" (continued)" if i else "")
        stream = _page_stream(title, lines, i + 1, pages)
        objects[pid] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            f"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {pid + 1} 0 R >>"
        ).encode()
        objects[pid + 1] = f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"endstream"

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += f"{num} 0 obj\n".encode() + objects[num] + b"\nendobj\n"
    xref_at = len(out)
    size = max(objects) + 1
    out += f"xref\n0 {size}\n".encode()
    out += b"0000000000 65535 f \n"
    for num in range(1, size):
        out += f"{offsets[num]:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {size} /Root 1 0 R /Info 5 0 R >>\n".encode()
    out += f"startxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(out)


def check_pdf(data: bytes) -> int:
    """Structural self-check of a PDF from `build_pdf`; returns its page count.

    Follows startxref to the xref table and checks that every in-use entry
    points at ``N 0 obj`` and that every stream's /Length is exact.
    """
    if not data.startswith(b"%PDF-1.") or not data.rstrip().endswith(b"%%EOF"):
        raise ValueError("not a PDF")
    m = re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", data)
    if m is None:
        raise ValueError("no startxref")
    xref_at = int(m.group(1))
    if data[xref_at : xref_at + 4] != b"xref":
        raise ValueError("startxref does not point at xref")
    header = re.match(rb"xref\n0 (\d+)\n", data[xref_at:])
    if header is None:
        raise ValueError("bad xref header")
    size = int(header.group(1))
    table = data[xref_at + header.end() : xref_at + header.end() + 20 * size]
    for num in range(1, size):
        entry = table[20 * num : 20 * num + 20]
        offset = int(entry[:10])
        if entry[17:18] != b"n" or not data.startswith(f"{num} 0 obj".encode(), offset):
            raise ValueError(f"xref entry {num} is wrong")
    for sm in re.finditer(rb"<< /Length (\d+) >>\nstream\n", data):
        end = sm.end() + int(sm.group(1))
        if data[end : end + 9] != b"endstream":
            raise ValueError("stream /Length is wrong")
    count = re.search(rb"/Type /Pages /Kids \[[^\]]*\] /Count (\d+)", data)
    if count is None:
        raise ValueError("no page tree")
    return int(count.group(1))


# --------------------------------------------------------------------------- MIME


@dataclass(frozen=True)
class MessageTemplate:
    """Bytes of a message split around its Message-ID, for cheap unique copies.

    ``sender`` and ``recipients`` are its envelope; ``held`` says that
    smtpguard's default policy holds it (accepted with 250, never delivered).
    """

    name: str
    head: bytes
    tail: bytes
    sender: str = SENDER
    recipients: tuple[str, ...] = (RECIPIENT,)
    held: bool = False

    def render(self, n: int, tag: str = "bench") -> bytes:
        return self.head + f"{tag}-{n:010d}".encode() + self.tail

    @property
    def size(self) -> int:
        return len(self.head) + len(self.tail) + len("bench-0000000000")


def _headers(
    subject: str,
    content_type: str,
    sender: str = SENDER,
    to: str = RECIPIENT,
    from_name: str = "Highways Programme Team",
) -> list[str]:
    return [
        f'From: "{from_name}" <{sender}>',
        "To: <" + to + ">",
        "Subject: " + subject,
        "Date: Fri, 05 Apr 2024 09:30:00 +0100",
        "Message-ID: <" + _MSGID_PLACEHOLDER.decode() + "@northshire.gov.uk>",
        "MIME-Version: 1.0",
        content_type,
    ]


def _split(raw: str) -> MessageTemplate:
    data = raw.encode("ascii")
    head, tail = data.split(_MSGID_PLACEHOLDER, 1)
    return MessageTemplate(name="", head=head, tail=tail)


def _body_lines(rng: random.Random, target_bytes: int, quote_after: int | None = None) -> list[str]:
    """Wrapped prose lines totalling about ``target_bytes`` (CRLF included).

    With ``quote_after`` set, lines after that many bytes are written as an
    earlier message quoted with "> ", as in a long reply thread.
    """
    lines: list[str] = ["Dear colleagues,", ""]
    size = sum(len(x) + 2 for x in lines)
    quoting = False
    while size < target_bytes:
        if quote_after is not None and not quoting and size >= quote_after:
            quoting = True
            new = [
                "",
                "On Tue, 2 Apr 2024 at 16:12, Programme Liaison wrote:",
                ">",
            ]
        else:
            new = []
        for para in _paragraphs(rng, 1):
            wrapped = _wrap(para, 72 if quoting else 76)
            new.extend(("> " + x) if quoting else x for x in wrapped)
            new.append(">" if quoting else "")
        lines.extend(new)
        size += sum(len(x) + 2 for x in new)
    lines.extend(["Kind regards,", "", "Highways Programme Team", "Northshire County Council"])
    return lines


def plain_message(target: int = 2048) -> MessageTemplate:
    """A ~2 KB text/plain message."""
    rng = random.Random(2)
    hdr = _headers(
        "Spring resurfacing programme - update",
        'Content-Type: text/plain; charset="us-ascii"\r\nContent-Transfer-Encoding: 7bit',
    )
    hdr_size = sum(len(x) + 2 for x in hdr) + 2
    body = _body_lines(rng, target - hdr_size - 120)
    raw = "\r\n".join([*hdr, "", *body]) + "\r\n"
    return _with_name(_split(raw), "plain")


def pdf_message(target: int = 60 * 1024, pdf_pages: int = 6) -> MessageTemplate:
    """A ~60 KB multipart/mixed message: a long text body and a base64 PDF."""
    rng = random.Random(3)
    pdf = build_pdf(pdf_pages)
    check_pdf(pdf)
    b64 = base64.encodebytes(pdf).decode("ascii").replace("\n", "\r\n")
    boundary = "=_smtpguard_bench_boundary_5f1c2d"
    hdr = _headers(
        "Quarterly programme report - comments by end of month please",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    )
    att = [
        f"--{boundary}",
        'Content-Type: application/pdf; name="quarterly-programme-report.pdf"',
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="quarterly-programme-report.pdf"',
        "",
    ]
    fixed = (
        sum(len(x) + 2 for x in hdr)
        + 2
        + 200
        + sum(len(x) + 2 for x in att)
        + len(b64)
        + len(boundary)
        + 10
    )
    body = _body_lines(rng, max(1024, target - fixed), quote_after=6 * 1024)
    raw = "\r\n".join(
        [
            *hdr,
            "",
            "This is a multi-part message in MIME format.",
            "",
            f"--{boundary}",
            'Content-Type: text/plain; charset="us-ascii"',
            "Content-Transfer-Encoding: 7bit",
            "",
            *body,
            "",
            *att,
        ]
    )
    raw += "\r\n" + b64 + f"--{boundary}--\r\n"
    return _with_name(_split(raw), "pdf")


def _with_name(t: MessageTemplate, name: str) -> MessageTemplate:
    return MessageTemplate(name=name, head=t.head, tail=t.tail)


def template(scenario: str) -> MessageTemplate:
    """One message by name: plain, pdf, office, text-<N>k / text-<N>m, pdfs-<N>."""
    if scenario == "plain":
        return plain_message()
    if scenario == "pdf":
        return pdf_message()
    if scenario == "office":
        return office_message()
    sized = re.fullmatch(r"text-(\d+)([km])", scenario)
    if sized:
        kib = int(sized.group(1)) * (1024 if sized.group(2) == "m" else 1)
        if 1 <= kib <= 64 * 1024:
            return text_message(kib)
    counted = re.fullmatch(r"pdfs-(\d+)", scenario)
    if counted and 1 <= int(counted.group(1)) <= 64:
        return pdfs_message(int(counted.group(1)))
    raise ValueError(
        f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}, office, "
        "text-<N>k, text-<N>m, pdfs-<N>"
    )


# --------------------------------------------------------------------------- sizes


@functools.cache
def text_message(kib: int) -> MessageTemplate:
    """A text/plain message of about ``kib`` KiB (a long reply thread past 4 KiB)."""
    rng = random.Random(10 + kib)
    hdr = _headers(
        "Spring resurfacing programme - update",
        'Content-Type: text/plain; charset="us-ascii"\r\nContent-Transfer-Encoding: 7bit',
    )
    hdr_size = sum(len(x) + 2 for x in hdr) + 2
    quote = 2 * 1024 if kib > 4 else None
    body = _body_lines(rng, kib * 1024 - hdr_size - 120, quote_after=quote)
    raw = "\r\n".join([*hdr, "", *body]) + "\r\n"
    return _with_name(_split(raw), f"text-{kib}k" if kib % 1024 else f"text-{kib // 1024}m")


@functools.cache
def pdfs_message(count: int) -> MessageTemplate:
    """A short covering note with ``count`` small PDFs (one page each, all different)."""
    rng = random.Random(20 + count)
    boundary = "=_smtpguard_bench_boundary_9a7e41"
    hdr = _headers(
        f"Scheme notices for the liaison meeting ({count} attached)",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    )
    lines = [
        *hdr,
        "",
        "This is a multi-part message in MIME format.",
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="us-ascii"',
        "Content-Transfer-Encoding: 7bit",
        "",
        *_body_lines(rng, 1200),
    ]
    for i in range(count):
        pdf = build_pdf(pages=1, seed=100 + i)
        b64 = base64.encodebytes(pdf).decode("ascii").replace("\n", "\r\n")
        name = f"scheme-notice-{i + 1}.pdf"
        lines += [
            f"--{boundary}",
            f'Content-Type: application/pdf; name="{name}"',
            "Content-Transfer-Encoding: base64",
            f'Content-Disposition: attachment; filename="{name}"',
            "",
            b64.rstrip("\r\n"),
        ]
    raw = "\r\n".join(lines) + f"\r\n--{boundary}--\r\n"
    return _with_name(_split(raw), f"pdfs-{count}")


# --------------------------------------------------------------------------- office

OFFICE_CACHE_VERSION = "1"  # bump when office_message() changes what it writes


def _png(width: int, height: int, seed: int) -> bytes:
    """A valid RGB PNG that does not compress (like a photograph's detail)."""
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


_SCHEMES = (
    "Carriageway resurfacing",
    "Footway reconstruction",
    "Drainage improvement",
    "Street lighting LED conversion",
    "Bridge joint replacement",
    "Cycle route extension",
    "Bus shelter replacement",
    "Traffic signal upgrade",
    "Safety barrier renewal",
    "Retaining wall repair",
)
_AREAS = (
    "North Division",
    "South Division",
    "East Division",
    "West Division",
    "Central Division",
    "Coastal Division",
)
_STATUS = ("Complete", "On site", "Programmed", "Design", "Deferred")


def _docx(rng: random.Random) -> bytes:
    """A programme report: headings, prose, a summary table and three site photographs."""
    import datetime as dt

    from docx import Document  # type: ignore[import-not-found,unused-ignore]
    from docx.shared import Cm  # type: ignore[import-not-found,unused-ignore]

    doc = Document()
    props = doc.core_properties
    props.author = props.last_modified_by = "Highways Programme Team"
    props.title = "Highways Capital Programme - Quarterly Report"
    props.created = props.modified = dt.datetime(2024, 4, 5, 9, 30)
    doc.add_heading("Highways Capital Programme: Quarterly Report", 0)
    doc.add_paragraph("Report of the Head of Highways to the Environment Scrutiny Committee.")
    for section, heading in enumerate(_HEADINGS):
        doc.add_heading(heading, 1)
        for para in _paragraphs(rng, 4):
            doc.add_paragraph(para)
        if section in (2, 5, 8):
            doc.add_picture(io.BytesIO(_png(420, 250, seed=section)), width=Cm(15))
            doc.add_paragraph(f"Figure {section // 3 + 1}: site photograph, works in progress.")
        if section == 1:
            table = doc.add_table(rows=1, cols=4)
            for cell, text in zip(
                table.rows[0].cells,
                ("Scheme type", "Schemes", "Budget (GBP)", "Spend (GBP)"),
                strict=True,
            ):
                cell.text = text
            for scheme in _SCHEMES:
                row = table.add_row().cells
                budget = rng.randint(40, 900) * 1000
                row[0].text = scheme
                row[1].text = str(rng.randint(3, 40))
                row[2].text = f"{budget:,}"
                row[3].text = f"{int(budget * rng.uniform(0.2, 1.05)):,}"
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def _xlsx(rng: random.Random, rows: int = 7500) -> bytes:
    """The programme's scheme list: one row per scheme, budget and spend by quarter."""
    import datetime as dt

    from openpyxl import Workbook  # type: ignore[import-untyped,unused-ignore]

    wb = Workbook()
    wb.properties.creator = wb.properties.lastModifiedBy = "Highways Programme Team"
    wb.properties.created = wb.properties.modified = dt.datetime(2024, 4, 5, 9, 30)
    ws = wb.active
    ws.title = "Schemes"
    ws.append(
        [
            "Scheme",
            "Type",
            "Area",
            "Status",
            "Budget",
            "Q1 spend",
            "Q2 spend",
            "Q3 spend",
            "Q4 spend",
            "Variance",
        ]
    )
    for i in range(rows):
        budget = rng.randint(5, 400) * 250
        spend = [round(budget * rng.uniform(0.0, 0.35), 2) for _ in range(4)]
        ws.append(
            [
                f"Scheme {i + 1} - {rng.choice(_SCHEMES)}",
                rng.choice(_SCHEMES).split()[0],
                rng.choice(_AREAS),
                rng.choice(_STATUS),
                budget,
                *spend,
                round(budget - sum(spend), 2),
            ]
        )
    summary = wb.create_sheet("Summary")
    summary.append(["Area", "Schemes", "Budget"])
    for area in _AREAS:
        summary.append([area, rng.randint(200, 1500), rng.randint(500, 5000) * 1000])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _build_office_message() -> bytes:
    rng = random.Random(4)
    docx_bytes = _docx(rng)
    xlsx_bytes = _xlsx(rng)
    boundary = "=_smtpguard_bench_boundary_0ff1ce"
    hdr = _headers(
        "Capital programme report and scheme list for scrutiny",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    )
    lines = [
        *hdr,
        "",
        "This is a multi-part message in MIME format.",
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="us-ascii"',
        "Content-Transfer-Encoding: 7bit",
        "",
        *_body_lines(rng, 3 * 1024),
    ]
    for name, kind, data in (
        (
            "capital-programme-report.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            docx_bytes,
        ),
        (
            "capital-programme-schemes.xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            xlsx_bytes,
        ),
    ):
        b64 = base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")
        lines += [
            f"--{boundary}",
            f'Content-Type: {kind}; name="{name}"',
            "Content-Transfer-Encoding: base64",
            f'Content-Disposition: attachment; filename="{name}"',
            "",
            b64.rstrip("\r\n"),
        ]
    return ("\r\n".join(lines) + f"\r\n--{boundary}--\r\n").encode("ascii")


def office_cache_path() -> Path:
    return Path(tempfile.gettempdir()) / f"smtpguard-bench-office-v{OFFICE_CACHE_VERSION}.eml"


@functools.cache
def office_message() -> MessageTemplate:
    """~2 MB: a DOCX report with photographs and an XLSX scheme list (benign, no
    identifiers). Built once with python-docx/openpyxl and cached in a temp file."""
    path = office_cache_path()
    try:
        raw = path.read_bytes()
    except OSError:
        raw = b""
    if _MSGID_PLACEHOLDER not in raw:
        raw = _build_office_message()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(raw)
        os.replace(tmp, path)
    head, tail = raw.split(_MSGID_PLACEHOLDER, 1)
    return MessageTemplate(name="office", head=head, tail=tail)


# --------------------------------------------------------------------------- blend

CASE_WORKER = "m.patel@northshire.gov.uk"
CASE_COLLEAGUE = "j.okafor@northshire.gov.uk"
RESTRICTED_PARTY = "dan.hart77@gmail.com"  # restricted party of CS-204817 (case_parties.csv)


def _case_message(
    name: str, subject: str, to: str, paragraphs: list[str], held: bool
) -> MessageTemplate:
    hdr = _headers(
        subject,
        'Content-Type: text/plain; charset="us-ascii"\r\nContent-Transfer-Encoding: 7bit',
        sender=CASE_WORKER,
        to=to,
        from_name="Meera Patel",
    )
    body: list[str] = []
    for para in paragraphs:
        body += [*_wrap(para), ""]
    body += ["Meera Patel", "Social Worker, Children's Services", "Northshire County Council"]
    t = _split("\r\n".join([*hdr, "", *body]) + "\r\n")
    return MessageTemplate(
        name=name, head=t.head, tail=t.tail, sender=CASE_WORKER, recipients=(to,), held=held
    )


@functools.cache
def case_internal_message() -> MessageTemplate:
    """Sensitive (a case reference) to a colleague inside the council: passes."""
    return _case_message(
        "case-internal",
        "CS-311092 allocation and next visit",
        CASE_COLLEAGUE,
        [
            "Hi Joy, CS-311092 has been allocated to you from Monday. The case notes are up "
            "to date on the system and the next home visit is due within ten working days.",
            "I have left the chronology and the last supervision record in the case file. "
            "Give me a call if you want to go through it before the visit.",
        ],
        held=False,
    )


@functools.cache
def case_restricted_message() -> MessageTemplate:
    """Case material to the case's restricted party (B3): smtpguard holds it."""
    return _case_message(
        "case-restricted",
        "CS-204817 child protection conference",
        RESTRICTED_PARTY,
        [
            "The child protection conference for CS-204817 is on Monday at 10am at the "
            "county offices.",
            "Please let me know by Friday whether you will attend.",
        ],
        held=True,
    )


@dataclass(frozen=True)
class MessageMix:
    """Templates sent in a fixed, interleaved order: message ``n`` is ``pick(n)``."""

    name: str
    templates: tuple[MessageTemplate, ...]
    schedule: tuple[int, ...]  # indices into templates, repeated

    def pick(self, n: int) -> MessageTemplate:
        return self.templates[self.schedule[n % len(self.schedule)]]

    @property
    def size(self) -> int:
        """Mean message size over one schedule."""
        return sum(self.templates[i].size for i in self.schedule) // len(self.schedule)

    @property
    def held_share(self) -> float:
        return sum(self.templates[i].held for i in self.schedule) / len(self.schedule)

    def describe(self) -> str:
        counts = {t.name: self.schedule.count(i) for i, t in enumerate(self.templates)}
        total = len(self.schedule)
        return ", ".join(
            f"{n} in {total} {t.name}" + (" (held by smtpguard)" if t.held else "")
            for t, n in zip(self.templates, counts.values(), strict=True)
        )


# Per 20 messages: 12 plain and 5 PDF mails to a contractor, 2 with a case reference
# to a colleague (sensitive, internal: passes), 1 case mail to the restricted party.
BLEND: tuple[tuple[str, int], ...] = (
    ("plain", 12),
    ("pdf", 5),
    ("case-internal", 2),
    ("case-restricted", 1),
)


def _interleave(weights: list[int]) -> tuple[int, ...]:
    """A schedule with each index spread evenly (largest remainder, deterministic)."""
    total = sum(weights)
    credit = [0.0] * len(weights)
    out: list[int] = []
    for _ in range(total):
        for i, w in enumerate(weights):
            credit[i] += w / total
        best = max(range(len(weights)), key=lambda i: credit[i])
        credit[best] -= 1
        out.append(best)
    return tuple(out)


@functools.cache
def mix(name: str) -> MessageMix:
    """A mix by name: any `template()` name (one template), or ``blend``."""
    if name == "blend":
        by_name = {
            "case-internal": case_internal_message,
            "case-restricted": case_restricted_message,
        }
        templates = tuple(
            by_name[n]() if n in by_name else _with_name(template(n), n) for n, _ in BLEND
        )
        return MessageMix(name, templates, _interleave([w for _, w in BLEND]))
    return MessageMix(name, (template(name),), (0,))


def main() -> None:
    """Write the sample messages and the PDF to a folder, to inspect them."""
    import argparse
    import pathlib

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("outdir", type=pathlib.Path)
    parser.add_argument("--all", action="store_true", help="also office and the blend's")
    args = parser.parse_args()
    outdir: pathlib.Path = args.outdir
    outdir.mkdir(parents=True, exist_ok=True)
    pdf = build_pdf()
    (outdir / "quarterly-programme-report.pdf").write_bytes(pdf)
    print(f"quarterly-programme-report.pdf: {len(pdf)} bytes, {check_pdf(pdf)} pages")
    for name in SCENARIOS:
        data = template(name).render(1)
        (outdir / f"{name}.eml").write_bytes(data)
        print(f"{name}.eml: {len(data)} bytes")
    if args.all:
        blend = mix("blend")
        for t in (template("office"), *blend.templates):
            if t.name not in SCENARIOS:
                (outdir / f"{t.name}.eml").write_bytes(t.render(1))
                print(f"{t.name}.eml: {t.size} bytes, to {', '.join(t.recipients)}")
        print(f"blend: {blend.describe()}")


if __name__ == "__main__":
    main()
