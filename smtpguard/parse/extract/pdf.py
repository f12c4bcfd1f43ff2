"""PDF: page text, metadata, annotations, form values and attachments, via PDFium.

PDFium (through pypdfium2's raw bindings) is used rather than a pure-Python
parser because it is fast, repairs broken cross-reference tables the way
Chrome does, and gives the geometry we need to find redaction failures.

Redaction rule (DESIGN B8), applied per character of page text, and only on
pages where some opaque fill overlaps some text object in a suspicious way:

* a character is *covered* when at least half of its loose (font) box lies
  inside the bounding box of an opaque (alpha >= 200/255) filled path that is
  painted *after* it in content-stream order (paths inside Form XObjects
  included, with their matrices), or inside a dark Square/Highlight
  annotation (annotations are painted over all page content);
* it is also covered when the topmost such fill painted *before* it has
  nearly its own colour, or both are dark: black or navy text on a black
  highlight, the usual failed "redaction" in Word.

Covered under a dark box (luminance < 0.2) is a failed redaction:
`Flag.TEXT_UNDER_REDACTION`. Covered under a box of another colour
("white-out"), text outside the page's visible box, and white text with
nothing drawn beneath it are `Flag.HIDDEN_TEXT`. In every case the text stays
in the output: it is exactly what would leak. White text on a dark banner is
not flagged: the box is under the text, not over it.

Not considered: images or shadings used as boxes, clipping paths, blend modes
and soft masks, pattern fills, stroked lines drawn thick as a marker, and
pages with more than MAX_FILLS_PER_PAGE fills (maps and drawings).
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pypdfium2  # type: ignore[import-untyped,unused-ignore]  # noqa: F401  (loads PDFium)
import pypdfium2.raw as pdfium  # type: ignore[import-untyped,unused-ignore]

from smtpguard.parse.extract import Embedded, Extraction, Uninspectable
from smtpguard.parse.model import Flag, Limits

META_KEYS = ("Title", "Author", "Subject", "Keywords", "Creator", "Producer")
PAGE_SEPARATOR = "\f"

DARK_LUMINANCE = 0.2  # fills darker than this are "redaction" boxes
WHITE_LUMINANCE = 0.95  # text lighter than this with nothing under it is invisible
OPAQUE_ALPHA = 200  # of 255
COVERED_FRACTION = 0.5  # of a character's box that must be under the fill
SAME_COLOUR = 48  # max difference per RGB channel for "text the colour of its box"
MAX_FILLS_PER_PAGE = 20_000  # above this a page is a drawing; its geometry is not analysed
MAX_FORM_DEPTH = 8
GRID = 64.0  # points; cell size of the spatial index of fills
SMALL_FILL_COUNT = 48  # fewer fills than this are simply scanned, no index

# Annotations whose /Contents is a reviewer's remark rather than page furniture.
COMMENT_SUBTYPES = frozenset(
    {
        pdfium.FPDF_ANNOT_TEXT,
        pdfium.FPDF_ANNOT_FREETEXT,
        pdfium.FPDF_ANNOT_LINE,
        pdfium.FPDF_ANNOT_SQUARE,
        pdfium.FPDF_ANNOT_CIRCLE,
        pdfium.FPDF_ANNOT_POLYGON,
        pdfium.FPDF_ANNOT_POLYLINE,
        pdfium.FPDF_ANNOT_HIGHLIGHT,
        pdfium.FPDF_ANNOT_UNDERLINE,
        pdfium.FPDF_ANNOT_SQUIGGLY,
        pdfium.FPDF_ANNOT_STRIKEOUT,
        pdfium.FPDF_ANNOT_STAMP,
        pdfium.FPDF_ANNOT_CARET,
        pdfium.FPDF_ANNOT_INK,
        pdfium.FPDF_ANNOT_FILEATTACHMENT,
        pdfium.FPDF_ANNOT_SOUND,
    }
)
COVER_ANNOT_SUBTYPES = frozenset({pdfium.FPDF_ANNOT_SQUARE, pdfium.FPDF_ANNOT_HIGHLIGHT})
VALUE_FIELD_TYPES = frozenset(
    {pdfium.FPDF_FORMFIELD_TEXTFIELD, pdfium.FPDF_FORMFIELD_COMBOBOX, pdfium.FPDF_FORMFIELD_LISTBOX}
)
VISIBLE_RENDER_MODES = frozenset(
    {
        pdfium.FPDF_TEXTRENDERMODE_FILL,
        pdfium.FPDF_TEXTRENDERMODE_FILL_STROKE,
        pdfium.FPDF_TEXTRENDERMODE_FILL_CLIP,
        pdfium.FPDF_TEXTRENDERMODE_FILL_STROKE_CLIP,
    }
)

Box = tuple[float, float, float, float]  # left, bottom, right, top in page space
Matrix = tuple[float, float, float, float, float, float]
Colour = tuple[int, int, int, int]
IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
_OBJECT_HEADER = re.compile(rb"(\d{1,10})\s+(\d{1,5})\s+obj\b")


@dataclass(frozen=True)
class _Fill:
    """An opaque filled area and when it was painted."""

    order: int
    box: Box
    colour: Colour


class _TextObject:
    """A text object, measured only when the page has something that could hide it."""

    __slots__ = ("_box", "_colour", "ctm", "handle", "order")

    def __init__(self, handle: Any, order: int, ctm: Matrix) -> None:
        self.handle = handle
        self.order = order
        self.ctm = ctm
        self._box: Box | None = None
        self._colour: Colour | None = None

    @property
    def box(self) -> Box:
        if self._box is None:
            self._box = _bounds(self.handle, self.ctm) or (0.0, 0.0, 0.0, 0.0)
        return self._box

    @property
    def colour(self) -> Colour:
        if self._colour is None:
            self._colour = _colour(self.handle, pdfium.FPDFPageObj_GetFillColor) or (0, 0, 0, 255)
        return self._colour

    @property
    def visible_mode(self) -> bool:
        return pdfium.FPDFTextObj_GetTextRenderMode(self.handle) in VISIBLE_RENDER_MODES


@dataclass
class _PageGeometry:
    fills: list[_Fill] = field(default_factory=list)
    texts: dict[int, _TextObject] = field(default_factory=dict)  # by PDFium handle address
    images: int = 0
    backdrops: int = 0  # images and shadings: something text may sit on that is not a fill
    too_complex: bool = False


def extract(data: bytes, limits: Limits) -> Extraction:
    """Read a PDF; raise `Uninspectable` if it is locked, broken beyond repair or over a limit."""
    if len(data) > limits.max_part_bytes:
        raise Uninspectable("PDF is larger than the size limit")
    deadline = time.monotonic() + limits.part_seconds
    doc, buffer = _open(data)
    try:
        return _Reader(doc, limits, deadline).read()
    finally:
        pdfium.FPDF_CloseDocument(doc)  # before `buffer` may go: PDFium reads it in place
        del buffer


def _open(data: bytes) -> tuple[Any, bytes]:
    """Open from memory with an empty password; a cut-off file gets a trailer and a second try."""
    if not data:
        raise Uninspectable("corrupt PDF (empty file)")
    doc = pdfium.FPDF_LoadMemDocument64(data, len(data), None)
    if not doc:
        error = pdfium.FPDF_GetLastError()
        if error == pdfium.FPDF_ERR_PASSWORD:
            raise Uninspectable("password-protected PDF")
        if error == pdfium.FPDF_ERR_SECURITY:
            raise Uninspectable("PDF uses an unsupported encryption scheme")
        repaired = _with_trailer(data)
        if repaired is None:
            raise Uninspectable("corrupt PDF")
        doc = pdfium.FPDF_LoadMemDocument64(repaired, len(repaired), None)
        if not doc:
            raise Uninspectable("corrupt PDF")
        data = repaired
    if pdfium.FPDF_GetPageCount(doc) < 1:
        pdfium.FPDF_CloseDocument(doc)
        raise Uninspectable("corrupt PDF (no readable pages)")
    return doc, data


def _with_trailer(data: bytes) -> bytes | None:
    """A truncated PDF has lost its trailer; PDFium rebuilds the rest if told where /Root is."""
    if b"%PDF-" not in data[:1024]:
        return None
    start = 0
    for _ in range(16):  # the first few catalogs; a real file has one
        found = data.find(b"/Catalog", start)
        if found < 0:
            return None
        start = found + 8
        window = data[max(0, found - 4096) : found]
        headers = list(_OBJECT_HEADER.finditer(window))
        if headers:
            number, generation = headers[-1].group(1), headers[-1].group(2)
            return data + b"\ntrailer\n<< /Root " + number + b" " + generation + b" R >>\n%%EOF\n"
    return None


class _Reader:
    """One pass over an open document; collects text, flags and attachments."""

    def __init__(self, doc: Any, limits: Limits, deadline: float) -> None:
        self.doc = doc
        self.limits = limits
        self.deadline = deadline
        self.flags: set[str] = set()
        self.chunks: list[str] = []
        self.size = 0
        self.embedded: list[Embedded] = []
        self.embedded_bytes = 0
        self.form: Any = None
        self.form_info: Any = None
        self.fields_seen: set[tuple[str, str]] = set()

    def read(self) -> Extraction:
        if pdfium.FPDF_GetSecurityHandlerRevision(self.doc) != -1:
            self.flags.add(Flag.ENCRYPTED)  # opened with the empty user password
        meta = self._metadata()
        if meta:
            self._add(meta + "\n\n")
        self._open_forms()
        try:
            self._pages()
        finally:
            if self.form:
                pdfium.FPDFDOC_ExitFormFillEnvironment(self.form)
        self._document_attachments()
        text = "".join(self.chunks)[: self.limits.max_text_chars]
        return Extraction(text=text, flags=frozenset(self.flags), embedded=tuple(self.embedded))

    # text accounting

    def _add(self, text: str) -> None:
        if self.size <= self.limits.max_text_chars:
            self.chunks.append(text)
            self.size += len(text)

    def _full(self) -> bool:
        return self.size > self.limits.max_text_chars

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise Uninspectable(f"PDF took longer than {self.limits.part_seconds:g}s to read")

    # document level

    def _metadata(self) -> str:
        lines = []
        for key in META_KEYS:
            value = _wide_string(
                lambda buf, size, key=key: pdfium.FPDF_GetMetaText(
                    self.doc, key.encode("ascii"), buf, size
                )
            ).strip()
            if value:
                lines.append(f"{key}: {value}")
        return "\n".join(lines)

    def _open_forms(self) -> None:
        """A form environment lets us read filled-in field values, which page text lacks."""
        if pdfium.FPDF_GetFormType(self.doc) == pdfium.FORMTYPE_NONE:
            return
        self.form_info = pdfium.FPDF_FORMFILLINFO(version=2)
        self.form = pdfium.FPDFDOC_InitFormFillEnvironment(self.doc, self.form_info) or None

    def _document_attachments(self) -> None:
        count = pdfium.FPDFDoc_GetAttachmentCount(self.doc)
        for index in range(max(count, 0)):
            attachment = pdfium.FPDFDoc_GetAttachment(self.doc, index)
            if attachment:
                self._attachment(attachment, f"attachment-{index + 1}")

    def _attachment(self, attachment: Any, fallback_name: str) -> None:
        if len(self.embedded) >= self.limits.max_archive_members:
            raise Uninspectable("PDF has more attached files than the limit")
        name = _wide_string(
            lambda buf, size: pdfium.FPDFAttachment_GetName(attachment, buf, size)
        ).strip()
        needed = ctypes.c_ulong(0)
        if not pdfium.FPDFAttachment_GetFile(attachment, None, 0, ctypes.byref(needed)):
            return  # a file specification with no embedded stream: nothing is carried
        buffer = ctypes.create_string_buffer(max(needed.value, 1))
        got = ctypes.c_ulong(0)
        if not pdfium.FPDFAttachment_GetFile(attachment, buffer, needed.value, ctypes.byref(got)):
            raise Uninspectable(f"PDF attachment {name or fallback_name!r} could not be read")
        payload = buffer.raw[: min(got.value, needed.value)]
        self.embedded_bytes += len(payload)
        if self.embedded_bytes > self.limits.max_extracted_bytes:
            raise Uninspectable("PDF attachments are larger than the size limit")
        self.embedded.append(Embedded(name=name or fallback_name, data=payload))

    # pages

    def _pages(self) -> None:
        count = pdfium.FPDF_GetPageCount(self.doc)
        loaded = 0
        for index in range(count):
            self._check_time()
            if self._full():
                return  # the text limit is reached: the rest would be cut anyway
            page = pdfium.FPDF_LoadPage(self.doc, index)
            if not page:
                continue  # best effort: a page object PDFium cannot rebuild
            loaded += 1
            try:
                self._page(page, index)
            finally:
                pdfium.FPDF_ClosePage(page)
        if loaded == 0:
            raise Uninspectable("corrupt PDF (no page could be read)")

    def _page(self, page: Any, index: int) -> None:
        textpage = pdfium.FPDFText_LoadPage(page)
        if not textpage:
            raise Uninspectable(f"PDF page {index + 1} could not be read")
        try:
            text = _page_text(textpage)
            if index:
                self._add(PAGE_SEPARATOR)
            self._add(text)
            geometry = _geometry(page)
            self._annotations(page, geometry)
            if geometry.images and not text.strip():
                self.flags.add(Flag.IMAGE)  # a scanned page: nothing here was read
            self.flags |= _hidden_text_flags(page, textpage, text, geometry)
        finally:
            pdfium.FPDFText_ClosePage(textpage)

    def _annotations(self, page: Any, geometry: _PageGeometry) -> None:
        count = pdfium.FPDFPage_GetAnnotCount(page)
        lines: list[str] = []
        for index in range(max(count, 0)):
            annot = pdfium.FPDFPage_GetAnnot(page, index)
            if not annot:
                continue
            try:
                lines.extend(self._annotation(annot, geometry))
            finally:
                pdfium.FPDFPage_CloseAnnot(annot)
        if lines:
            self._add("\n" + "\n".join(lines) + "\n")

    def _annotation(self, annot: Any, geometry: _PageGeometry) -> list[str]:
        subtype = pdfium.FPDFAnnot_GetSubtype(annot)
        contents = _annot_string(annot, "Contents")
        lines: list[str] = []
        if subtype == pdfium.FPDF_ANNOT_REDACT:
            self.flags.add(Flag.UNAPPLIED_REDACTION)
            overlay = _annot_string(annot, "OverlayText")
            for value in (contents, overlay):
                if value:
                    lines.append(f"Redaction note: {value}")
        elif subtype == pdfium.FPDF_ANNOT_WIDGET:
            lines.extend(self._field_value(annot))
        elif subtype in COMMENT_SUBTYPES and contents:
            self.flags.add(Flag.COMMENTS)
            author = _annot_string(annot, "T")
            lines.append(f"Comment ({author}): {contents}" if author else f"Comment: {contents}")
        if subtype == pdfium.FPDF_ANNOT_FILEATTACHMENT:
            attachment = pdfium.FPDFAnnot_GetFileAttachment(annot)
            if attachment:
                self._attachment(attachment, f"attachment-{len(self.embedded) + 1}")
        if subtype in COVER_ANNOT_SUBTYPES:
            cover = _annotation_cover(annot, subtype)
            if cover is not None:
                geometry.fills.append(cover)
        return lines

    def _field_value(self, annot: Any) -> list[str]:
        """Filled-in text and choice fields; tick boxes ("Yes"/"Off") carry nothing to read."""
        if not self.form or pdfium.FPDFAnnot_GetFormFieldType(self.form, annot) not in (
            VALUE_FIELD_TYPES
        ):
            return []
        value = _wide_string(
            lambda buf, size: pdfium.FPDFAnnot_GetFormFieldValue(self.form, annot, buf, size)
        ).strip()
        if not value:
            return []
        name = _wide_string(
            lambda buf, size: pdfium.FPDFAnnot_GetFormFieldName(self.form, annot, buf, size)
        ).strip()
        if (name, value) in self.fields_seen:
            return []  # one field shown by several widgets
        self.fields_seen.add((name, value))
        return [f"{name}: {value}" if name else value]


# helpers on raw PDFium calls


def _wide_string(call: Any) -> str:
    """Call a PDFium "fill a UTF-16LE buffer" function twice: once for the size, once for data."""
    size = int(call(None, 0))
    if size <= 2:
        return ""
    buffer = ctypes.create_string_buffer(size)
    call(ctypes.cast(buffer, ctypes.POINTER(ctypes.c_ushort)), size)
    raw = buffer.raw[: size - 2]
    return raw[: len(raw) - len(raw) % 2].decode("utf-16-le", errors="replace")


def _annot_string(annot: Any, key: str) -> str:
    encoded = key.encode("ascii")
    return _wide_string(
        lambda buf, size: pdfium.FPDFAnnot_GetStringValue(annot, encoded, buf, size)
    ).strip()


def _page_text(textpage: Any) -> str:
    """All text on the page, including text placed off the visible area."""
    huge = 1e9
    return _bounded_text(textpage, (-huge, -huge, huge, huge))


def _bounded_text(textpage: Any, box: Box) -> str:
    left, bottom, right, top = box
    count = int(pdfium.FPDFText_GetBoundedText(textpage, left, top, right, bottom, None, 0))
    if count <= 0:
        return ""
    buffer = (ctypes.c_ushort * (count + 1))()
    written = int(pdfium.FPDFText_GetBoundedText(textpage, left, top, right, bottom, buffer, count))
    raw = bytes(memoryview(buffer).cast("B")[: 2 * max(0, min(written, count))])
    text = raw.decode("utf-16-le", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _colour(obj: Any, getter: Any) -> Colour | None:
    r, g, b, a = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
    if not getter(obj, ctypes.byref(r), ctypes.byref(g), ctypes.byref(b), ctypes.byref(a)):
        return None
    return (r.value, g.value, b.value, a.value)


def _luminance(colour: Colour) -> float:
    r, g, b, _ = colour
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255.0


def _same_colour(one: Colour, other: Colour) -> bool:
    """Too alike to read one on the other: near-identical, or both dark (navy on black)."""
    if _luminance(one) < DARK_LUMINANCE and _luminance(other) < DARK_LUMINANCE:
        return True
    return all(abs(x - y) <= SAME_COLOUR for x, y in zip(one[:3], other[:3], strict=True))


def _bounds(obj: Any, matrix: Matrix) -> Box | None:
    left, bottom, right, top = (
        ctypes.c_float(),
        ctypes.c_float(),
        ctypes.c_float(),
        ctypes.c_float(),
    )
    ok = pdfium.FPDFPageObj_GetBounds(
        obj, ctypes.byref(left), ctypes.byref(bottom), ctypes.byref(right), ctypes.byref(top)
    )
    if not ok:
        return None
    box = (left.value, bottom.value, right.value, top.value)
    return box if matrix == IDENTITY else _transform_box(box, matrix)


def _transform_box(box: Box, m: Matrix) -> Box:
    a, b, c, d, e, f = m
    xs: list[float] = []
    ys: list[float] = []
    for x, y in ((box[0], box[1]), (box[0], box[3]), (box[2], box[1]), (box[2], box[3])):
        xs.append(a * x + c * y + e)
        ys.append(b * x + d * y + f)
    return (min(xs), min(ys), max(xs), max(ys))


def _multiply(inner: Matrix, outer: Matrix) -> Matrix:
    a1, b1, c1, d1, e1, f1 = inner
    a2, b2, c2, d2, e2, f2 = outer
    return (
        a1 * a2 + b1 * c2,
        a1 * b2 + b1 * d2,
        c1 * a2 + d1 * c2,
        c1 * b2 + d1 * d2,
        e1 * a2 + f1 * c2 + e2,
        e1 * b2 + f1 * d2 + f2,
    )


def _matrix(obj: Any) -> Matrix:
    m = pdfium.FS_MATRIX()
    if not pdfium.FPDFPageObj_GetMatrix(obj, ctypes.byref(m)):
        return IDENTITY
    return (m.a, m.b, m.c, m.d, m.e, m.f)


def _address(handle: Any) -> int:
    """A handle's pointer value, to match text page characters with page objects."""
    return ctypes.addressof(handle.contents) if handle else 0


