"""RTF: body text, headers and footers, comments, hidden text, properties and embedded objects.

A small tokenizer of our own rather than striprtf: striprtf drops headers,
footers, footnotes and comments (where protective markings and reviewers'
remarks live), cannot tell hidden (`\\v`) text or tracked deletions apart,
throws embedded objects away, leaves UTF-16 surrogate pairs split, and runs
regular expressions across the whole document that backtrack badly on hostile
input. This tokenizer is one linear pass with an explicit group stack, so
unbalanced or absurdly nested braces cost nothing extra and never raise.

Character set: `\\ansicpg`, per-font `\\fcharset`/`\\cpg`, `\\'hh` escapes and raw
8-bit bytes are decoded in the code page in force; `\\uN` (with `\\ucN`
fallback skipping) gives Unicode directly. `{\\*\\...}` destinations are
ignored unless listed below as text we keep.
"""

from __future__ import annotations

import codecs
import re
import struct
from dataclasses import dataclass, field

from smtpguard.parse.extract import Embedded, Extraction, Uninspectable
from smtpguard.parse.model import Flag, Limits

_TOKEN = re.compile(
    rb"\\([a-zA-Z]{1,32})(-?[0-9]{1,10})? ?"  # control word with optional parameter
    rb"|\\'([0-9a-fA-F]{2})"  # byte in the current code page
    rb"|\\([^a-zA-Z])"  # control symbol
    rb"|([{}])"  # group
    rb"|[\r\n]+"  # line breaks in the source mean nothing
    rb"|([^\\{}\r\n]+)"  # a run of text
    rb"|\\",  # a lone backslash at the very end
    re.DOTALL,
)
_NOT_HEX = re.compile(rb"[^0-9a-fA-F]")

# \fcharset values (font character sets) to Python codecs; 0 and 1 mean the document's.
CHARSETS = {
    2: "cp1252",
    77: "mac_roman",
    128: "cp932",
    129: "cp949",
    130: "johab",
    134: "gbk",
    136: "cp950",
    161: "cp1253",
    162: "cp1254",
    163: "cp1258",
    177: "cp1255",
    178: "cp1256",
    186: "cp1257",
    204: "cp1251",
    222: "cp874",
    238: "cp1250",
    254: "cp437",
    255: "cp850",
}

SPECIAL_WORDS = {
    "par": "\n",
    "line": "\n",
    "sect": "\n",
    "page": "\n",
    "row": "\n",
    "tab": "\t",
    "cell": "\t",
    "nestcell": "\t",
    "emdash": "\u2014",
    "endash": "\u2013",
    "bullet": "\u2022",
    "lquote": "\u2018",
    "rquote": "\u2019",
    "ldblquote": "\u201c",
    "rdblquote": "\u201d",
    "emspace": " ",
    "enspace": " ",
    "qmspace": " ",
}
SPECIAL_SYMBOLS = {"~": " ", "_": "-", "{": "{", "}": "}", "\\": "\\", "\n": "\n", "\r": "\n"}

# Destinations whose text we keep, and where it goes.
NOTES = "notes"
COMMENTS = "comments"
BODY = "body"
SKIP = "skip"
CONTAINER = "container"  # body text, but a group that text-keeping groups nest in
INFO = "info"  # document properties: only the named fields inside are read
KEEP = "keep"  # a group that writes to wherever its parent writes (field results, shapes)
OBJDATA = "objdata"
OBJCLASS = "objclass"
PROPNAME = "propname"
STATICVAL = "staticval"
FONTTABLE = "fonttbl"

