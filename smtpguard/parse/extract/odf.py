"""OpenDocument (.odt, .ods, .odp, .odg and templates) text, one module for all.

content.xml is streamed: every top-level paragraph, heading or table row is
rendered once its end tag arrives and then freed, so a large spreadsheet costs
one row of memory. Paragraphs become lines; table rows become tab-separated
lines (spreadsheets start each sheet with "sheet: NAME", presentations each
page with "slide: N"). Annotations, tracked deletions, hidden sections, hidden
text, collapsed rows and columns and hidden sheets and slides are read and
flagged. Header and footer text comes from styles.xml, properties from
meta.xml. A package whose manifest carries encryption data is refused: its
parts are ciphertext.
"""

from __future__ import annotations

import posixpath
import re

from smtpguard.parse.extract import Embedded, Extraction, Limits, Uninspectable
from smtpguard.parse.extract.ooxml import (
    Package,
    TextSink,
    guard,
    natural_key,
    open_package,
    xml_iter,
)
from smtpguard.parse.extract.safexml import Node, local, parse, release
from smtpguard.parse.model import Flag

__all__ = ["extract"]

_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_DRAW = "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0"
_STYLE = "urn:oasis:names:tc:opendocument:xmlns:style:1.0"
_PRESENTATION = "urn:oasis:names:tc:opendocument:xmlns:presentation:1.0"
_META = "urn:oasis:names:tc:opendocument:xmlns:meta:1.0"
_DC = "http://purl.org/dc/elements/1.1/"


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


T_P = _q(_TEXT, "p")
T_H = _q(_TEXT, "h")
T_S = _q(_TEXT, "s")
T_TAB = _q(_TEXT, "tab")
T_BREAK = _q(_TEXT, "line-break")
T_NOTE = _q(_TEXT, "note")
T_NOTE_CITATION = _q(_TEXT, "note-citation")
T_SPAN = _q(_TEXT, "span")
T_SECTION = _q(_TEXT, "section")
T_HIDDEN_TEXT = _q(_TEXT, "hidden-text")
T_HIDDEN_PARAGRAPH = _q(_TEXT, "hidden-paragraph")
T_CHANGED_REGION = _q(_TEXT, "changed-region")
T_TRACKED = _q(_TEXT, "tracked-changes")
ROW = _q(_TABLE, "table-row")
CELL = _q(_TABLE, "table-cell")
COVERED_CELL = _q(_TABLE, "covered-table-cell")
TABLE = _q(_TABLE, "table")
COLUMN = _q(_TABLE, "table-column")
PAGE = _q(_DRAW, "page")
NOTES = _q(_PRESENTATION, "notes")
STYLE = _q(_STYLE, "style")
SPREADSHEET = _q(_OFFICE, "spreadsheet")
PRESENTATION = _q(_OFFICE, "presentation")
DRAWING = _q(_OFFICE, "drawing")
CHANGE_INFO = _q(_OFFICE, "change-info")

UNITS = frozenset({T_P, T_H, ROW})
_STYLE_NAME = {
    T_P: _q(_TEXT, "style-name"),
    T_H: _q(_TEXT, "style-name"),
    T_SPAN: _q(_TEXT, "style-name"),
}
_HIDDEN_VISIBILITY = {"collapse", "filter"}
_MAX_REPEAT = 100  # repeated rows/cells with content are written at most this many times
_VALUE_ATTRS = tuple(
    _q(_OFFICE, name)
    for name in ("value", "date-value", "time-value", "boolean-value", "string-value")
)
_MACRO_FILES = {"script-lc.xml", "script-lb.xml", "dialog-lc.xml", "dialog-lb.xml"}


def _int(text: str | None, default: int = 1) -> int:
    try:
        return max(0, int(text or default))
    except ValueError:
        return default


