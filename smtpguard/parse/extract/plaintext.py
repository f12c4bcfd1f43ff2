"""Plain text, CSV/TSV, iCalendar and vCard: decode, then keep what a person would read.

One `extract` sniffs the content (calendar, card, delimited table, else text),
because mail clients label these parts inconsistently (`text/plain` for a
CSV, `application/octet-stream` for an .ics). Decoding never fails: a BOM
wins, then strict UTF-8, then cp1252, and latin-1 as the last resort, so a
spreadsheet saved by Excel in Windows-1252 still reads "Zoë", not "ZoÃ«".
"""

from __future__ import annotations

import codecs
import csv
import io
import quopri
import re
from collections.abc import Iterable, Iterator

from smtpguard.parse.extract import Extraction, Uninspectable
from smtpguard.parse.model import Limits

SNIFF_BYTES = 4096
CSV_DELIMITERS = ",;\t|"
CSV_SAMPLE_LINES = 20
CSV_CONSISTENCY = 0.8  # share of sampled rows that must have the sniffed number of cells

BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# iCalendar properties a person reads, with CN (common name) kept for people.
CALENDAR_PROPERTIES = frozenset(
    {"SUMMARY", "DESCRIPTION", "LOCATION", "ATTENDEE", "ORGANIZER", "COMMENT", "CONTACT"}
)
VCARD_PROPERTIES = frozenset(
    {"FN", "N", "EMAIL", "TEL", "ADR", "NOTE", "ORG", "TITLE", "BDAY", "NICKNAME", "LABEL"}
)
_CONTENT_LINE = re.compile(r"^(?:[A-Za-z0-9-]+\.)?([A-Za-z0-9-]+)((?:;[^:]*)?):(.*)$", re.DOTALL)
_PARAM = re.compile(r';([A-Za-z0-9-]+)=("[^"]*"|[^;:]*)')
_UNFOLD = re.compile(r"\r?\n[ \t]")
_ESCAPE = re.compile(r"\\([\\;,nN])")


def extract(data: bytes, limits: Limits) -> Extraction:
    """Sniff the kind of text and extract it; never raises for odd bytes, only for size."""
    _check_size(data, limits)
    text = decode_text(data)
    head = text[:SNIFF_BYTES].lstrip().upper()
    if head.startswith("BEGIN:VCALENDAR"):
        result = calendar_text(text)
    elif head.startswith("BEGIN:VCARD"):
        result = vcard_text(text)
    else:
        dialect = sniff_delimited(text[:SNIFF_BYTES])
        result = table_text(text, dialect) if dialect is not None else text
    return Extraction(text=_normalise(result)[: limits.max_text_chars])


def extract_csv(data: bytes, limits: Limits) -> Extraction:
    """A file known to be CSV/TSV: one row per line, a tab between cells."""
    _check_size(data, limits)
    text = decode_text(data)
    dialect = sniff_delimited(text[:SNIFF_BYTES], strict=False)
    result = table_text(text, dialect) if dialect is not None else text
    return Extraction(text=_normalise(result)[: limits.max_text_chars])


def extract_calendar(data: bytes, limits: Limits) -> Extraction:
    _check_size(data, limits)
    return Extraction(text=calendar_text(decode_text(data))[: limits.max_text_chars])


def extract_vcard(data: bytes, limits: Limits) -> Extraction:
    _check_size(data, limits)
    return Extraction(text=vcard_text(decode_text(data))[: limits.max_text_chars])


def _check_size(data: bytes, limits: Limits) -> None:
    if len(data) > limits.max_part_bytes:
        raise Uninspectable("text file is larger than the size limit")


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# decoding