DESTINATIONS: dict[str, str] = {
    **{
        name: NOTES
        for name in (
            [
                "header",
                "headerl",
                "headerr",
                "headerf",
                "footer",
                "footerl",
                "footerr",
                "footerf",
                "footnote",
            ]
        )
    },
    "annotation": COMMENTS,
    "fldrslt": KEEP,
    "result": KEEP,
    "shptxt": KEEP,
    "dptxbxtext": KEEP,
    "field": KEEP,
    "shp": KEEP,
    "shpinst": KEEP,
    "shpgrp": KEEP,
    "upr": KEEP,  # {\upr{ANSI text}{\*\ud{Unicode text}}}: we read the first, skip \ud
    "object": CONTAINER,
    "info": INFO,
    "userprops": INFO,
    "objdata": OBJDATA,
    "objclass": OBJCLASS,
    "propname": PROPNAME,
    "staticval": STATICVAL,
    "fonttbl": FONTTABLE,
}
INFO_FIELDS = {
    "title": "Title",
    "subject": "Subject",
    "author": "Author",
    "manager": "Manager",
    "company": "Company",
    "operator": "Last saved by",
    "category": "Category",
    "keywords": "Keywords",
    "comment": "Comments",
    "doccomm": "Comments",
    "hlinkbase": "Hyperlink base",
}
# Destinations with no readable text (tables, pictures, field codes, bookmarks, ...).
SKIPPED = frozenset(
    [
        "aftncn",
        "aftnsep",
        "aftnsepc",
        "atnauthor",
        "atndate",
        "atnicn",
        "atnid",
        "atnparent",
        "atnref",
        "atntime",
        "atrfend",
        "atrfstart",
        "background",
        "bkmkend",
        "bkmkstart",
        "blipuid",
        "buptim",
        "colortbl",
        "colorschememapping",
        "creatim",
        "datafield",
        "datastore",
        "defchp",
        "defpap",
        "do",
        "docvar",
        "ebcend",
        "ebcstart",
        "edmins",
        "factoidname",
        "falt",
        "fchars",
        "ffdeftext",
        "ffentrymcr",
        "ffexitmcr",
        "ffformat",
        "ffhelptext",
        "ffl",
        "ffname",
        "ffstattext",
        "file",
        "filetbl",
        "fldinst",
        "fldtype",
        "fname",
        "fontemb",
        "fontfile",
        "formfield",
        "ftncn",
        "ftnsep",
        "ftnsepc",
        "g",
        "generator",
        "gridtbl",
        "hl",
        "hlfr",
        "hlinkbase",
        "hlloc",
        "hlsrc",
        "hsv",
        "htmltag",
        "keycode",
        "latentstyles",
        "lchars",
        "levelnumbers",
        "leveltext",
        "lfolevel",
        "linkval",
        "list",
        "listlevel",
        "listname",
        "listoverride",
        "listoverridetable",
        "listpicture",
        "liststylename",
        "listtable",
        "lsdlockedexcept",
        "mhtmltag",
        "mmathPr",
        "nonshppict",
        "nesttableprops",
        "objalias",
        "objname",
        "objsect",
        "objtime",
        "oldcprops",
        "oldpprops",
        "oldsprops",
        "oldtprops",
        "oleclsid",
        "operator",
        "panose",
        "password",
        "passwordhash",
        "pgdsctbl",
        "pgp",
        "pgptbl",
        "picprop",
        "pict",
        "pn",
        "pnseclvl",
        "pntext",
        "pntxta",
        "pntxtb",
        "printim",
        "private",
        "propname",
        "protend",
        "protstart",
        "protusertbl",
        "pxe",
        "revtbl",
        "revtim",
        "rsidtbl",
        "rxe",
        "shprslt",
        "sn",
        "sp",
        "stylesheet",
        "sv",
        "tc",
        "template",
        "themedata",
        "txe",
        "ud",
        "wgrffmtfilter",
        "windowcaption",
        "writereservation",
        "writereservhash",
        "xe",
        "xform",
        "xmlattrname",
        "xmlattrvalue",
        "xmlclose",
        "xmlname",
        "xmlnstbl",
        "xmlopen",
    ]
) - {"propname"}


@dataclass
class _State:
    """Group-scoped properties, copied when a group opens and dropped when it closes."""

    dest: str = BODY
    uc: int = 1
    hidden: bool = False
    font: str = ""
    info: str = ""  # the document property this group's text belongs to
    star: bool = False  # just saw \\* : the next control word names an optional destination

    def copy(self) -> _State:
        return _State(self.dest, self.uc, self.hidden, self.font, self.info, False)


