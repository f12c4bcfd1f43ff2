"""HTML: the text a reader sees, plus the text a sender hid, flagged.

Parsed with selectolax's Lexbor backend (a WHATWG-conformant C parser, so
broken markup is repaired the way a browser would and entities decode the
same way). The walk is iterative, so deeply nested markup cannot exhaust
the Python stack.

Text made invisible (the `hidden` attribute, `display:none`,
`visibility:hidden`, zero font size or opacity, Outlook's `mso-hide:all`,
zero-height boxes with hidden overflow, text pushed far off-screen, text the
same colour as its background) is kept in reading order and sets
`Flag.HIDDEN_TEXT`: a DLP relay must read what the recipient's software can
reveal. Hiding through simple `<style>` rules (`.cls`, `#id`, `tag`,
`tag.cls`) is honoured; other selectors are not evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from selectolax.lexbor import LexborHTMLParser, LexborNode

from smtpguard.parse.extract import Extraction, Uninspectable
from smtpguard.parse.extract.plaintext import bom_encoding, decode_text
from smtpguard.parse.model import Flag, Limits

CHARSET_SCAN_BYTES = 4096  # the HTML standard stops at 1024; mail HTML is often sloppier
MAX_STYLE_CHARS = 256 * 1024  # of <style> text examined for hiding rules
# Lexbor's tree building is quadratic in nesting depth (100,000 nested <div>s take ~10 s);
# 10,000 costs ~0.1 s, and no mail client produces anything near it.
MAX_NESTING = 10_000
VOID_TAGS = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    ]
)
# Start tags that close an open sibling of their kind instead of nesting inside it.
SIBLING_TAGS = frozenset(
    ["p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "rb", "rt", "rp"]
)

BLOCK_TAGS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "caption",
        "center",
        "dd",
        "details",
        "dialog",
        "dir",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hgroup",
        "hr",
        "html",
        "legend",
        "li",
        "main",
        "menu",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "title",
        "tr",
        "ul",
        "option",
        "select",
        "textarea",
    ]
)
CELL_TAGS = frozenset({"td", "th"})
SKIP_TAGS = frozenset({"script", "style", "template", "head", "object", "embed", "iframe"})
PRE_TAGS = frozenset({"pre", "textarea", "listing", "plaintext", "xmp"})
META_NAMES = frozenset({"description", "keywords", "author", "subject"})
VALUE_INPUT_TYPES = frozenset({"", "text", "hidden", "email", "tel", "search", "url", "number"})

_META_CHARSET = re.compile(
    rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE
)
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)")
_SPACES = re.compile(r"[ \t\n\r\f\v\u00a0\u200b]+")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}")
_TRAILING = re.compile(r"[ \t]+\n")
_LENGTH = re.compile(r"^(-?[0-9]*\.?[0-9]+)\s*(px|pt|em|rem|%|ex|ch|vh|vw|cm|mm|in|pc)?$")
_HEX = re.compile(r"^#([0-9a-f]{3}|[0-9a-f]{6}|[0-9a-f]{8})$")
_RGB = re.compile(
    r"^rgba?\(\s*([0-9.]+)%?\s*[, ]\s*([0-9.]+)%?\s*[, ]\s*([0-9.]+)%?"
    r"\s*(?:[,/]\s*([0-9.]+%?))?\s*\)$"
)
_SIMPLE_SELECTOR = re.compile(r"^([a-z][a-z0-9]*)?(?:\.([\w-]+))?$|^#([\w-]+)$", re.IGNORECASE)

RGB = tuple[int, int, int]
NAMED_COLOURS: dict[str, RGB] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "red": (255, 0, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "silver": (192, 192, 192),
    "navy": (0, 0, 128),
    "windowtext": (0, 0, 0),
    "window": (255, 255, 255),
}
TRANSPARENT = "transparent"
DEFAULT_TEXT: RGB = (0, 0, 0)
DEFAULT_BACKGROUND: RGB = (255, 255, 255)


@dataclass(frozen=True)
class _Context:
    """What an element inherits: whether it is hidden, its text and background colours."""

    hidden: bool = False
    colour: RGB | None = DEFAULT_TEXT
    background: RGB | None = DEFAULT_BACKGROUND  # None: an image or unknown, do not judge
    pre: bool = False


@dataclass(frozen=True)
class _HidingRules:
    classes: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    tag_classes: frozenset[tuple[str, str]] = frozenset()


def extract(data: bytes, limits: Limits) -> Extraction:
    """Visible and hidden text of an HTML document; malformed markup is never an error."""
    if len(data) > limits.max_part_bytes:
        raise Uninspectable("HTML is larger than the size limit")
    return extract_text(decode_html(data), limits)


def decode_html(data: bytes) -> str:
    """BOM, then a `<meta>` charset, then UTF-8, then cp1252 (see `plaintext.decode_text`)."""
    if bom_encoding(data) is not None:
        return decode_text(data)
    match = _META_CHARSET.search(data[:CHARSET_SCAN_BYTES])
    declared = match.group(1).decode("ascii", errors="replace") if match else None
    return decode_text(data, declared)


def extract_text(html: str, limits: Limits) -> Extraction:
    """For callers that already hold the HTML as text (a TNEF body, an RTF-encapsulated page)."""
    if _too_deep(html):
        raise Uninspectable("HTML is nested too deeply to read safely")
    parser = LexborHTMLParser(html.replace("\x00", "\ufffd"))
    walker = _Walker(limits.max_text_chars, _hiding_rules(parser))
    root = parser.root
    if root is not None:
        walker.title(parser)
        walker.walk(root)
    return Extraction(text=walker.result()[: limits.max_text_chars], flags=walker.flags())


def _too_deep(html: str) -> bool:
    """A conservative estimate of element nesting (it over-counts unclosed tags)."""
    if html.count("<") <= MAX_NESTING:
        return False
    depth = 0
    for closing, name in _TAG.findall(html):
        tag = name.lower()
        if closing:
            depth = max(0, depth - 1)
        elif tag not in VOID_TAGS and tag not in SIBLING_TAGS:
            depth += 1
            if depth > MAX_NESTING:
                return True
    return False


class _Walker:
    def __init__(self, max_chars: int, rules: _HidingRules) -> None:
        self.out: list[str] = []
        self.size = 0
        self.max_chars = max_chars
        self.rules = rules
        self.hidden_seen = False

    def flags(self) -> frozenset[str]:
        return frozenset({Flag.HIDDEN_TEXT}) if self.hidden_seen else frozenset()

    def result(self) -> str:
        text = "".join(self.out)
        text = _TRAILING.sub("\n", text)
        return _BLANK_LINES.sub("\n\n", text).strip()

    def title(self, parser: LexborHTMLParser) -> None:
        """The <title> and the document's own description, which Lexbor keeps in <head>."""
        head = parser.head
        if head is None:
            return
        for node in head.traverse():
            tag = node.tag
            if tag == "title":
                self._text(node.text(deep=True), _Context())
                self._break()
            elif tag == "meta":
                attrs = node.attributes
                if (attrs.get("name") or "").strip().lower() in META_NAMES:
                    self._text(attrs.get("content") or "", _Context())
                    self._break()

    # output

    def _emit(self, text: str) -> None:
        if self.size <= self.max_chars and text:
            self.out.append(text)
            self.size += len(text)

    def _break(self) -> None:
        if self.out and not self.out[-1].endswith("\n"):
            self._emit("\n")

    def _text(self, text: str, context: _Context) -> None:
        if not context.pre:
            text = _SPACES.sub(" ", text)
            if (self.out and self.out[-1].endswith(("\n", " ", "\t"))) or not self.out:
                text = text.lstrip(" ")
        if not text:
            return
        if text.strip() and (context.hidden or _invisible_colour(context)):
            self.hidden_seen = True
        self._emit(text)

    def _extra(self, text: str | None, context: _Context) -> None:
        """An attribute shown as a tooltip or in place of an image: alt, title, value."""
        if text and text.strip():
            self._text(f" {text.strip()} ", context)

    # the walk

    def walk(self, root: LexborNode) -> None:
        stack: list[tuple[LexborNode, _Context, bool]] = [(root, _Context(), False)]
        while stack:
            if self.size > self.max_chars:
                return
            node, context, leaving = stack.pop()
            if leaving:
                self._leave(node)
                continue
            if node.is_text_node:
                self._text(node.text_content or "", context)
                continue
            if not node.is_element_node:
                continue  # comments, doctype
            tag = (node.tag or "").lower()
            if tag in SKIP_TAGS:
                continue
            inner = self._enter(node, tag, context)
            stack.append((node, inner, True))
            children: list[LexborNode] = []
            child = node.child
            while child is not None:
                children.append(child)
                child = child.next
            stack.extend((c, inner, False) for c in reversed(children))

    def _enter(self, node: LexborNode, tag: str, context: _Context) -> _Context:
        attrs = node.attributes
        inner = _inherit(tag, attrs, context, self.rules)
        if tag in BLOCK_TAGS or tag == "br":
            self._break()
        if tag == "br":
            return inner
        if tag in ("img", "area") or (tag == "input" and (attrs.get("type") or "") == "image"):
            self._extra(attrs.get("alt"), inner)
        if tag == "input":
            kind = (attrs.get("type") or "").strip().lower()
            if kind in VALUE_INPUT_TYPES:
                hidden = kind == "hidden"
                self._extra(attrs.get("value"), _Context(hidden=True) if hidden else inner)
        self._extra(attrs.get("title"), inner)
        return inner

    def _leave(self, node: LexborNode) -> None:
        tag = (node.tag or "").lower()
        if tag in CELL_TAGS:
            if self.out and not self.out[-1].endswith(("\n", "\t")):
                self.out[-1] = self.out[-1].rstrip(" ")
                self._emit("\t")
        elif tag in BLOCK_TAGS:
            self._break()


