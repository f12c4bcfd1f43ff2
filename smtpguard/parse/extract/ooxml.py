"""Shared reading of zip-based office packages (Office Open XML and OpenDocument).

`Package` opens the zip once and checks every member's declared size and
compression ratio *before* anything is decompressed, then reads with a bounded
read, so a zip bomb or a lying header costs a few bytes of work. It also knows
the Open Packaging Conventions bits every OOXML format shares: content types,
relationships, document properties, macros and embedded objects. `TextSink`
collects output lines and cuts them at `limits.max_text_chars`.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote

from smtpguard.parse.extract import Embedded, Extraction, Uninspectable
from smtpguard.parse.extract.safexml import Node, iterparse, local, parse, release
from smtpguard.parse.model import Flag, Limits

__all__ = [
    "RATIO_FLOOR_BYTES",
    "Package",
    "Relationship",
    "TextSink",
    "drawing_lines",
    "guard",
    "natural_key",
    "open_package",
    "rel_type",
    "tags",
    "xml_iter",
]

# Below this uncompressed size the ratio check is skipped: a small member
# cannot be a bomb, and tiny repetitive XML parts legitimately compress well.
RATIO_FLOOR_BYTES = 1024 * 1024
_CHUNK = 1024 * 1024

_OFFICE_DOCUMENT = "officeDocument"
_CORE_PROPERTIES = "core-properties"
_EXTENDED_PROPERTIES = "extended-properties"
_CUSTOM_PROPERTIES = "custom-properties"
_VBA_CONTENT_TYPES = (
    "application/vnd.ms-office.vbaproject",
    "application/vnd.ms-excel.macrosheet+xml",
    "application/vnd.ms-excel.intlmacrosheet+xml",
)


@dataclass(frozen=True)
class Relationship:
    id: str
    type: str  # the last path segment of the relationship type URI, e.g. "header"
    target: str  # resolved member name, or the raw target when external
    external: bool


def rel_type(uri: str) -> str:
    """Reduce a relationship type URI to its last segment, same for Transitional and Strict."""
    return uri.rstrip("/").rpartition("/")[2]


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort header2.xml before header10.xml."""
    return tuple(
        (0, int(piece)) if piece.isdigit() else (1, piece.lower())
        for piece in re.split(r"(\d+)", name)
        if piece
    )


