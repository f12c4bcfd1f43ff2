"""Word (.docx, .docm, .dotx) text, read straight from the package XML.

Everything a reader might not see but a recipient can still recover is kept
and flagged: deleted tracked changes (`w:delText`), hidden runs (`w:vanish`,
directly or through a style), comments, headers, footers, notes, text boxes,
document properties. Each paragraph is a line; table rows are lines with the
cells separated by tabs.
"""

from __future__ import annotations

from smtpguard.parse.extract import Extraction, Limits
from smtpguard.parse.extract.ooxml import (
    Package,
    TextSink,
    drawing_lines,
    guard,
    open_package,
    tags,
    xml_iter,
)
from smtpguard.parse.extract.safexml import Node, local, parse, release
from smtpguard.parse.model import Flag

__all__ = ["extract"]

_W = (
    "http://schemas.openxmlformats.org/wordprocessingml/2006/main",
    "http://purl.oclc.org/ooxml/wordprocessingml/main",
)
_MC = ("http://schemas.openxmlformats.org/markup-compatibility/2006",)

P = tags(_W, "p")
R = tags(_W, "r")
T = tags(_W, "t")
DEL_TEXT = tags(_W, "delText")
TAB = tags(_W, "tab", "ptab")
BREAK = tags(_W, "br", "cr")
HYPHEN = tags(_W, "noBreakHyphen")
CHANGE = tags(_W, "ins", "del", "moveFrom", "moveTo")
VANISH = tags(_W, "vanish", "specVanish")
RPR = tags(_W, "rPr")
R_STYLE = tags(_W, "rStyle")
P_STYLE = tags(_W, "pStyle")
PPR = tags(_W, "pPr")
CELL = tags(_W, "tc")
ROW = tags(_W, "tr")
BLOCK = tags(_W, "txbxContent", "comment", "footnote", "endnote")
COMMENT = tags(_W, "comment")
CHOICE = tags(_MC, "Choice")
FALLBACK = tags(_MC, "Fallback")
ALTERNATE = tags(_MC, "AlternateContent")

_WANTED = (
    P
    | R
    | T
    | DEL_TEXT
    | TAB
    | BREAK
    | HYPHEN
    | CHANGE
    | VANISH
    | R_STYLE
    | P_STYLE
    | CELL
    | ROW
    | BLOCK
    | CHOICE
    | FALLBACK
    | ALTERNATE
)

_OFF = {"0", "false", "off"}


_VAL = tuple(f"{{{ns}}}val" for ns in _W)
_STYLE_ID = tuple(f"{{{ns}}}styleId" for ns in _W)