# hiding


def _inherit(
    tag: str, attrs: dict[str, str | None], parent: _Context, rules: _HidingRules
) -> _Context:
    """The context of an element: inherited from its parent, changed by its attributes and style."""
    hidden = parent.hidden or "hidden" in attrs
    colour = parent.colour
    background = parent.background
    classes = (attrs.get("class") or "").split()
    if (
        tag in rules.tags
        or any(c in rules.classes or (tag, c) in rules.tag_classes for c in classes)
        or (attrs.get("id") or "") in rules.ids
    ):
        hidden = True
    if tag == "font" and attrs.get("color"):
        colour = _parse_colour(attrs.get("color") or "", colour)
    if attrs.get("bgcolor"):
        background = _background(attrs.get("bgcolor") or "", background)
    style = attrs.get("style")
    if style:
        declarations = _declarations(style)
        hidden = hidden or _hides(declarations)
        if "color" in declarations:
            colour = _parse_colour(declarations["color"], colour)
        for key in ("background-color", "background"):
            if key in declarations:
                background = _background(declarations[key], background)
        if "background-image" in declarations and "none" not in declarations["background-image"]:
            background = None
    pre = parent.pre or tag in PRE_TAGS
    if (hidden, colour, background, pre) == (
        parent.hidden,
        parent.colour,
        parent.background,
        parent.pre,
    ):
        return parent
    return _Context(hidden=hidden, colour=colour, background=background, pre=pre)


