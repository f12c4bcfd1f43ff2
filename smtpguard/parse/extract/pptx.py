"""PowerPoint (.pptx, .pptm, .potx) text, read straight from the package XML.

Slides come in presentation order, each as a "slide: N" line followed by one
line per paragraph (table rows as tab-separated cells), then its speaker
notes ("notes: N") and comments. Hidden slides are read and flagged, as are
slide parts the presentation does not list. Text placed on masters and layouts
(where protective markings usually live) is kept, without the placeholder
prompts ("Click to edit Master title style").
"""

from __future__ import annotations

from smtpguard.parse.extract import Extraction, Limits
from smtpguard.parse.extract.ooxml import (
    DRAWINGML,
    Package,
    TextSink,
    drawing_lines,
    guard,
    open_package,
    tags,
    xml_iter,
)
from smtpguard.parse.extract.safexml import local, parse, release
from smtpguard.parse.model import Flag

__all__ = ["extract"]

_P = (
    "http://schemas.openxmlformats.org/presentationml/2006/main",
    "http://purl.oclc.org/ooxml/presentationml/main",
)
_R_ID = (
    "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id",
    "{http://purl.oclc.org/ooxml/officeDocument/relationships}id",
)

A_P = tags(DRAWINGML, "p")
A_T = tags(DRAWINGML, "t")
A_BR = tags(DRAWINGML, "br")
A_TC = tags(DRAWINGML, "tc")
A_TR = tags(DRAWINGML, "tr")
A_FLD = tags(DRAWINGML, "fld")
SHAPE = tags(_P, "sp")
PLACEHOLDER = tags(_P, "ph")
SLIDE = tags(_P, "sld")
LEGACY_COMMENT_TEXT = tags(_P, "text")
_WANTED = tuple(A_P | A_T | A_BR | A_TC | A_TR | A_FLD | SHAPE | PLACEHOLDER | SLIDE)
_LEGACY_COMMENT = tags(_P, "cm")
_HIDDEN = {"0", "false", "off"}


class _Walk:
    """One slide-like part: paragraphs to lines, table rows to tab-separated lines."""

    def __init__(self, sink: TextSink, skip_placeholders: bool) -> None:
        self.sink = sink
        self.skip_placeholders = skip_placeholders
        self.hidden_slide = False
        self.had_text = False

    def run(self, pkg: Package, name: str) -> None:
        pieces: list[str] = []
        cell: list[str] | None = None
        row: list[str] | None = None
        shapes: list[bool] = []  # per open p:sp: is it a placeholder?
        slide_number_field = 0
        for event, element in xml_iter(pkg, name, ("start", "end"), _WANTED):
            tag = element.tag
            if event == "start":
                if tag in SHAPE:
                    shapes.append(False)
                elif tag in PLACEHOLDER and shapes:
                    shapes[-1] = True
                elif tag in A_FLD and (element.get("type") or "") == "slidenum":
                    slide_number_field += 1
                elif tag in A_TR:
                    row = []
                elif tag in A_TC:
                    cell = []
                elif tag in SLIDE and (element.get("show") or "").lower() in _HIDDEN:
                    self.hidden_slide = True
                continue
            if tag in A_T:
                prompt = self.skip_placeholders and shapes and shapes[-1]
                if element.text and not slide_number_field and not prompt:
                    pieces.append(element.text)
            elif tag in A_BR:
                pieces.append("\n")
            elif tag in A_FLD:
                slide_number_field = max(0, slide_number_field - 1)
            elif tag in A_P:
                text = "".join(pieces).strip()
                pieces.clear()
                if text:
                    self.had_text = True
                    if cell is not None:
                        cell.append(text)
                    else:
                        self.sink.line(text)
                if cell is None:
                    release(element)
            elif tag in A_TC:
                if row is not None and cell is not None:
                    row.append(" ".join(cell))
                cell = None
            elif tag in A_TR:
                if row:
                    while row and not row[-1]:
                        row.pop()
                    if row:
                        self.sink.line("\t".join(row))
                row = None
                release(element)
            elif tag in SHAPE and shapes:
                shapes.pop()


