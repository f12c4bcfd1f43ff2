"""Safe XML parsing for attachment parts, which are hostile until proven otherwise.

Everything goes through lxml with entity resolution, DTD loading and network
access off, and `huge_tree` off so libxml2 keeps its limits on depth and text
size. On top of that, a document whose internal DTD declares anything (the
only place billion-laughs and external-entity payloads can live) is refused
outright: Office and OpenDocument parts never need one. A resolver that
answers every external lookup with nothing is installed as well, so no file or
URL is ever read even if libxml2 wanted to.

lxml ships no type information, so this module is the only one that touches
it; the rest of the package sees the small typed `Node` protocol below.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from lxml import etree  # type: ignore[import-untyped]

from smtpguard.parse.extract import Uninspectable

__all__ = ["Node", "iterparse", "local", "parse", "release"]


class Node(Protocol):
    """The part of an lxml element the extractors use."""

    tag: Any  # str for elements; lxml uses functions for comments and PIs
    text: str | None
    tail: str | None

    def get(self, key: str, default: None = None) -> str | None: ...

    def getparent(self) -> Node | None: ...

    def getprevious(self) -> Node | None: ...

    def iterchildren(self) -> Iterator[Node]: ...

    def iter(self, *tags: str) -> Iterator[Node]: ...

    def clear(self, keep_tail: bool = False) -> None: ...

    def __iter__(self) -> Iterator[Node]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Node: ...

    def __delitem__(self, index: int) -> None: ...


class _NoExternal(etree.Resolver):  # type: ignore[misc]
    """Answer every external entity or DTD lookup with an empty document."""

    def resolve(self, url: str, pubid: str, context: Any) -> Any:
        return self.resolve_string("", context)


_OPTIONS: dict[str, bool] = {
    "resolve_entities": False,
    "no_network": True,
    "huge_tree": False,
    "load_dtd": False,
    "dtd_validation": False,
    "attribute_defaults": False,
}


def _parser() -> Any:
    parser = etree.XMLParser(remove_comments=True, remove_pis=True, **_OPTIONS)
    parser.resolvers.add(_NoExternal())
    return parser


def _check_dtd(element: Any, part: str) -> None:
    """Refuse a document whose internal DTD declares entities or elements."""
    dtd = element.getroottree().docinfo.internalDTD
    if dtd is None:
        return
    if any(True for _ in dtd.iterentities()) or any(True for _ in dtd.iterelements()):
        raise Uninspectable(
            f"{part} declares XML entities (a possible entity-expansion or external-entity attack)"
        )


def _corrupt(part: str, exc: BaseException) -> Uninspectable:
    detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    return Uninspectable(f"{part} is not well-formed XML ({detail})")


def parse(data: bytes, part: str) -> Node:
    """Parse a whole (small) part and return its root element."""
    try:
        root = etree.fromstring(data, _parser())  # hardened parser above
    except (etree.LxmlError, ValueError, LookupError, RecursionError, MemoryError) as exc:
        raise _corrupt(part, exc) from None
    if root is None:
        raise Uninspectable(f"{part} is empty")
    _check_dtd(root, part)
    node: Node = root
    return node


def iterparse(
    data: bytes,
    part: str,
    events: tuple[str, ...] = ("end",),
    tags: Iterable[str] | None = None,
) -> Iterator[tuple[str, Node]]:
    """Stream (event, element) pairs from a part without building the whole tree up front.

    Callers should `release` elements they are done with so memory stays flat on a
    50,000-row sheet. Parse errors surface as `Uninspectable`.
    """
    kwargs: dict[str, Any] = dict(_OPTIONS)
    if tags is not None:
        kwargs["tag"] = tuple(tags)
    try:
        context = etree.iterparse(  # hardened options above
            io.BytesIO(data), events=events, remove_comments=True, remove_pis=True, **kwargs
        )
        context.resolvers.add(_NoExternal())
        checked = False
        for event, element in context:
            if not checked:
                _check_dtd(element, part)
                checked = True
            yield event, element
    except (etree.LxmlError, ValueError, LookupError, RecursionError, MemoryError) as exc:
        raise _corrupt(part, exc) from None


def local(tag: Any) -> str:
    """The local name of a tag, without its namespace ('' for comments and PIs)."""
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


def release(element: Node) -> None:
    """Free an element already read, and the siblings before it, during iterparse."""
    element.clear(keep_tail=True)
    parent = element.getparent()
    if parent is None:
        return
    while element.getprevious() is not None:
        del parent[0]