def _invisible_colour(context: _Context) -> bool:
    """Text the colour of what is behind it (white on the default white page, black on black)."""
    if context.colour is None or context.background is None:
        return False
    return all(abs(a - b) <= 8 for a, b in zip(context.colour, context.background, strict=True))


def _declarations(style: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in style.split(";"):
        name, sep, value = item.partition(":")
        if sep:
            cleaned = value.lower().replace("!important", "").strip()
            found[name.strip().lower()] = cleaned
    return found


def _hides(declarations: dict[str, str]) -> bool:
    """Whether these CSS declarations make an element's text invisible to a reader."""
    get = declarations.get
    if get("display") == "none" or get("visibility") in ("hidden", "collapse"):
        return True
    if get("mso-hide") == "all":
        return True
    size = _length(get("font-size"))
    if size is not None and size <= 1.0:
        return True
    opacity = _number(get("opacity"))
    if opacity is not None and opacity <= 0.05:
        return True
    if (
        get("overflow") == "hidden"
        or get("overflow-y") == "hidden"
        or get("overflow-x") == "hidden"
    ):
        for key in ("height", "max-height", "width", "max-width"):
            length = _length(get(key))
            if length is not None and length <= 1.0:
                return True
    for key in ("text-indent", "left", "top", "margin-left", "margin-top"):
        length = _length(get(key))
        if length is not None and length <= -999:
            return True
    return False


def _length(value: str | None) -> float | None:
    if not value:
        return None
    match = _LENGTH.match(value.strip())
    if match is None:
        return None
    return float(match.group(1))


def _number(value: str | None) -> float | None:
    if not value:
        return None
    text = value.strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def _parse_colour(value: str, fallback: RGB | None) -> RGB | None:
    parsed = _colour(value)
    if parsed == TRANSPARENT:
        return None
    return parsed if isinstance(parsed, tuple) else fallback


def _background(value: str, fallback: RGB | None) -> RGB | None:
    """The colour of a `background` shorthand or `bgcolor`; an image makes it unknown."""
    if "url(" in value or "gradient(" in value:
        return None
    for token in _tokens(value):
        parsed = _colour(token)
        if parsed == TRANSPARENT:
            return fallback
        if isinstance(parsed, tuple):
            return parsed
    return fallback


def _tokens(value: str) -> list[str]:
    """Split a CSS value on spaces, keeping `rgb(...)` whole."""
    return re.findall(r"rgba?\([^)]*\)|[^\s]+", value)


def _colour(value: str) -> RGB | str | None:
    text = value.strip().lower()
    if text in ("transparent", "none"):
        return TRANSPARENT
    if text in NAMED_COLOURS:
        return NAMED_COLOURS[text]
    match = _HEX.match(text) or (_HEX.match("#" + text) if len(text) in (3, 6) else None)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(ch * 2 for ch in digits)
        if len(digits) == 8 and int(digits[6:], 16) < 13:
            return TRANSPARENT
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    match = _RGB.match(text)
    if match:
        alpha = _number(match.group(4)) if match.group(4) else 1.0
        if alpha is not None and alpha <= 0.05:
            return TRANSPARENT
        channels = [min(255, int(float(match.group(i)))) for i in (1, 2, 3)]
        return (channels[0], channels[1], channels[2])
    return None


def _hiding_rules(parser: LexborHTMLParser) -> _HidingRules:
    """Simple selectors in <style> blocks whose declarations hide text."""
    sheets: list[str] = []
    budget = MAX_STYLE_CHARS
    for node in parser.css("style"):
        text = node.text(deep=True)[:budget]
        budget -= len(text)
        sheets.append(text)
        if budget <= 0:
            break
    if not sheets:
        return _HidingRules()
    css = re.sub(r"/\*.*?\*/", " ", "\n".join(sheets), flags=re.DOTALL)
    css = css.replace("<!--", " ").replace("-->", " ")
    classes: set[str] = set()
    ids: set[str] = set()
    tags: set[str] = set()
    tag_classes: set[tuple[str, str]] = set()
    for chunk in css.split("}"):  # linear: never a regex across the whole sheet
        head, sep, body = chunk.rpartition("{")
        if not sep or not _hides(_declarations(body)):
            continue
        selectors = re.split(r"[{};]", head)[-1]
        for selector in selectors.split(","):
            match = _SIMPLE_SELECTOR.match(selector.strip())
            if match is None:
                continue
            tag, cls, ident = match.groups()
            if ident:
                ids.add(ident)
            elif tag and cls:
                tag_classes.add((tag.lower(), cls))
            elif cls:
                classes.add(cls)
            elif tag:
                tags.add(tag.lower())
    return _HidingRules(frozenset(classes), frozenset(ids), frozenset(tags), frozenset(tag_classes))