def _comments(pkg: Package, name: str, sink: TextSink) -> bool:
    """Legacy (p:cm/p:text) and modern (threaded, DrawingML text) comments; True if any."""
    root = parse(pkg.read(name), name)
    found = False
    for element in root.iter():
        kind = local(element.tag)
        if kind != "cm":
            continue
        found = True
        texts: list[str] = []
        for child in element.iter():
            if child.tag in LEGACY_COMMENT_TEXT or child.tag in A_T:
                texts.append(child.text or "")
        text = " ".join(" ".join(texts).split())
        if text:
            sink.line(f"comment: {text}")
    return found


def _slide_order(pkg: Package, main: str) -> list[str]:
    rels = {rel.id: rel for rel in pkg.relationships(main)}
    order: list[str] = []
    for element in parse(pkg.read(main), main).iter():
        if local(element.tag) != "sldId":
            continue
        rel_id = next((v for k in _R_ID if (v := element.get(k)) is not None), "")
        rel = rels.get(rel_id)
        if rel is not None and not rel.external and pkg.has(rel.target):
            order.append(rel.target)
    return order


def extract(data: bytes, limits: Limits) -> Extraction:
    """Text, flags and embedded objects of a PowerPoint package."""
    return guard("PowerPoint presentation", _extract, data, limits)


def _extract(data: bytes, limits: Limits) -> Extraction:
    pkg = open_package(data, limits, "PowerPoint presentation")
    main = pkg.main_part("ppt/presentation.xml")
    sink = TextSink(limits.max_text_chars)
    flags: set[str] = set()
    done: set[str] = {main.lower()}
    slides = _slide_order(pkg, main)
    listed = {s.lower() for s in slides}
    unlisted = [
        p for p in pkg.parts_where("ppt/", r"slides/slide\d*\.xml", ()) if p.lower() not in listed
    ]

    def comments(part: str) -> None:
        if part.lower() not in done and pkg.has(part):
            done.add(part.lower())
            if _comments(pkg, part, sink):
                flags.add(Flag.COMMENTS)

    for number, part in enumerate([*slides, *unlisted], start=1):
        if part.lower() in done:
            continue
        done.add(part.lower())
        sink.line(f"slide: {number}" if part.lower() in listed else f"slide: (not listed) {part}")
        walk = _Walk(sink, skip_placeholders=False)
        walk.run(pkg, part)
        if walk.hidden_slide or part.lower() not in listed:
            flags.add(Flag.HIDDEN_TEXT)
        for rel in pkg.relationships(part):
            if rel.external or not pkg.has(rel.target):
                continue
            if rel.type == "notesSlide" and rel.target.lower() not in done:
                done.add(rel.target.lower())
                sink.line(f"notes: {number}")
                _Walk(sink, skip_placeholders=False).run(pkg, rel.target)
            elif rel.type == "comments":
                comments(rel.target)

    for part in pkg.parts_where("ppt/", r"notesslides/notesslide\d*\.xml", ()):
        if part.lower() not in done:
            done.add(part.lower())
            sink.line(f"notes: (not linked) {part}")
            _Walk(sink, skip_placeholders=False).run(pkg, part)
    for part in pkg.parts_where(
        "ppt/", r"comments/(comment|modernComment)[^/]*\.xml", ("presentationml.comments+xml",)
    ):
        comments(part)
    # Masters and layouts repeat the same marking many times; keep each line once.
    masters = TextSink(limits.max_text_chars)
    for part in pkg.parts_where(
        "ppt/", r"(slidemasters/slidemaster|slidelayouts/slidelayout)\d*\.xml", ()
    ):
        done.add(part.lower())
        _Walk(masters, skip_placeholders=True).run(pkg, part)
    sink.lines(list(dict.fromkeys(line for line in masters.text().split("\n") if line)))
    for part in pkg.parts_where(
        "ppt/",
        r"(charts/chart|diagrams/data)\d*\.xml",
        ("drawingml.chart+xml", "drawingml.diagramdata+xml"),
    ):
        if part.lower() not in done:
            done.add(part.lower())
            drawing_lines(pkg, part, sink)
    sink.lines(pkg.properties())
    flags |= pkg.macro_flags()
    return Extraction(
        text=sink.text(),
        flags=frozenset(flags),
        embedded=pkg.embedded("ppt/embeddings/"),
    )