class Package:
    """A zip opened for hostile-input reading, with OPC helpers."""

    def __init__(self, data: bytes, limits: Limits, kind: str) -> None:
        self.kind = kind
        self.limits = limits
        self._read_total = 0
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except Exception as exc:  # zipfile raises many exception types on hostile input
            raise Uninspectable(f"not a valid {kind} file (the zip container is damaged)") from exc
        if len(infos) > limits.max_archive_members:
            raise Uninspectable(
                f"{kind} file has {len(infos)} parts, more than the limit of "
                f"{limits.max_archive_members}"
            )
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            key = info.filename.lower()
            if key in self._members:
                raise Uninspectable(f"{kind} file has two parts named {info.filename!r}")
            self._members[key] = info
        self._content_types: dict[str, str] | None = None

    # -- members ----------------------------------------------------------------

    def names(self) -> list[str]:
        """Member names as stored, directories left out."""
        return [i.filename for i in self._members.values() if not i.is_dir()]

    def has(self, name: str) -> bool:
        info = self._members.get(name.lstrip("/").lower())
        return info is not None and not info.is_dir()

    def read(self, name: str) -> bytes:
        """Read one member, refusing before decompression if it is too big or too compressed."""
        info = self._members.get(name.lstrip("/").lower())
        if info is None or info.is_dir():
            raise Uninspectable(f"{self.kind} file has no part {name!r}")
        limits = self.limits
        if info.flag_bits & 0x1:
            raise Uninspectable(f"{self.kind} file is password-protected ({name} is encrypted)")
        if info.file_size > limits.max_part_bytes:
            raise Uninspectable(
                f"{name} in the {self.kind} file is {info.file_size} bytes uncompressed, "
                f"over the limit of {limits.max_part_bytes}"
            )
        if (
            info.file_size > RATIO_FLOOR_BYTES
            and info.file_size / max(info.compress_size, 1) > limits.max_ratio
        ):
            raise Uninspectable(
                f"{name} in the {self.kind} file compresses {info.file_size} bytes into "
                f"{info.compress_size} (ratio over {limits.max_ratio:g}): a possible zip bomb"
            )
        if self._read_total + info.file_size > limits.max_extracted_bytes:
            raise Uninspectable(
                f"{self.kind} file unpacks to more than {limits.max_extracted_bytes} bytes"
            )
        bound = info.file_size
        chunks: list[bytes] = []
        got = 0
        try:
            with self._zip.open(info) as stream:
                while True:
                    chunk = stream.read(min(_CHUNK, bound + 1 - got))
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > bound:
                        raise Uninspectable(f"{name} holds more data than its zip header declares")
                    chunks.append(chunk)
        except Uninspectable:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise Uninspectable(f"{name} in the {self.kind} file is damaged ({exc})") from exc
        except NotImplementedError as exc:
            raise Uninspectable(
                f"{name} in the {self.kind} file uses an unsupported compression method"
            ) from exc
        except Exception as exc:  # RuntimeError and friends from zipfile internals
            raise Uninspectable(f"{name} in the {self.kind} file cannot be read ({exc})") from exc
        self._read_total += got
        return b"".join(chunks)

    def read_optional(self, name: str) -> bytes | None:
        return self.read(name) if self.has(name) else None

    # -- Open Packaging Conventions -------------------------------------------------

    def content_type(self, name: str) -> str:
        """The declared content type of a member ('' if none), lower-cased."""
        if self._content_types is None:
            self._content_types = self._load_content_types()
        name = "/" + name.lstrip("/").lower()
        found = self._content_types.get(name)
        if found is not None:
            return found
        ext = posixpath.splitext(name)[1].lstrip(".")
        return self._content_types.get("ext:" + ext, "")

    def _load_content_types(self) -> dict[str, str]:
        types: dict[str, str] = {}
        data = self.read_optional("[Content_Types].xml")
        if data is None:
            return types
        root = parse(data, "[Content_Types].xml")
        for child in root:
            kind = local(child.tag)
            ctype = (child.get("ContentType") or "").lower()
            if kind == "Default":
                types["ext:" + (child.get("Extension") or "").lower()] = ctype
            elif kind == "Override":
                types[(child.get("PartName") or "").lower()] = ctype
        return types

    def relationships(self, source: str) -> list[Relationship]:
        """Relationships of a part ('' for the package itself), targets resolved to member names."""
        folder, base = posixpath.split(source.lstrip("/"))
        rels_name = posixpath.join(folder, "_rels", base + ".rels")
        data = self.read_optional(rels_name)
        if data is None:
            return []
        rels: list[Relationship] = []
        for child in parse(data, rels_name):
            if local(child.tag) != "Relationship":
                continue
            target = child.get("Target") or ""
            external = (child.get("TargetMode") or "").lower() == "external"
            if not external:
                target = unquote(target.partition("#")[0])
                if target.startswith("/"):
                    target = target.lstrip("/")
                else:
                    target = posixpath.normpath(posixpath.join(folder, target))
                    target = target.lstrip("/") if not target.startswith("..") else ""
            rels.append(
                Relationship(
                    id=child.get("Id") or "",
                    type=rel_type(child.get("Type") or ""),
                    target=target,
                    external=external,
                )
            )
        return rels

    def main_part(self, default: str) -> str:
        """The main document part named by the package relationships, else the usual name."""
        for rel in self.relationships(""):
            if rel.type == _OFFICE_DOCUMENT and not rel.external and self.has(rel.target):
                return rel.target
        if self.has(default):
            return default
        raise Uninspectable(f"not a valid {self.kind} file (the main document part is missing)")

    def parts_where(self, folder: str, pattern: str, content_types: tuple[str, ...]) -> list[str]:
        """Members under `folder` matching `pattern` or carrying one of `content_types`."""
        regex = re.compile(pattern, re.IGNORECASE)
        found: list[str] = []
        for name in self.names():
            lower = name.lower()
            if not lower.endswith(".xml"):
                continue
            ctype = self.content_type(name)
            by_type = any(ctype.endswith(t) for t in content_types)
            if by_type or (lower.startswith(folder) and regex.fullmatch(lower[len(folder) :])):
                found.append(name)
        return sorted(found, key=natural_key)

    # -- shared features ----------------------------------------------------------

    def macro_flags(self) -> frozenset[str]:
        """MACROS if the package carries VBA code or Excel 4 macro sheets."""
        for name in self.names():
            lower = name.lower()
            if (
                posixpath.basename(lower) == "vbaproject.bin"
                or "/macrosheets/" in lower
                or self.content_type(name) in _VBA_CONTENT_TYPES
            ):
                return frozenset({Flag.MACROS})
        return frozenset()

    def embedded(self, folder: str) -> tuple[Embedded, ...]:
        """Embedded objects under e.g. 'word/embeddings/', for the caller to recurse into."""
        out: list[Embedded] = []
        for name in sorted(self.names(), key=natural_key):
            if name.lower().startswith(folder):
                out.append(Embedded(name=name, data=self.read(name)))
        return tuple(out)

    def properties(self) -> list[str]:
        """Document properties as 'name: value' lines (core, extended, custom)."""
        core = "docProps/core.xml"
        app = "docProps/app.xml"
        custom = "docProps/custom.xml"
        for rel in self.relationships(""):
            if rel.external or not self.has(rel.target):
                continue
            if rel.type == _CORE_PROPERTIES:
                core = rel.target
            elif rel.type == _EXTENDED_PROPERTIES:
                app = rel.target
            elif rel.type == _CUSTOM_PROPERTIES:
                custom = rel.target
        lines: list[str] = []
        data = self.read_optional(core)
        if data is not None:
            lines.extend(_core_lines(parse(data, core)))
        data = self.read_optional(app)
        if data is not None:
            root = parse(data, app)
            for child in root:
                name = local(child.tag)
                if name in _APP_FIELDS and child.text and child.text.strip():
                    lines.append(f"{_APP_FIELDS[name]}: {child.text.strip()}")
        data = self.read_optional(custom)
        if data is not None:
            for prop in parse(data, custom):
                prop_name = prop.get("name")
                if not prop_name:
                    continue
                value = " ".join(t.strip() for t in _texts(prop) if t.strip())
                if value:
                    lines.append(f"{prop_name}: {value}")
        return lines