def bom_encoding(data: bytes) -> tuple[str, int] | None:
    """The encoding a byte-order mark announces, and the mark's length."""
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return encoding, len(bom)
    return None


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Bytes to text without ever failing: BOM, declared charset, UTF-8, then cp1252/latin-1.

    A declared single-byte charset loses to bytes that are valid UTF-8 with
    non-ASCII in them: such text was almost always re-encoded on the way
    (a mail client decoding the part) and the declaration is stale.
    """
    bom = bom_encoding(data)
    if bom is not None:
        encoding, skip = bom
        return data[skip:].decode(encoding, errors="replace")
    codec = _codec(declared)
    if codec is not None and codec not in ("utf-8", "ascii"):
        if codec.startswith(("utf-16", "utf-32")):
            codec = None  # an ASCII-readable declaration cannot be UTF-16; the HTML spec agrees
        elif not (_is_utf8(data) and not data.isascii()):
            return data.decode(codec, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if _mostly_utf8(data):
        return data.decode("utf-8", errors="replace")
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # cp1252 leaves five bytes undefined; latin-1 has them all


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _mostly_utf8(data: bytes) -> bool:
    """UTF-8 with the odd bad byte (a truncated part, one pasted cp1252 character)."""
    decoded = data.decode("utf-8", errors="replace")
    bad = decoded.count("\ufffd")
    good = sum(1 for ch in decoded if ord(ch) > 0x7F and ch != "\ufffd")
    return good > 0 and bad <= good


# delimited tables


def sniff_delimited(sample: str, *, strict: bool = True) -> type[csv.Dialect] | None:
    """A CSV dialect if the sample looks like a table (several rows, same cell count), else None."""
    lines = [line for line in sample.splitlines() if line.strip()]
    if len(lines) < 2 and strict:
        return None
    if len(sample) == SNIFF_BYTES and len(lines) > 1:
        sample = sample[: sample.rfind("\n") + 1] or sample  # do not sniff a cut-off last line
    dialect: type[csv.Dialect] | None
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS)
    except csv.Error:
        dialect = None if strict else _guess_delimiter(lines)
    if dialect is None:
        return None
    if dialect.delimiter not in CSV_DELIMITERS:
        return None
    if strict and not _consistent(lines[:CSV_SAMPLE_LINES], dialect):
        return None
    if strict and _prose(lines[:CSV_SAMPLE_LINES], dialect):
        return None
    return dialect


def _prose(lines: list[str], dialect: type[csv.Dialect]) -> bool:
    """Sentences with one comma each look like two columns; a space after each comma tells."""
    if dialect.delimiter != ",":
        return False
    try:
        rows = list(csv.reader(lines, dialect))
    except csv.Error:
        return False
    if max((len(row) for row in rows), default=0) > 2:
        return False
    later = [cell for row in rows for cell in row[1:]]
    return bool(later) and sum(cell.startswith(" ") for cell in later) * 2 > len(later)


def _guess_delimiter(lines: list[str]) -> type[csv.Dialect] | None:
    if not lines:
        return None
    first = lines[0]
    best = max(CSV_DELIMITERS, key=first.count)
    if not first.count(best):
        return None
    return csv.excel_tab if best == "\t" else _dialect(best)


def _dialect(delimiter: str) -> type[csv.Dialect]:
    return type("Guessed", (csv.excel,), {"delimiter": delimiter})


def _consistent(lines: list[str], dialect: type[csv.Dialect]) -> bool:
    try:
        widths = [len(row) for row in csv.reader(lines, dialect)]
    except csv.Error:
        return False
    if len(widths) < 2:
        return False
    common = max(set(widths), key=widths.count)
    return common > 1 and widths.count(common) >= CSV_CONSISTENCY * len(widths)


def table_text(text: str, dialect: type[csv.Dialect]) -> str:
    """Rows as lines, cells joined by tabs; a row the csv module rejects is kept as it was."""
    out: list[str] = []
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    consumed = 0
    try:
        for row in reader:
            out.append("\t".join(cell.replace("\t", " ").strip() for cell in row))
            consumed = reader.line_num
    except csv.Error:  # an over-long field or a stray quote: keep the rest verbatim
        rest = text.splitlines()[consumed:]
        out.extend(rest)
    return "\n".join(out)


# iCalendar and vCard


def unfold(text: str) -> str:
    """RFC 5545/6350 line unfolding: a line break followed by one space or tab is removed."""
    return _UNFOLD.sub("", _normalise(text))


def _content_lines(text: str) -> Iterator[tuple[str, dict[str, str], str]]:
    for line in _join_quoted_printable(unfold(text).split("\n")):
        match = _CONTENT_LINE.match(line)
        if match is None:
            continue
        name, raw_params, value = match.groups()
        params = {key.upper(): val.strip('"') for key, val in _PARAM.findall(raw_params or "")}
        yield name.upper(), params, value


def _join_quoted_printable(lines: Iterable[str]) -> Iterator[str]:
    """vCard 2.1 quoted-printable values continue on the next line after a trailing '='."""
    pending = ""
    for line in lines:
        if pending:
            pending = pending[:-1] + line
        elif "QUOTED-PRINTABLE" in line.split(":", 1)[0].upper() and line.endswith("="):
            pending = line
        else:
            yield line
            continue
        if not pending.endswith("="):
            yield pending
            pending = ""
    if pending:
        yield pending


def _value(params: dict[str, str], value: str, *, unescape: bool = True) -> str:
    """A property value as text: quoted-printable and charset (vCard 2.1) undone, escapes too."""
    encoding = params.get("ENCODING", "").upper()
    if encoding in ("QUOTED-PRINTABLE", "QP"):
        raw = quopri.decodestring(value.encode("latin-1", errors="replace"))
        value = decode_text(raw, params.get("CHARSET"))
    elif encoding in ("B", "BASE64"):
        return ""  # a photo or a key, not text
    return _unescape(value) if unescape else value


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


def calendar_text(text: str) -> str:
    lines = []
    for name, params, raw in _content_lines(text):
        if name not in CALENDAR_PROPERTIES:
            continue
        value = _value(params, raw).strip()
        if name in ("ATTENDEE", "ORGANIZER"):
            address = re.sub(r"(?i)^mailto:", "", value)
            person = params.get("CN", "").strip()
            value = f"{person} <{address}>" if person else address
        if value:
            lines.append(f"{name}: {value}")
    return "\n".join(lines)


def vcard_text(text: str) -> str:
    lines: list[str] = []
    for name, params, raw in _content_lines(text):
        if name == "BEGIN" and raw.strip().upper() == "VCARD" and lines:
            lines.append("")  # a blank line between cards
        if name not in VCARD_PROPERTIES:
            continue
        structured = name in ("N", "ADR")
        value = _value(params, raw, unescape=not structured)
        if name == "N":
            parts = _split_components(value)
            # family; given; additional; prefix; suffix -> "prefix given additional family suffix"
            order = [3, 1, 2, 0, 4]
            value = " ".join(parts[i] for i in order if i < len(parts) and parts[i])
        elif name == "ADR":
            value = ", ".join(part for part in _split_components(value) if part)
        value = value.strip()
        if value:
            lines.append(f"{name}: {value}")
    return "\n".join(lines)


def _split_components(value: str) -> list[str]:
    """Split a structured value on unescaped ';', then unescape each component."""
    return [_unescape(part).strip() for part in re.split(r"(?<!\\);", value)]