def _attr(element: Node, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = element.get(name)
        if value is not None:
            return value
    return None


def _on(element: Node) -> bool:
    """A WordprocessingML on/off property: present means on unless w:val says otherwise."""
    value = _attr(element, _VAL)
    return value is None or value.strip().lower() not in _OFF


def _val(element: Node) -> str:
    return _attr(element, _VAL) or ""


# -- frames: where text goes while the XML is streamed ------------------------------------


class _Frame:
    """Default routing: hand everything to the enclosing frame."""

    def __init__(self, parent: _Frame | None) -> None:
        self.parent = parent

    def inline(self, text: str) -> None:
        if self.parent is not None:
            self.parent.inline(text)

    def para(self, text: str) -> None:
        if self.parent is not None:
            self.parent.para(text)

    def line(self, text: str) -> None:
        if self.parent is not None:
            self.parent.line(text)


class _Root(_Frame):
    def __init__(self, sink: TextSink) -> None:
        super().__init__(None)
        self.sink = sink

    def inline(self, text: str) -> None:
        self.line(text)

    def para(self, text: str) -> None:
        self.line(text)

    def line(self, text: str) -> None:
        if text.strip():
            self.sink.line(text)


class _Block(_Frame):
    """Text box, comment or note: its paragraphs become lines of their own."""

    def para(self, text: str) -> None:
        self.line(text)

    def inline(self, text: str) -> None:
        self.line(text)


class _Para(_Frame):
    def __init__(self, parent: _Frame, hidden: bool | None) -> None:
        super().__init__(parent)
        self.pieces: list[str] = []
        self.style_hidden = hidden  # set by w:pStyle once seen

    def inline(self, text: str) -> None:
        self.pieces.append(text)

    def para(self, text: str) -> None:
        self.line(text)

    def close(self) -> None:
        if self.parent is not None:
            self.parent.para("".join(self.pieces))


class _Cell(_Frame):
    def __init__(self, parent: _Frame) -> None:
        super().__init__(parent)
        self.paras: list[str] = []

    def para(self, text: str) -> None:
        if text.strip():
            self.paras.append(text.strip())

    def inline(self, text: str) -> None:
        self.para(text)

    def close(self) -> None:
        if isinstance(self.parent, _Row):
            self.parent.cells.append(" ".join(self.paras))
        elif self.parent is not None:
            self.parent.para(" ".join(self.paras))


class _Row(_Frame):
    def __init__(self, parent: _Frame) -> None:
        super().__init__(parent)
        self.cells: list[str] = []

    def para(self, text: str) -> None:
        self.cells.append(text)

    def close(self) -> None:
        while self.cells and not self.cells[-1]:
            self.cells.pop()
        if self.parent is not None:
            self.parent.para("\t".join(self.cells))


class _Capture(_Frame):
    """Record what mc:Choice / mc:Fallback produce, to drop a Fallback that repeats its Choice."""

    def __init__(self, parent: _Frame) -> None:
        super().__init__(parent)
        self.ops: list[tuple[str, str]] = []

    def inline(self, text: str) -> None:
        self.ops.append(("inline", text))

    def para(self, text: str) -> None:
        self.ops.append(("para", text))

    def line(self, text: str) -> None:
        self.ops.append(("line", text))

    def words(self) -> str:
        return " ".join(" ".join(text for _, text in self.ops).split())

    def replay(self) -> None:
        target = self.parent
        if target is None:
            return
        for kind, text in self.ops:
            if kind == "inline":
                target.inline(text)
            elif kind == "para":
                target.para(text)
            else:
                target.line(text)


class _Alternate(_Frame):
    def __init__(self, parent: _Frame) -> None:
        super().__init__(parent)
        self.choices: list[str] = []
        self.fallbacks: list[_Capture] = []


class _Run:
    __slots__ = ("direct", "style")

    def __init__(self) -> None:
        self.direct: bool | None = None  # w:rPr/w:vanish on the run itself
        self.style: bool | None = None  # via w:rPr/w:rStyle


# -- styles ----------------------------------------------------------------------------


class _Styles:
    """Which styles hide text (w:vanish), following w:basedOn chains."""

    def __init__(self) -> None:
        self.default: bool = False
        self._own: dict[str, bool | None] = {}
        self._based: dict[str, str] = {}
        self._cache: dict[str, bool | None] = {}

    @classmethod
    def load(cls, pkg: Package, name: str | None) -> _Styles:
        styles = cls()
        if name is None or not pkg.has(name):
            return styles
        root = parse(pkg.read(name), name)
        for child in root:
            kind = local(child.tag)
            if kind == "docDefaults":
                for element in child.iter(*VANISH):
                    styles.default = _on(element)
            elif kind == "style":
                style_id = _attr(child, _STYLE_ID) or ""
                own: bool | None = None
                for element in child:
                    tag = local(element.tag)
                    if tag == "basedOn":
                        styles._based[style_id] = _val(element)
                    elif tag == "rPr":
                        for prop in element:
                            if prop.tag in VANISH:
                                own = _on(prop)
                styles._own[style_id] = own
        return styles

    def hidden(self, style_id: str) -> bool | None:
        if style_id in self._cache:
            return self._cache[style_id]
        seen: set[str] = set()
        current: str | None = style_id
        result: bool | None = None
        while current is not None and current not in seen:
            seen.add(current)
            own = self._own.get(current)
            if own is not None:
                result = own
                break
            current = self._based.get(current)
        self._cache[style_id] = result
        return result


# -- the walk --------------------------------------------------------------------------


class _Walker:
    def __init__(self, sink: TextSink, styles: _Styles) -> None:
        self.sink = sink
        self.styles = styles
        self.flags: set[str] = set()

    def walk(self, pkg: Package, name: str) -> None:
        root: _Frame = _Root(self.sink)
        frames: list[_Frame] = [root]
        runs: list[_Run] = []
        paras: list[_Para] = []
        for event, element in xml_iter(pkg, name, ("start", "end"), tuple(_WANTED)):
            tag = element.tag
            top = frames[-1]
            if event == "start":
                if tag in R:
                    runs.append(_Run())
                elif tag in P:
                    para = _Para(top, None)
                    frames.append(para)
                    paras.append(para)
                elif tag in CELL:
                    frames.append(_Cell(top))
                elif tag in ROW:
                    frames.append(_Row(top))
                elif tag in BLOCK:
                    frames.append(_Block(top))
                    if tag in COMMENT:
                        self.flags.add(Flag.COMMENTS)
                elif tag in CHANGE:
                    self.flags.add(Flag.TRACKED_CHANGES)
                elif tag in ALTERNATE:
                    frames.append(_Alternate(top))
                elif tag in CHOICE or tag in FALLBACK:
                    frames.append(_Capture(top))
                elif tag in VANISH:
                    self._vanish(element, runs)
                elif tag in R_STYLE:
                    self._run_style(element, runs)
                elif tag in P_STYLE:
                    self._para_style(element, paras)
                continue
            # end events
            if tag in T or tag in DEL_TEXT:
                text = element.text
                if text:
                    top.inline(text)
                    if tag in DEL_TEXT:
                        self.flags.add(Flag.TRACKED_CHANGES)
                    if text.strip() and self._hidden(runs, paras):
                        self.flags.add(Flag.HIDDEN_TEXT)
            elif tag in TAB:
                top.inline("\t")
            elif tag in BREAK:
                top.inline("\n")
            elif tag in HYPHEN:
                top.inline("-")
            elif tag in R:
                if runs:
                    runs.pop()
            elif tag in P or tag in CELL or tag in ROW:
                frame = frames.pop()
                if isinstance(frame, _Para | _Cell | _Row):
                    frame.close()
                if isinstance(frame, _Para) and paras:
                    paras.pop()
                if len(frames) == 1 and tag not in CELL:
                    release(element)
            elif tag in BLOCK:
                frames.pop()
                if len(frames) == 1:
                    release(element)
            elif tag in CHOICE or tag in FALLBACK:
                capture = frames.pop()
                alternate = frames[-1]
                if not isinstance(capture, _Capture):
                    continue
                if not isinstance(alternate, _Alternate):
                    capture.replay()  # a stray Choice or Fallback: keep its text
                elif tag in CHOICE:
                    alternate.choices.append(capture.words())
                    capture.replay()
                else:
                    alternate.fallbacks.append(capture)
            elif tag in ALTERNATE:
                alternate = frames.pop()
                if isinstance(alternate, _Alternate):
                    shown = " ".join(alternate.choices)
                    for capture in alternate.fallbacks:
                        words = capture.words()
                        if words and words not in shown:
                            capture.replay()

    def _vanish(self, element: Node, runs: list[_Run]) -> None:
        parent = element.getparent()
        grand = parent.getparent() if parent is not None else None
        if (
            parent is not None
            and parent.tag in RPR
            and grand is not None
            and grand.tag in R
            and runs
        ):
            runs[-1].direct = _on(element)

    def _run_style(self, element: Node, runs: list[_Run]) -> None:
        parent = element.getparent()
        grand = parent.getparent() if parent is not None else None
        if grand is not None and grand.tag in R and runs:
            runs[-1].style = self.styles.hidden(_val(element))

    def _para_style(self, element: Node, paras: list[_Para]) -> None:
        parent = element.getparent()
        grand = parent.getparent() if parent is not None else None
        in_ppr = parent is not None and parent.tag in PPR
        if in_ppr and grand is not None and grand.tag in P and paras:
            paras[-1].style_hidden = self.styles.hidden(_val(element))

    def _hidden(self, runs: list[_Run], paras: list[_Para]) -> bool:
        if runs:
            run = runs[-1]
            if run.direct is not None:
                return run.direct
            if run.style is not None:
                return run.style
        if paras and paras[-1].style_hidden is not None:
            return bool(paras[-1].style_hidden)
        return self.styles.default


_HEADER_TYPES = ("wordprocessingml.header+xml",)
_FOOTER_TYPES = ("wordprocessingml.footer+xml",)
_FOOTNOTE_TYPES = ("wordprocessingml.footnotes+xml",)
_ENDNOTE_TYPES = ("wordprocessingml.endnotes+xml",)
_COMMENT_TYPES = ("wordprocessingml.comments+xml",)
_GLOSSARY_TYPES = ("wordprocessingml.document.glossary+xml",)
_CHART_TYPES = ("drawingml.chart+xml", "drawingml.diagramdata+xml")


def extract(data: bytes, limits: Limits) -> Extraction:
    """Text, flags and embedded objects of a Word package."""
    return guard("Word document", _extract, data, limits)


def _extract(data: bytes, limits: Limits) -> Extraction:
    pkg = open_package(data, limits, "Word document")
    main = pkg.main_part("word/document.xml")
    styles_name: str | None = "word/styles.xml"
    for rel in pkg.relationships(main):
        if rel.type == "styles" and not rel.external:
            styles_name = rel.target
    sink = TextSink(limits.max_text_chars)
    walker = _Walker(sink, _Styles.load(pkg, styles_name))
    walker.walk(pkg, main)
    done = {main.lower()}
    groups = (
        pkg.parts_where("word/", r"header\d*\.xml", _HEADER_TYPES),
        pkg.parts_where("word/", r"footer\d*\.xml", _FOOTER_TYPES),
        pkg.parts_where("word/", r"footnotes\.xml", _FOOTNOTE_TYPES),
        pkg.parts_where("word/", r"endnotes\.xml", _ENDNOTE_TYPES),
        pkg.parts_where("word/", r"comments\.xml", _COMMENT_TYPES),
        pkg.parts_where("word/glossary/", r"document\.xml", _GLOSSARY_TYPES),
    )
    for group in groups:
        for name in group:
            if name.lower() not in done:
                done.add(name.lower())
                walker.walk(pkg, name)
    for name in pkg.parts_where("word/", r"(charts/chart|diagrams/data)\d*\.xml", _CHART_TYPES):
        if name.lower() not in done:
            done.add(name.lower())
            drawing_lines(pkg, name, sink)
    sink.lines(pkg.properties())
    flags = set(walker.flags) | pkg.macro_flags()
    return Extraction(
        text=sink.text(),
        flags=frozenset(flags),
        embedded=pkg.embedded("word/embeddings/"),
    )
