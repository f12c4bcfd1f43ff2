"""Reading DATA: find the one true end of data, and refuse what could smuggle.

Only `<CRLF>.<CRLF>` ends the data. A message with a bare CR or LF anywhere is
refused, so the `<LF>.<LF>`, `<CR>.<CR>` and `<LF>.<CRLF>` variants that
other servers might read as an end of data can never reach the upstream as a
second message. The data is read in large slices rather than line by line:
a search for `.\\r\\n` is all the per-byte work Python does.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF
_END = b".\r\n"


class DataProblem(enum.Enum):
    TOO_BIG = "too_big"
    BARE_LINE_ENDING = "bare_line_ending"
    LINE_TOO_LONG = "line_too_long"


@dataclass(frozen=True)
class ReceivedData:
    content: bytes  # dot-unstuffed, CRLF line endings, ends with CRLF unless empty
    size: int  # bytes on the wire, for the log
    problem: DataProblem | None


async def read_data(reader: asyncio.StreamReader, size_limit: int) -> ReceivedData:
    """Read up to and including the end-of-data line; never stop anywhere else."""
    pieces: list[bytes] = []
    total = 0
    tail = b"\r\n"  # the CRLF that ended the DATA command precedes the first line
    while True:
        try:
            piece = await reader.readuntil(_END)
        except asyncio.LimitOverrunError as exc:
            piece = await reader.read(exc.consumed)
            ended = False
        else:
            ended = (tail + piece)[-5:-3] == b"\r\n"
        total += len(piece)
        if total <= size_limit + len(_END):
            pieces.append(piece)
        tail = (tail + piece)[-2:]
        if ended:
            break
    if total > size_limit + len(_END):
        return ReceivedData(b"", total, DataProblem.TOO_BIG)
    raw = b"".join(pieces)[: -len(_END)]
    problem = check_line_endings(raw)
    if problem is not None:
        return ReceivedData(b"", total, problem)
    content = unstuff(raw)
    if max(map(len, content.split(b"\r\n")), default=0) > MAX_LINE:
        return ReceivedData(b"", total, DataProblem.LINE_TOO_LONG)
    return ReceivedData(content, total, None)


def check_line_endings(raw: bytes) -> DataProblem | None:
    """Every CR and every LF must belong to a CRLF pair."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        return DataProblem.BARE_LINE_ENDING
    return None


def unstuff(raw: bytes) -> bytes:
    """Undo dot-stuffing (RFC 5321 4.5.2)."""
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw.replace(b"\r\n.", b"\r\n")
