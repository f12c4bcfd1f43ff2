"""One pass of Hyperscan over a text finds where each detector could match.

Running thirteen Python regexes over every byte of every attachment costs
about 5 MB/s; most of those bytes are prose no detector cares about. A
detector that declares `triggers` (Hyperscan expressions that every one of its
hits lies near) and a `reach` (how many characters before and after a trigger
it reads, context words included) is run only on the short windows around its
triggers. All triggers of all detectors are compiled into one database and
found in one scan.

Correctness rests on each trigger being a superset of what its detector
finds; `tests/detect/test_prefilter.py` compares windowed and whole-text
results over corpora and generated text. A hit is kept only when it lies
inside its window by `GUARD` characters (unless the window reaches the
text's edge), so a window's cut cannot invent a match or change its
confidence. Triggers are ASCII patterns: digits written in other scripts are
not triggers.

Without the `hyperscan` module (a platform with no wheel), every detector
reads the whole text: slower, same findings.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from smtpguard.detect.base import Detector, Hit

try:
    import hyperscan
except ImportError:  # pragma: no cover - exercised only where no wheel exists
    hyperscan = None  # type: ignore[assignment]

# Context a detector may consult outside its hit (lookarounds, the 40
# characters before a number where "NHS" would be).
GUARD = 64

_UTF8_CONTINUATION = bytes(range(0x80, 0xC0))
_PYTHON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


@runtime_checkable
class Triggered(Protocol):
    """A detector the prefilter can serve."""

    triggers: tuple[str, ...]
    reach: tuple[int, int]  # characters before and after a trigger


@dataclass(frozen=True)
class _Compiled:
    database: Any
    owners: tuple[int, ...]  # expression id -> index into the detector tuple
    approximate: tuple[bool, ...]  # expression id -> matched in prefilter mode (no start)
    triggered: tuple[bool, ...]  # detector index -> read only around its triggers


def available() -> bool:
    return hyperscan is not None


@functools.lru_cache(maxsize=8)
def _compile(detectors: tuple[Detector, ...]) -> _Compiled | None:
    if hyperscan is None:
        return None
    expressions: list[bytes] = []
    flags: list[int] = []
    owners: list[int] = []
    triggered: list[bool] = []
    for index, detector in enumerate(detectors):
        compiled = _triggers_of(detector)
        triggered.append(compiled is not None)
        for expression, flag in compiled or ():
            expressions.append(expression)
            flags.append(flag)
            owners.append(index)
    if not expressions:
        return None
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(
        expressions=expressions,
        ids=list(range(len(expressions))),
        elements=len(expressions),
        flags=flags,
    )
    approximate = tuple(not f & hyperscan.HS_FLAG_SOM_LEFTMOST for f in flags)
    return _Compiled(database, tuple(owners), approximate, tuple(triggered))


def _triggers_of(detector: Detector) -> list[tuple[bytes, int]] | None:
    """A detector's triggers with their flags; None when it must read the whole text."""
    if not isinstance(detector, Triggered) or not detector.triggers:
        return None
    compiled = []
    for trigger in detector.triggers:
        expression = _PYTHON_ESCAPE.sub(r"\\x{\1}", trigger).encode()
        flag = _flags_for(expression)
        if flag is None:
            return None
        compiled.append((expression, flag))
    return compiled


def _flags_for(expression: bytes) -> int | None:
    """Exact with start offsets where Hyperscan supports the expression; else approximate.

    An admin's case reference pattern may use lookarounds, which Hyperscan
    matches only in prefilter mode (a superset, end offsets only): the
    detector's `reach` before then counts from the end of the match. A
    pattern Hyperscan cannot read at all (None) leaves its detector reading
    the whole text.
    """
    exact = hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_SOM_LEFTMOST
    for flag in (exact, hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_PREFILTER):
        try:
            hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK).compile(
                expressions=[expression], ids=[0], elements=1, flags=[flag]
            )
        except hyperscan.error:
            continue
        return flag
    return None


def scan_detectors(text: str, detectors: Sequence[Detector]) -> list[tuple[Detector, Hit]]:
    """Every detector's hits over `text`, as if each had read all of it."""
    found: list[tuple[Detector, Hit]] = []
    compiled = _compile(tuple(detectors)) if text else None
    if compiled is None:
        for detector in detectors:
            found += [(detector, hit) for hit in detector.scan(text)]
        return found
    spans = _trigger_spans(text, compiled)
    for index, detector in enumerate(detectors):
        if not compiled.triggered[index]:
            found += [(detector, hit) for hit in detector.scan(text)]
        elif index in spans:
            triggered: Any = detector
            found += [(detector, hit) for hit in _scan_windows(text, triggered, spans[index])]
    return found


def _trigger_spans(text: str, compiled: _Compiled) -> dict[int, list[tuple[int, int]]]:
    """Character spans of every trigger match, per detector index."""
    encoded = text.encode("utf-8", "replace")
    raw: list[tuple[int, int, int]] = []

    def on_match(expression: int, start: int, end: int, flags: int, context: object) -> None:
        if compiled.approximate[expression]:
            start = end
        raw.append((compiled.owners[expression], start, end))

    compiled.database.scan(encoded, match_event_handler=on_match)
    if len(encoded) != len(text):
        raw = _to_characters(encoded, raw)
    spans: dict[int, list[tuple[int, int]]] = {}
    for owner, start, end in raw:
        spans.setdefault(owner, []).append((start, end))
    return spans


def _to_characters(encoded: bytes, raw: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Byte offsets to character offsets, walking the text once in order."""
    offsets = sorted({offset for _, start, end in raw for offset in (start, end)})
    position = {0: 0}
    byte_at, char_at = 0, 0
    for offset in offsets:
        segment = encoded[byte_at:offset]
        char_at += len(segment.translate(None, _UTF8_CONTINUATION))
        byte_at = offset
        position[offset] = char_at
    return [(owner, position[start], position[end]) for owner, start, end in raw]


def _scan_windows(text: str, detector: Triggered, spans: list[tuple[int, int]]) -> list[Hit]:
    before, after = detector.reach
    windows: list[list[int]] = []
    for start, end in sorted(spans):
        low, high = max(0, start - before - GUARD), min(len(text), end + after + GUARD)
        if windows and low <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], high)
        else:
            windows.append([low, high])
    scan = detector.scan  # type: ignore[attr-defined]
    if len(windows) == 1 and windows[0] == [0, len(text)]:
        return list(scan(text))
    hits: list[Hit] = []
    seen: set[tuple[str, int, int]] = set()
    for low, high in windows:
        floor = low + GUARD if low > 0 else 0
        ceiling = high - GUARD if high < len(text) else high
        for hit in scan(text[low:high]):
            start, end = hit.start + low, hit.end + low
            if start < floor or end > ceiling or (hit.value, start, end) in seen:
                continue
            seen.add((hit.value, start, end))
            hits.append(Hit(hit.value, start, end, hit.confidence))
    return hits