def _objects(page: Any) -> Iterator[tuple[Any, int, Matrix]]:
    """Every page object in painting order, descending into Form XObjects (with their matrix)."""
    stack: list[tuple[Any, int, int, Matrix, int]] = []  # container, next index, count, ctm, depth
    stack.append((None, 0, max(0, pdfium.FPDFPage_CountObjects(page)), IDENTITY, 0))
    while stack:
        container, index, count, ctm, depth = stack.pop()
        if index >= count:
            continue
        stack.append((container, index + 1, count, ctm, depth))
        obj = (
            pdfium.FPDFPage_GetObject(page, index)
            if container is None
            else pdfium.FPDFFormObj_GetObject(container, index)
        )
        if not obj:
            continue
        kind = pdfium.FPDFPageObj_GetType(obj)
        yield obj, kind, ctm
        if kind == pdfium.FPDF_PAGEOBJ_FORM and depth < MAX_FORM_DEPTH:
            inner = _multiply(_matrix(obj), ctm)
            children = max(0, pdfium.FPDFFormObj_CountObjects(obj))
            stack.append((obj, 0, children, inner, depth + 1))


def _geometry(page: Any) -> _PageGeometry:
    """Opaque fills and text objects of one page, in painting order."""
    geometry = _PageGeometry()
    fill_mode = ctypes.c_int()
    stroke = ctypes.c_int()
    for order, (obj, kind, ctm) in enumerate(_objects(page)):
        if kind == pdfium.FPDF_PAGEOBJ_TEXT:
            geometry.texts[_address(obj)] = _TextObject(obj, order, ctm)
        elif kind == pdfium.FPDF_PAGEOBJ_PATH:
            if not pdfium.FPDFPath_GetDrawMode(obj, ctypes.byref(fill_mode), ctypes.byref(stroke)):
                continue
            if fill_mode.value == pdfium.FPDF_FILLMODE_NONE:
                continue
            colour = _colour(obj, pdfium.FPDFPageObj_GetFillColor)
            box = _bounds(obj, ctm)
            if colour is None or box is None or colour[3] < OPAQUE_ALPHA:
                continue
            if len(geometry.fills) >= MAX_FILLS_PER_PAGE:
                geometry.too_complex = True
                continue
            geometry.fills.append(_Fill(order, box, colour))
        elif kind == pdfium.FPDF_PAGEOBJ_IMAGE:
            geometry.images += 1
            geometry.backdrops += 1
        elif kind == pdfium.FPDF_PAGEOBJ_SHADING:
            geometry.backdrops += 1
    return geometry