class _Reader:
    def __init__(self, sink: TextSink) -> None:
        self.sink = sink
        self.flags: set[str] = set()
        self.hidden_text_styles: set[str] = set()
        self.hidden_table_styles: set[str] = set()
        self.hidden_page_styles: set[str] = set()
        self.mode = "text"
        self.pages = 0

    # -- styles -----------------------------------------------------------------------

    def style(self, element: Node) -> None:
        name = element.get(_q(_STYLE, "name")) or ""
        for props in element:
            kind = local(props.tag)
            if kind == "text-properties" and props.get(_q(_TEXT, "display")) == "none":
                self.hidden_text_styles.add(name)
            elif kind == "table-properties" and props.get(_q(_TABLE, "display")) == "false":
                self.hidden_table_styles.add(name)
            elif (
                kind == "drawing-page-properties"
                and props.get(_q(_PRESENTATION, "visibility")) == "hidden"
            ):
                self.hidden_page_styles.add(name)

    # -- streaming --------------------------------------------------------------------

    def read(self, pkg: Package, name: str, body: bool) -> None:
        """Stream one part; `body` marks content.xml, where sheets and slides are counted."""
        depth = 0  # open units (paragraphs, headings, rows)
        sections: list[bool] = []  # open text:section elements: hidden?
        for event, element in xml_iter(pkg, name, ("start", "end")):
            tag = element.tag
            if event == "start":
                if tag in UNITS:
                    depth += 1
                elif tag == T_SECTION:
                    display = element.get(_q(_TEXT, "display")) or ""
                    sections.append(display in {"none", "condition"})
                self._start(element, tag, body)
                continue
            if tag in UNITS:
                depth -= 1
                if depth == 0:
                    lines = self.render_unit(element)
                    if any(sections) and any(line.strip() for line in lines):
                        self.flags.add(Flag.HIDDEN_TEXT)
                    for line in lines:
                        if line.strip():
                            self.sink.line(line)
                    release(element)
            elif tag == T_SECTION and sections:
                sections.pop()
            elif tag == STYLE:
                self.style(element)

    def _start(self, element: Node, tag: str, body: bool) -> None:
        kind = local(tag)
        if kind == "annotation":
            self.flags.add(Flag.COMMENTS)
        elif tag == T_CHANGED_REGION:
            self.flags.add(Flag.TRACKED_CHANGES)
        elif tag in {T_HIDDEN_TEXT, T_HIDDEN_PARAGRAPH}:
            self.flags.add(Flag.HIDDEN_TEXT)
        elif tag == SPREADSHEET:
            self.mode = "spreadsheet"
        elif tag == PRESENTATION:
            self.mode = "presentation"
        elif tag == DRAWING:
            self.mode = "drawing"
        elif tag == TABLE and body:
            style = element.get(_q(_TABLE, "style-name"))
            if style is not None and style in self.hidden_table_styles:
                self.flags.add(Flag.HIDDEN_SHEET)
            if self.mode == "spreadsheet" and not _inside(element, CELL):
                self.sink.line(f"sheet: {element.get(_q(_TABLE, 'name')) or ''}")
        elif tag == COLUMN:
            if (element.get(_q(_TABLE, "visibility")) or "") in _HIDDEN_VISIBILITY:
                self.flags.add(Flag.HIDDEN_COLUMNS)
        elif tag == PAGE and body:
            self.pages += 1
            label = "slide" if self.mode == "presentation" else "page"
            self.sink.line(f"{label}: {self.pages}")
            style = element.get(_q(_DRAW, "style-name"))
            if style is not None and style in self.hidden_page_styles:
                self.flags.add(Flag.HIDDEN_TEXT)
        elif tag == NOTES and body:
            self.sink.line(f"notes: {self.pages}")

    # -- rendering a finished unit ----------------------------------------------------

    def render_unit(self, element: Node) -> list[str]:
        if element.tag == ROW:
            return self.render_row(element)
        extra: list[str] = []
        text = self.inline(element, extra)
        return [text, *extra]

    def inline(self, element: Node, extra: list[str]) -> str:
        """Text of a paragraph-like element; notes, annotations and frames go to `extra` lines."""
        style_attr = _STYLE_NAME.get(element.tag)
        hidden = style_attr is not None and element.get(style_attr) in self.hidden_text_styles
        pieces: list[str] = [element.text or ""]
        for child in element:
            pieces.append(self.child(child, extra))
            pieces.append(child.tail or "")
        text = "".join(pieces)
        if hidden and text.strip():
            self.flags.add(Flag.HIDDEN_TEXT)
        return text

    def child(self, child: Node, extra: list[str]) -> str:
        tag = child.tag
        if not isinstance(tag, str):
            return ""
        if tag == T_S:
            return " " * min(_int(child.get(_q(_TEXT, "c"))), _MAX_REPEAT)
        if tag == T_TAB:
            return "\t"
        if tag == T_BREAK:
            return "\n"
        if tag in (T_NOTE_CITATION, CHANGE_INFO):
            return ""
        if tag == T_HIDDEN_TEXT:
            return child.get(_q(_TEXT, "string-value")) or ""
        if tag in UNITS:
            extra.extend(self.render_unit(child))
            return ""
        if local(tag) == "annotation" or tag == T_NOTE:
            self.blocks(child, extra)
            return ""
        return self.inline(child, extra)

    def blocks(self, element: Node, extra: list[str]) -> None:
        """Paragraphs and rows anywhere below `element`, each as its own line."""
        for child in element:
            if child.tag in UNITS:
                extra.extend(self.render_unit(child))
            elif isinstance(child.tag, str) and local(child.tag) not in {"creator", "date"}:
                self.blocks(child, extra)

    def render_row(self, row: Node) -> list[str]:
        cells: list[str] = []
        extra: list[str] = []
        for cell in row:
            if cell.tag not in {CELL, COVERED_CELL}:
                continue
            lines: list[str] = []
            self.blocks(cell, lines)
            parts = [" ".join(line.split()) for line in lines]
            text = " ".join(p for p in parts if p)
            if not text:
                text = next((v for a in _VALUE_ATTRS if (v := cell.get(a))), "")
            repeat = _int(cell.get(_q(_TABLE, "number-columns-repeated")))
            if text:
                cells.extend([text] * min(repeat, _MAX_REPEAT))
            elif self.mode != "spreadsheet":
                # Keep column positions in document tables; spreadsheets list values only,
                # as the Excel reader does.
                cells.extend([""] * min(repeat, _MAX_REPEAT))
        while cells and not cells[-1]:
            cells.pop()
        if not any(cells):
            return extra
        visibility = row.get(_q(_TABLE, "visibility")) or ""
        if visibility in _HIDDEN_VISIBILITY:
            self.flags.add(Flag.HIDDEN_ROWS)
        line = "\t".join(cells)
        repeat = min(_int(row.get(_q(_TABLE, "number-rows-repeated"))), _MAX_REPEAT)
        return [line] * max(repeat, 1) + extra