@dataclass
class _Sinks:
    body: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    props: list[str] = field(default_factory=list)


def extract(data: bytes, limits: Limits) -> Extraction:
    """Best-effort text of an RTF document; malformed input yields what could be read."""
    if len(data) > limits.max_part_bytes:
        raise Uninspectable("RTF is larger than the size limit")
    return _Parser(data, limits).run()


class _Parser:
    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.limits = limits
        self.sinks = _Sinks()
        self.size = 0
        self.flags: set[str] = set()
        self.embedded: list[Embedded] = []
        self.document_codec = "cp1252"
        self.font_codecs: dict[str, str] = {}
        self.default_font = ""
        self.defining_font = ""
        self.pending = bytearray()  # text bytes waiting to be decoded together (DBCS pairs)
        self.pending_state: _State | None = None
        self.high_surrogate = 0
        self.skip = 0  # fallback bytes still to skip after a \\uN
        self.group_text: list[list[str]] = []  # text of info/userprops groups being read
        self.objdata: bytearray | None = None
        self.objclass: list[str] = []
        self.propname = ""

    def run(self) -> Extraction:
        state = _State()
        stack: list[_State] = []
        data = self.data
        pos = 0
        end = len(data)
        while pos < end:
            match = _TOKEN.match(data, pos)
            if match is None:  # cannot happen: the last alternative matches any byte left
                break
            pos = match.end()
            word, arg, hexbyte, symbol, brace, text = match.groups()
            if text is not None:
                self._text_bytes(text, state)
                continue
            if hexbyte is not None:
                self._text_bytes(bytes.fromhex(hexbyte.decode("ascii")), state)
                continue
            self._flush()
            if brace is not None:
                self.skip = 0
                if brace == b"{":
                    stack.append(state)
                    state = state.copy()
                else:
                    self._close(state, stack[-1] if stack else None)
                    state = stack.pop() if stack else _State()
                continue
            if symbol is not None:
                self._symbol(symbol.decode("latin-1"), state)
                continue
            if word is not None:
                name = word.decode("ascii")
                param = int(arg) if arg is not None else None
                if name == "bin" and param is not None and param > 0:
                    chunk = data[pos : pos + param]
                    pos += param
                    if state.dest == OBJDATA and self.objdata is not None:
                        self.objdata.extend(chunk.hex().encode("ascii"))
                    continue
                self._word(name, param, state)
        self._flush()
        return self._result()

    # decoding and output

    def _codec(self, state: _State) -> str:
        return self.font_codecs.get(state.font or self.default_font, self.document_codec)

    def _text_bytes(self, raw: bytes, state: _State) -> None:
        if self.skip:
            dropped = min(self.skip, len(raw))
            self.skip -= dropped
            raw = raw[dropped:]
            if not raw:
                return
        if state.dest == SKIP or state.dest == FONTTABLE:
            return
        if state.dest == OBJDATA:
            if self.objdata is not None and len(self.objdata) < 2 * self.limits.max_part_bytes:
                self.objdata.extend(_NOT_HEX.sub(b"", raw))
            return
        if self.pending_state is not state:
            self._flush()
            self.pending_state = state
        self.pending.extend(raw)

    def _flush(self) -> None:
        if not self.pending or self.pending_state is None:
            return
        state = self.pending_state
        text = bytes(self.pending).decode(self._codec(state), errors="replace")
        self.pending.clear()
        self.pending_state = None
        self._emit(text, state)

    def _emit(self, text: str, state: _State) -> None:
        if self.high_surrogate:
            self.high_surrogate = 0
            text = "\ufffd" + text
        if state.dest in (SKIP, FONTTABLE, OBJDATA) or not text:
            return
        if self.size > self.limits.max_text_chars:
            return
        self.size += len(text)
        if state.hidden and text.strip():
            self.flags.add(Flag.HIDDEN_TEXT)
        if state.info or state.dest in (PROPNAME, STATICVAL, OBJCLASS):
            if self.group_text:
                self.group_text[-1].append(text)
            return
        if state.dest == NOTES:
            self.sinks.notes.append(text)
        elif state.dest == COMMENTS:
            if text.strip():
                self.flags.add(Flag.COMMENTS)
            self.sinks.comments.append(text)
        elif state.dest in (BODY, CONTAINER):
            self.sinks.body.append(text)

    def _unicode(self, value: int, state: _State) -> None:
        if value < 0:
            value += 0x10000  # \uN is a signed 16-bit number
        if not 0 <= value <= 0xFFFF:
            value = 0xFFFD
        self.skip = state.uc
        if 0xD800 <= value < 0xDC00:
            if self.high_surrogate:
                self._emit("", state)
            self.high_surrogate = value
            return
        if 0xDC00 <= value < 0xE000:
            if self.high_surrogate:
                combined = 0x10000 + ((self.high_surrogate - 0xD800) << 10) + (value - 0xDC00)
                self.high_surrogate = 0
                self._emit(chr(combined), state)
            else:
                self._emit("\ufffd", state)
            return
        self._emit(chr(value), state)

    # groups

    def _open_destination(self, dest: str, state: _State) -> None:
        if dest == KEEP:
            if state.dest not in (BODY, NOTES, COMMENTS):
                state.dest = BODY  # field results inside an object or a property group
            return
        if dest in (PROPNAME, STATICVAL, OBJCLASS) or state.info:
            self.group_text.append([])
        if dest == OBJDATA:
            self.objdata = bytearray()
        state.dest = dest

    def _close(self, state: _State, parent: _State | None) -> None:
        """Finish what a destination group collected when the group ends."""
        parent_dest = parent.dest if parent is not None else BODY
        parent_info = parent.info if parent is not None else ""
        if state.info and state.info != parent_info:
            value = "".join(self.group_text.pop() if self.group_text else []).strip()
            if value:
                self.sinks.props.append(f"{state.info}: {value}")
        elif state.dest != parent_dest:
            if state.dest == PROPNAME and self.group_text:
                self.propname = "".join(self.group_text.pop()).strip()
            elif state.dest == STATICVAL and self.group_text:
                value = "".join(self.group_text.pop()).strip()
                if value:
                    label = self.propname or "Property"
                    self.sinks.props.append(f"{label}: {value}")
            elif state.dest == OBJCLASS and self.group_text:
                self.objclass.append("".join(self.group_text.pop()).strip())
            elif state.dest == OBJDATA and self.objdata is not None:
                self._object(bytes(self.objdata))
                self.objdata = None
            elif state.dest == COMMENTS:
                self.sinks.comments.append("\n")
            elif state.dest == NOTES:
                self.sinks.notes.append("\n")

    def _object(self, hexdata: bytes) -> None:
        """An embedded OLE object: hand its file to the caller to read in turn."""
        if len(hexdata) < 2:
            return
        try:
            raw = bytes.fromhex(hexdata[: len(hexdata) - len(hexdata) % 2].decode("ascii"))
        except ValueError:
            return
        classname = self.objclass[-1] if self.objclass else ""
        name, payload = _ole1_payload(raw)
        if len(self.embedded) >= self.limits.max_archive_members:
            raise Uninspectable("RTF has more embedded objects than the limit")
        index = len(self.embedded) + 1
        label = name or f"embedded-object-{index}" + (f" ({classname})" if classname else "")
        self.embedded.append(Embedded(name=label, data=payload))

    # control words and symbols

    def _symbol(self, symbol: str, state: _State) -> None:
        if symbol == "*":
            state.star = True
            return
        if symbol == "'":
            return  # a \\' without two hex digits
        self.skip = 0
        if symbol in SPECIAL_SYMBOLS:
            self._emit(SPECIAL_SYMBOLS[symbol], state)

    def _word(self, name: str, param: int | None, state: _State) -> None:
        star, state.star = state.star, False
        if state.dest == SKIP:
            return
        if name == "u" and param is not None:
            self._unicode(param, state)
            return
        self.skip = 0
        if state.dest == FONTTABLE:
            self._font_table(name, param)
            return
        if name in DESTINATIONS:
            self._open_destination(DESTINATIONS[name], state)
            return
        if state.dest == INFO and name in INFO_FIELDS and not state.info:
            state.info = INFO_FIELDS[name]
            self._open_destination(state.dest, state)
            return
        if star or name in SKIPPED:
            state.dest = SKIP
            return
        if name in SPECIAL_WORDS:
            self._emit(SPECIAL_WORDS[name], state)
        elif name == "v":
            state.hidden = param != 0
        elif name == "plain":
            state.hidden = False
        elif name == "uc" and param is not None:
            state.uc = max(0, min(param, 16))
        elif name == "f" and param is not None:
            state.font = str(param)
        elif name == "deff" and param is not None:
            self.default_font = str(param)
        elif name == "ansicpg" and param is not None:
            self.document_codec = _codepage(param) or self.document_codec
        elif name in ("mac", "pc", "pca"):
            self.document_codec = {"mac": "mac_roman", "pc": "cp437", "pca": "cp850"}[name]
        elif name in ("deleted", "revised") and param != 0:
            self.flags.add(Flag.TRACKED_CHANGES)

    def _font_table(self, name: str, param: int | None) -> None:
        if name == "f" and param is not None:
            self.defining_font = str(param)
        elif name == "fcharset" and param is not None:
            codec = CHARSETS.get(param)
            if codec is not None:
                self.font_codecs[self.defining_font] = codec
        elif name == "cpg" and param is not None:
            codec = _codepage(param)
            if codec is not None:
                self.font_codecs[self.defining_font] = codec

    def _result(self) -> Extraction:
        parts = ["".join(self.sinks.body).strip()]
        for title, sink in (("", self.sinks.notes), ("Comments:\n", self.sinks.comments)):
            text = "".join(sink).strip()
            if text:
                parts.append(title + text)
        if self.sinks.props:
            parts.append("\n".join(self.sinks.props))
        text = "\n\n".join(part for part in parts if part)
        text = re.sub(r"[ \t]+\n", "\n", text)
        return Extraction(
            text=text[: self.limits.max_text_chars],
            flags=frozenset(self.flags),
            embedded=tuple(self.embedded),
        )