def _annotation_cover(annot: Any, subtype: int) -> _Fill | None:
    """A dark Square (interior colour) or Highlight annotation paints over the page text."""
    kind = (
        pdfium.FPDFANNOT_COLORTYPE_InteriorColor
        if subtype == pdfium.FPDF_ANNOT_SQUARE
        else pdfium.FPDFANNOT_COLORTYPE_Color
    )
    r, g, b, a = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
    ok = pdfium.FPDFAnnot_GetColor(
        annot, kind, ctypes.byref(r), ctypes.byref(g), ctypes.byref(b), ctypes.byref(a)
    )
    if not ok:
        return None
    colour = (r.value, g.value, b.value, a.value)
    if colour[3] < OPAQUE_ALPHA or _luminance(colour) >= DARK_LUMINANCE:
        return None
    rect = pdfium.FS_RECTF()
    if not pdfium.FPDFAnnot_GetRect(annot, ctypes.byref(rect)):
        return None
    box = (
        min(rect.left, rect.right),
        min(rect.bottom, rect.top),
        max(rect.left, rect.right),
        max(rect.bottom, rect.top),
    )
    return _Fill(1 << 60, box, colour)  # annotations are painted after all page content


def _overlap(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


class _FillIndex:
    """Fills bucketed on a coarse grid, so each text box only meets the fills near it."""

    def __init__(self, fills: list[_Fill]) -> None:
        self.cells: dict[tuple[int, int], list[_Fill]] = {}
        for fill in fills:
            for cell in _cells(fill.box):
                self.cells.setdefault(cell, []).append(fill)

    def near(self, box: Box) -> list[_Fill]:
        found: dict[int, _Fill] = {}
        for cell in _cells(box):
            for fill in self.cells.get(cell, ()):
                found[id(fill)] = fill
        return list(found.values())


def _cells(box: Box) -> Iterator[tuple[int, int]]:
    x0, x1 = int(box[0] // GRID), int(box[2] // GRID)
    y0, y1 = int(box[1] // GRID), int(box[3] // GRID)
    if (x1 - x0 + 1) * (y1 - y0 + 1) > 4096:  # absurd boxes: clamp to a page-sized window
        x0, x1 = max(x0, -8), min(x1, 64)
        y0, y1 = max(y0, -8), min(y1, 64)
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            yield (x, y)


def _hiding(text: _TextObject, char_box: Box, fills: list[_Fill]) -> str | None:
    """Which flag, if any, the fills around a character earn it (see the module docstring)."""
    area = _area(char_box)
    if area <= 0:
        return None
    above: _Fill | None = None
    below: _Fill | None = None
    for fill in fills:
        if _overlap(char_box, fill.box) < COVERED_FRACTION * area:
            continue
        if fill.order > text.order:
            if above is None or _luminance(fill.colour) < DARK_LUMINANCE:
                above = fill
        elif below is None or fill.order > below.order:
            below = fill
    if above is not None:
        dark = _luminance(above.colour) < DARK_LUMINANCE
        return Flag.TEXT_UNDER_REDACTION if dark else Flag.HIDDEN_TEXT
    if below is not None and text.visible_mode and _same_colour(below.colour, text.colour):
        dark = _luminance(below.colour) < DARK_LUMINANCE
        return Flag.TEXT_UNDER_REDACTION if dark else Flag.HIDDEN_TEXT
    return None


def _suspect(text: _TextObject, fills: list[_Fill]) -> list[_Fill]:
    """Fills that could hide some of this text object; empty for almost all text.

    Order and colour are checked before geometry: most fills (table shading,
    banners) lie under text of another colour and need no measuring.
    """
    found = []
    for fill in fills:
        if fill.order < text.order and not _same_colour(fill.colour, text.colour):
            continue
        if _overlap(text.box, fill.box) > 0:
            found.append(fill)
    return found


def _hidden_text_flags(
    page: Any, textpage: Any, page_text: str, geometry: _PageGeometry
) -> set[str]:
    """Object-level screening first; per-character boxes only for text that might be hidden."""
    flags: set[str] = set()
    page_box = _page_box(page)
    if page_box is not None and _visible_chars(page_text) > _visible_chars(
        _bounded_text(textpage, page_box)
    ):
        flags.add(Flag.HIDDEN_TEXT)  # text placed outside the visible page
    if geometry.too_complex:
        return flags  # a map or drawing: too many fills to reason about (MAX_FILLS_PER_PAGE)
    index = _FillIndex(geometry.fills) if len(geometry.fills) > SMALL_FILL_COUNT else None
    suspects: dict[int, tuple[_TextObject, list[_Fill]]] = {}
    for address, text in geometry.texts.items():
        if not geometry.fills:
            if not geometry.backdrops and _white_and_visible(text):
                flags.add(Flag.HIDDEN_TEXT)  # white text on the bare page
            continue
        near = index.near(text.box) if index is not None else geometry.fills
        if (
            not geometry.backdrops
            and _white_and_visible(text)
            and not any(f.order < text.order and _overlap(text.box, f.box) > 0 for f in near)
        ):
            flags.add(Flag.HIDDEN_TEXT)  # white text with nothing drawn beneath it
        candidates = _suspect(text, near)
        if candidates:
            suspects[address] = (text, candidates)
    if suspects:
        flags |= _covered_chars(textpage, suspects)
    return flags


def _white_and_visible(text: _TextObject) -> bool:
    return _luminance(text.colour) > WHITE_LUMINANCE and text.visible_mode


def _covered_chars(textpage: Any, suspects: dict[int, tuple[_TextObject, list[_Fill]]]) -> set[str]:
    flags: set[str] = set()
    rect = pdfium.FS_RECTF()
    for char in range(max(0, pdfium.FPDFText_CountChars(textpage))):
        handle = pdfium.FPDFText_GetTextObject(textpage, char)
        entry = suspects.get(_address(handle)) if handle else None
        if entry is None:
            continue
        if chr(pdfium.FPDFText_GetUnicode(textpage, char) or 32).isspace():
            continue
        if not pdfium.FPDFText_GetLooseCharBox(textpage, char, ctypes.byref(rect)):
            continue
        box = (
            min(rect.left, rect.right),
            min(rect.bottom, rect.top),
            max(rect.left, rect.right),
            max(rect.bottom, rect.top),
        )
        flag = _hiding(entry[0], box, entry[1])
        if flag is not None:
            flags.add(flag)
            if len(flags) == 2:
                break
    return flags


def _visible_chars(text: str) -> int:
    return len(text) - sum(text.count(ch) for ch in " \n\t\f\r\xa0")


def _page_box(page: Any) -> Box | None:
    rect = pdfium.FS_RECTF()
    if not pdfium.FPDF_GetPageBoundingBox(page, ctypes.byref(rect)):
        return None
    return (
        min(rect.left, rect.right),
        min(rect.bottom, rect.top),
        max(rect.left, rect.right),
        max(rect.bottom, rect.top),
    )