def _inside(element: Node, tag: str) -> bool:
    parent = element.getparent()
    while parent is not None:
        if parent.tag == tag:
            return True
        parent = parent.getparent()
    return False


_META_FIELDS = {
    "title": "title",
    "subject": "subject",
    "description": "description",
    "keyword": "keywords",
    "initial-creator": "creator",
    "creator": "last modified by",
}


def _properties(pkg: Package) -> list[str]:
    data = pkg.read_optional("meta.xml")
    if data is None:
        return []
    lines: list[str] = []
    for element in parse(data, "meta.xml").iter():
        kind = local(element.tag)
        value = " ".join((element.text or "").split())
        if not value:
            continue
        if kind == "user-defined":
            lines.append(f"{element.get(_q(_META, 'name')) or ''}: {value}")
        elif kind in _META_FIELDS and element.tag in {_q(_DC, kind), _q(_META, kind)}:
            lines.append(f"{_META_FIELDS[kind]}: {value}")
    return lines


def _check_manifest(pkg: Package) -> None:
    data = pkg.read_optional("META-INF/manifest.xml")
    if data is None:
        return
    for element in parse(data, "META-INF/manifest.xml").iter():
        if local(element.tag) in {"encryption-data", "keyinfo", "encrypted-key"}:
            raise Uninspectable("password-protected OpenDocument file")


def _macros(pkg: Package) -> bool:
    for name in pkg.names():
        lower = name.lower()
        if lower.startswith("scripts/"):
            return True
        if lower.startswith("basic/") and posixpath.basename(lower) not in _MACRO_FILES:
            return True
    return False


_OBJECT_FILE = re.compile(r"Object [^/]*", re.IGNORECASE)
_OBJECT_CONTENT = re.compile(r"Object [^/]*/content\.xml", re.IGNORECASE)


def extract(data: bytes, limits: Limits) -> Extraction:
    """Text, flags and embedded objects of an OpenDocument package."""
    return guard("OpenDocument", _extract, data, limits)


def _extract(data: bytes, limits: Limits) -> Extraction:
    pkg = open_package(data, limits, "OpenDocument")
    mimetype = pkg.read_optional("mimetype")
    if mimetype is not None and not mimetype.strip().startswith(
        b"application/vnd.oasis.opendocument."
    ):
        raise Uninspectable("not a valid OpenDocument file (unexpected mimetype)")
    _check_manifest(pkg)
    if not pkg.has("content.xml"):
        raise Uninspectable("not a valid OpenDocument file (content.xml is missing)")
    sink = TextSink(limits.max_text_chars)
    reader = _Reader(sink)
    styles = pkg.read_optional("styles.xml")
    if styles is not None:
        # Styles first: named styles may hide text, and the page headers and footers live there.
        header = TextSink(limits.max_text_chars)
        reader.sink = header
        reader.read(pkg, "styles.xml", body=False)
        reader.sink = sink
    else:
        header = TextSink(0)
    try:
        reader.read(pkg, "content.xml", body=True)
        sink.lines([line for line in header.text().split("\n") if line])
        for name in sorted(pkg.names(), key=natural_key):
            if _OBJECT_CONTENT.fullmatch(name):
                sink.line(f"object: {posixpath.dirname(name)}")
                reader.read(pkg, name, body=False)
    except RecursionError:
        raise Uninspectable("OpenDocument file is nested too deeply to read") from None
    sink.lines(_properties(pkg))
    flags = set(reader.flags)
    if _macros(pkg):
        flags.add(Flag.MACROS)
    embedded = tuple(
        Embedded(name=name, data=pkg.read(name))
        for name in sorted(pkg.names(), key=natural_key)
        if _OBJECT_FILE.fullmatch(name)
    )
    return Extraction(text=sink.text(), flags=frozenset(flags), embedded=embedded)