def _codepage(number: int) -> str | None:
    if number == 65001:
        return "utf-8"
    try:
        return codecs.lookup(f"cp{number}").name
    except LookupError:
        return None


def _ole1_payload(raw: bytes) -> tuple[str, bytes]:
    """The file inside an OLE1 object (MS-OLEDS 2.2): a packaged file's own bytes and name,
    or the native data (often a compound file) of anything else; the raw bytes if unparsable.
    """
    try:
        offset = 8  # OLEVersion, FormatID
        if struct.unpack_from("<I", raw, 4)[0] != 2:  # not "embedded"
            return "", raw
        names = []
        for _ in range(3):  # ClassName, TopicName, ItemName
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            names.append(raw[offset : offset + length].rstrip(b"\x00").decode("latin-1"))
            offset += length
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        native = raw[offset : offset + size]
        if names[0].lower() == "package":
            return _package(native)
        return "", native
    except (struct.error, IndexError):
        return "", raw


def _package(native: bytes) -> tuple[str, bytes]:
    """An "Object Packager" wrapper: label, paths, then the file itself."""
    try:
        offset = 2  # type
        label_end = native.index(b"\x00", offset)
        label = native[offset:label_end].decode("cp1252", errors="replace")
        path_end = native.index(b"\x00", label_end + 1)
        offset = path_end + 1 + 8  # two 32-bit fields: flags and the temp path's length
        temp_end = native.index(b"\x00", offset)
        (size,) = struct.unpack_from("<I", native, temp_end + 1)
        start = temp_end + 5
        body = native[start : start + size]
        filename = label.replace("\\", "/").rsplit("/", 1)[-1]
        return filename, body
    except (ValueError, struct.error):
        return "", native