_CORE_FIELDS = {
    "title": "title",
    "subject": "subject",
    "creator": "creator",
    "keywords": "keywords",
    "description": "description",
    "lastModifiedBy": "last modified by",
    "category": "category",
    "contentStatus": "status",
    "identifier": "identifier",
}
_APP_FIELDS = {"Company": "company", "Manager": "manager", "HyperlinkBase": "hyperlink base"}


def _texts(node: Node) -> Iterator[str]:
    for element in node.iter():
        if element.text:
            yield element.text


def _core_lines(root: Node) -> list[str]:
    lines: list[str] = []
    for child in root:
        name = local(child.tag)
        if name in _CORE_FIELDS:
            value = " ".join(t.strip() for t in _texts(child) if t.strip())
            if value:
                lines.append(f"{_CORE_FIELDS[name]}: {value}")
    return lines


def open_package(data: bytes, limits: Limits, kind: str) -> Package:
    """Open `data` as a zip package or raise Uninspectable('not a valid KIND file')."""
    if not data:
        raise Uninspectable(f"not a valid {kind} file (it is empty)")
    if data[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        raise Uninspectable(
            f"not a valid {kind} file (it is an OLE2 compound file: password-protected or legacy)"
        )
    if data[:2] != b"PK":
        raise Uninspectable(f"not a valid {kind} file (it is not a zip package)")
    return Package(data, limits, kind)


class TextSink:
    """Output lines, cut at `max_chars`; once full, further text is dropped (flags still count)."""

    def __init__(self, max_chars: int) -> None:
        self._max = max_chars
        self._lines: list[str] = []
        self._size = 0
        self.full = max_chars <= 0

    def line(self, text: str) -> None:
        if self.full:
            return
        room = self._max - self._size
        if len(text) + 1 > room:
            self._lines.append(text[:room])
            self._size = self._max
            self.full = True
            return
        self._lines.append(text)
        self._size += len(text) + 1

    def lines(self, texts: list[str]) -> None:
        for text in texts:
            self.line(text)

    def text(self) -> str:
        return "\n".join(self._lines)[: self._max]


def xml_iter(
    pkg: Package, name: str, events: tuple[str, ...] = ("end",), tags: tuple[str, ...] | None = None
) -> Iterator[tuple[str, Node]]:
    """Read a member and stream its XML events."""
    return iterparse(pkg.read(name), name, events, tags)


DRAWINGML = (
    "http://schemas.openxmlformats.org/drawingml/2006/main",
    "http://purl.oclc.org/ooxml/drawingml/main",
)
_CHART = (
    "http://schemas.openxmlformats.org/drawingml/2006/chart",
    "http://purl.oclc.org/ooxml/drawingml/chart",
)


def tags(namespaces: tuple[str, ...], *names: str) -> frozenset[str]:
    """Fully qualified tags for each local name in each namespace (Transitional and Strict)."""
    return frozenset(f"{{{ns}}}{name}" for ns in namespaces for name in names)


_A_P = tags(DRAWINGML, "p")
_A_T = tags(DRAWINGML, "t")
_A_BR = tags(DRAWINGML, "br")
_C_V = tags(_CHART, "v")


def drawing_lines(pkg: Package, name: str, sink: TextSink) -> None:
    """Text of a DrawingML part (chart, SmartArt data, sheet drawing): one line per paragraph.

    Chart parts also carry cached copies of the data they plot (`c:v`), which can
    outlive the cells they came from, so those values are kept too.
    """
    wanted = _A_P | _A_T | _A_BR | _C_V
    pieces: list[str] = []
    for _event, element in xml_iter(pkg, name, ("end",), tuple(wanted)):
        tag = element.tag
        if tag in _A_T:
            if element.text:
                pieces.append(element.text)
        elif tag in _A_BR:
            pieces.append("\n")
        elif tag in _A_P:
            text = "".join(pieces).strip()
            pieces.clear()
            if text:
                sink.line(text)
            release(element)
        elif tag in _C_V and element.text and element.text.strip():
            sink.line(element.text.strip())


def guard(
    kind: str, reader: Callable[[bytes, Limits], Extraction], data: bytes, limits: Limits
) -> Extraction:
    """Run a reader so that only an Extraction or Uninspectable can come out.

    The readers convert every failure they expect; this is the net for the ones they
    do not, so a surprise in hostile input still fails closed with a plain reason.
    """
    try:
        return reader(data, limits)
    except Uninspectable:
        raise
    except RecursionError:
        raise Uninspectable(f"{kind} is nested too deeply to read") from None
    except MemoryError:
        raise Uninspectable(f"{kind} is too large to read in memory") from None
    except Exception as exc:
        raise Uninspectable(f"{kind} could not be read (unexpected {type(exc).__name__})") from exc
