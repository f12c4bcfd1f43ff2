"""Reading DATA: the one true end of data, dot-unstuffing, limits and SMTP smuggling.

Every test drives `read_data` through a real `asyncio.StreamReader` with the
buffer limit aiosmtpd uses (1001), feeding the wire bytes either in one go or
in awkward pieces while `read_data` is already waiting, and then checks what
is left in the reader: nothing after the end-of-data line may be consumed,
because the next command of a pipelining client lives there.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.listen.data import (
    MAX_LINE,
    DataProblem,
    ReceivedData,
    _count_lines,
    check_line_endings,
    has_long_line,
    read_data,
    scan_lines,
    unstuff,
)

READER_LIMIT = 1001  # what aiosmtpd passes to its StreamReader
BIG = 10_000_000  # a size limit no test message reaches
END = b"\r\n.\r\n"
AFTER = b"QUIT\r\n"  # a pipelined command that must still be readable afterwards
SMUGGLED = (
    b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\n"
    b"From: ceo@council.example\r\nSubject: pay this\r\n\r\nsmuggled body"
)
HEAD = b"From: a@council.example\r\nTo: b@partner.example\r\nSubject: hi\r\n\r\nhello"


async def read_chunks(chunks: Sequence[bytes], size_limit: int = BIG) -> tuple[ReceivedData, bytes]:
    """Feed `chunks` one by one while `read_data` runs; return its result and what is left."""
    reader = asyncio.StreamReader(limit=READER_LIMIT)
    task = asyncio.create_task(read_data(reader, size_limit))
    for chunk in chunks:
        reader.feed_data(chunk)
        await asyncio.sleep(0)  # let read_data see a partial buffer
    reader.feed_eof()
    received = await asyncio.wait_for(task, timeout=10)
    rest = await reader.read()
    return received, rest


def split_at(data: bytes, *positions: int) -> list[bytes]:
    bounds = [0, *positions, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def in_pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- well-formed messages ------------------------------------------------------

WELL_FORMED = [
    # (wire bytes up to and including the end of data, content after unstuffing)
    pytest.param(
        b"Subject: hi\r\n\r\nHello\r\n.\r\n", b"Subject: hi\r\n\r\nHello\r\n", id="normal"
    ),
    pytest.param(b".\r\n", b"", id="empty"),
    pytest.param(b"\r\n.\r\n", b"\r\n", id="one-empty-line"),
    pytest.param(b"the end.\r\nmore.\r\n.\r\n", b"the end.\r\nmore.\r\n", id="lines-ending-in-dot"),
    pytest.param(b"end.\r\n.\r\n", b"end.\r\n", id="first-line-ends-in-dot"),
    pytest.param(b"..x\r\n.\r\n", b".x\r\n", id="stuffed-first-line"),
    pytest.param(b"a\r\n..x\r\n.\r\n", b"a\r\n.x\r\n", id="stuffed-later-line"),
    pytest.param(b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", id="line-that-is-just-stuffed-dot"),
    pytest.param(b"..\r\n.\r\n", b".\r\n", id="only-line-is-stuffed-dot"),
    pytest.param(b"...\r\n.\r\n", b"..\r\n", id="two-dots-stuffed"),
    pytest.param(b"a\r\n\r\n\r\n.\r\n", b"a\r\n\r\n\r\n", id="trailing-empty-lines"),
    pytest.param(b"x.y.\r\n.z\r\n.\r\n", b"x.y.\r\nz\r\n", id="dots-inside-lines"),
    pytest.param(
        b"caf\xc3\xa9 \xff\xfe\r\n.\r\n", b"caf\xc3\xa9 \xff\xfe\r\n", id="8bit-bytes-kept"
    ),
]


@pytest.mark.parametrize("text, expected", WELL_FORMED)
async def test_when_well_formed_in_one_go_then_unstuffed_content(
    text: bytes, expected: bytes
) -> None:
    received, rest = await read_chunks([text + AFTER])
    assert received == ReceivedData(expected, len(text), None)
    assert rest == AFTER


@pytest.mark.parametrize("text, expected", WELL_FORMED)
async def test_when_well_formed_one_byte_at_a_time_then_same_content(
    text: bytes, expected: bytes
) -> None:
    received, rest = await read_chunks(bytewise(text + AFTER))
    assert received == ReceivedData(expected, len(text), None)
    assert rest == AFTER


TERMINATOR_SPLITS = [
    (first, second) for first in range(len(END) + 1) for second in range(first, len(END) + 1)
]


@pytest.mark.parametrize("first, second", TERMINATOR_SPLITS)
async def test_when_terminator_split_across_feeds_then_found_exactly(
    first: int, second: int
) -> None:
    body = b"Subject: x\r\n\r\nbody ends with a dot.\r\n..stuffed"
    text = body + END
    start = len(body)
    chunks = split_at(text + AFTER, start + first, start + second)
    received, rest = await read_chunks(chunks)
    assert received == ReceivedData(
        b"Subject: x\r\n\r\nbody ends with a dot.\r\n.stuffed\r\n", len(text), None
    )
    assert rest == AFTER


@pytest.mark.parametrize("text", [b".\r\n", b"\r\n.\r\n"])
@pytest.mark.parametrize("cut", [1, 2, 3, 4])
async def test_when_short_message_split_anywhere_then_read_once(text: bytes, cut: int) -> None:
    received, rest = await read_chunks(split_at(text + AFTER, min(cut, len(text))))
    assert received.problem is None
    assert received.size == len(text)
    assert received.content == text[:-3]
    assert rest == AFTER


async def test_when_two_messages_pipelined_then_each_read_separately() -> None:
    reader = asyncio.StreamReader(limit=READER_LIMIT)
    reader.feed_data(b"first\r\n.\r\nsecond\r\n.\r\n")
    reader.feed_eof()
    one = await read_data(reader, BIG)
    two = await read_data(reader, BIG)
    assert (one.content, two.content) == (b"first\r\n", b"second\r\n")
    assert await reader.read() == b""


async def test_when_eof_before_end_of_data_then_no_message_is_returned() -> None:
    reader = asyncio.StreamReader(limit=READER_LIMIT)
    reader.feed_data(b"Subject: cut off\r\n\r\nno end of data\r\n.")
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_data(reader, BIG)


# -- line length -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(b"x" * MAX_LINE, None, id="998-is-fine"),
        pytest.param(b"x" * (MAX_LINE + 1), DataProblem.LINE_TOO_LONG, id="999-too-long"),
        pytest.param(b"." + b"x" * MAX_LINE, None, id="stuffed-dot-plus-998-is-fine"),
        pytest.param(
            b"." + b"x" * (MAX_LINE + 1), DataProblem.LINE_TOO_LONG, id="stuffed-dot-plus-999"
        ),
        pytest.param(b"short\r\n" + b"y" * (MAX_LINE + 1), DataProblem.LINE_TOO_LONG, id="later"),
        pytest.param(b"x" * 1000, DataProblem.LINE_TOO_LONG, id="1000"),
        pytest.param(b"x" * 1001, DataProblem.LINE_TOO_LONG, id="reader-limit"),
        pytest.param(b"x" * 1002, DataProblem.LINE_TOO_LONG, id="past-reader-limit"),
    ],
)
async def test_when_line_length_at_the_edge_then_only_over_998_refused(
    text: bytes, expected: DataProblem | None
) -> None:
    wire = text + END
    received, rest = await read_chunks([wire + AFTER])
    assert received.problem is expected
    assert received.size == len(wire)
    assert rest == AFTER
    if expected is None:
        assert received.content == unstuff(text + b"\r\n")
    else:
        assert received.content == b""


LONG_LINE = b"x" * 100_000


@pytest.mark.parametrize(
    "piece",
    [
        pytest.param(0, id="one-go"),
        pytest.param(1000, id="1000"),
        pytest.param(1001, id="1001"),
        pytest.param(1003, id="1003"),
        pytest.param(4096, id="4096"),
        pytest.param(65536, id="65536"),
    ],
)
async def test_when_100kb_line_then_line_too_long_and_reader_stops_at_terminator(
    piece: int,
) -> None:
    wire = LONG_LINE + END
    chunks = [wire + AFTER] if piece == 0 else in_pieces(wire + AFTER, piece)
    received, rest = await read_chunks(chunks)
    assert received == ReceivedData(b"", len(wire), DataProblem.LINE_TOO_LONG)
    assert rest == AFTER


@pytest.mark.parametrize("offset", range(-6, 3))
async def test_when_long_line_ends_near_a_reader_limit_boundary_then_terminator_found(
    offset: int,
) -> None:
    # the terminator straddles the slice that a LimitOverrunError leaves behind
    wire = b"x" * (3 * READER_LIMIT + offset) + END
    for chunks in (in_pieces(wire + AFTER, 700), bytewise(wire + AFTER)):
        received, rest = await read_chunks(chunks)
        assert received == ReceivedData(b"", len(wire), DataProblem.LINE_TOO_LONG)
        assert rest == AFTER


@pytest.mark.parametrize(
    "length, piece", [(1500, 0), (1500, 1), (1500, 1024), (100_000, 0), (100_000, 1024)]
)
async def test_when_long_line_ends_in_a_dot_then_not_taken_for_end_of_data(
    length: int, piece: int
) -> None:
    # the reader hands back the long line first and then ".\r\n" on its own
    wire = b"x" * length + b".\r\n" + SMUGGLED + END
    chunks = [wire + AFTER] if piece == 0 else in_pieces(wire + AFTER, piece)
    received, rest = await read_chunks(chunks)
    assert received == ReceivedData(b"", len(wire), DataProblem.LINE_TOO_LONG)
    assert rest == AFTER


async def test_when_many_short_lines_make_a_large_message_then_accepted() -> None:
    text = b"".join(b"line %d of a long but well-formed body\r\n" % i for i in range(20_000))
    wire = text + b".\r\n"
    received, rest = await read_chunks(in_pieces(wire + AFTER, 4096))
    assert received == ReceivedData(text, len(wire), None)
    assert rest == AFTER


# -- size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(b"Hello\r\n" + b".\r\n", 10, id="normal"),
        pytest.param(b".\r\n", 3, id="empty"),
        pytest.param(b"..x\r\n.\r\n", 8, id="stuffing-counts-on-the-wire"),
        pytest.param(b"x" * 2000 + END, 2005, id="long-line-refused-still-counted"),
        pytest.param(b"a\nb\r\n.\r\n", 8, id="bare-lf-refused-still-counted"),
    ],
)
async def test_when_read_then_size_is_bytes_on_the_wire_including_terminator(
    text: bytes, expected: int
) -> None:
    received, _ = await read_chunks([text])
    assert received.size == expected


@pytest.mark.parametrize(
    "limit, expected",
    [
        pytest.param(99, DataProblem.TOO_BIG, id="one-under"),
        pytest.param(100, None, id="exactly"),
        pytest.param(101, None, id="one-over"),
    ],
)
async def test_when_message_at_the_size_limit_then_accepted_and_one_byte_more_refused(
    limit: int, expected: DataProblem | None
) -> None:
    text = b"y" * 98 + b"\r\n"  # 100 bytes before the end-of-data line
    received, rest = await read_chunks([text + b".\r\n" + AFTER], size_limit=limit)
    assert received.problem is expected
    assert received.size == 103
    assert rest == AFTER


TOO_BIG_BODIES = [
    pytest.param(b"line\r\n" * 2000, id="many-lines"),
    pytest.param(LONG_LINE + b"\r\n", id="one-long-line"),
    pytest.param(b"a\nb\r\n" * 500, id="too-big-and-bare-lf"),
]


@pytest.mark.parametrize("text", TOO_BIG_BODIES)
@pytest.mark.parametrize("piece", [0, 512, 5000])
async def test_when_too_big_then_refused_and_consumed_through_terminator(
    text: bytes, piece: int
) -> None:
    wire = text + b".\r\n"
    chunks = [wire + AFTER] if piece == 0 else in_pieces(wire + AFTER, piece)
    received, rest = await read_chunks(chunks, size_limit=100)
    assert received == ReceivedData(b"", len(wire), DataProblem.TOO_BIG)
    assert rest == AFTER


async def test_when_too_big_fed_bytewise_then_refused_and_consumed_through_terminator() -> None:
    wire = b"line\r\n" * 200 + b".\r\n"
    received, rest = await read_chunks(bytewise(wire + AFTER), size_limit=100)
    assert received == ReceivedData(b"", len(wire), DataProblem.TOO_BIG)
    assert rest == AFTER


# -- SMTP smuggling -----------------------------------------------------------------

SMUGGLING_ENDINGS = [
    pytest.param(b"\n.\n", id="lf-dot-lf"),
    pytest.param(b"\r.\r", id="cr-dot-cr"),
    pytest.param(b"\r\n.\r", id="crlf-dot-cr"),
    pytest.param(b"\r\n.\n", id="crlf-dot-lf"),
    pytest.param(b"\n.\r\n", id="lf-dot-crlf"),
    pytest.param(b"\r.\r\n", id="cr-dot-crlf"),
    pytest.param(b"\n\n.\r\n", id="lf-lf-dot-crlf"),
    pytest.param(b"\r\r\n.\r\n", id="bare-cr-then-real-end"),
]


@pytest.mark.parametrize("ending", SMUGGLING_ENDINGS)
@pytest.mark.parametrize("feed", ["one-go", "bytewise"])
async def test_when_smuggled_end_of_data_then_one_message_refused_as_bare_line_ending(
    ending: bytes, feed: str
) -> None:
    wire = HEAD + ending + SMUGGLED + END
    if ending.endswith(END):  # a bare CR before a real end: that is where the data ends
        wire = HEAD + ending
    data = wire + AFTER
    received, rest = await read_chunks([data] if feed == "one-go" else bytewise(data))
    assert received == ReceivedData(b"", len(wire), DataProblem.BARE_LINE_ENDING)
    assert rest == AFTER


@pytest.mark.parametrize("feed", ["one-go", "bytewise"])
async def test_when_nul_before_dot_then_read_as_one_message_including_the_nul(feed: str) -> None:
    wire = HEAD + b"\r\n\x00.\r\n" + SMUGGLED + END
    data = wire + AFTER
    received, rest = await read_chunks([data] if feed == "one-go" else bytewise(data))
    assert received.problem is None
    assert received.size == len(wire)
    assert received.content == HEAD + b"\r\n\x00.\r\n" + SMUGGLED + b"\r\n"
    assert b"MAIL FROM:<evil@x>" in received.content
    assert rest == AFTER


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(b"", None, id="empty"),
        pytest.param(b"a\r\nb\r\n", None, id="crlf-only"),
        pytest.param(b"\r\n\r\n", None, id="empty-lines"),
        pytest.param(b"a\nb\r\n", DataProblem.BARE_LINE_ENDING, id="bare-lf"),
        pytest.param(b"a\rb\r\n", DataProblem.BARE_LINE_ENDING, id="bare-cr"),
        pytest.param(b"a\r\r\n", DataProblem.BARE_LINE_ENDING, id="cr-cr-lf"),
        pytest.param(b"a\r\n\n", DataProblem.BARE_LINE_ENDING, id="cr-lf-lf"),
        pytest.param(b"a\n\r", DataProblem.BARE_LINE_ENDING, id="lf-cr"),
        pytest.param(b"a\r", DataProblem.BARE_LINE_ENDING, id="trailing-cr"),
        pytest.param(b"\na", DataProblem.BARE_LINE_ENDING, id="leading-lf"),
    ],
)
def test_when_check_line_endings_then_every_cr_and_lf_must_pair(
    text: bytes, expected: DataProblem | None
) -> None:
    assert check_line_endings(text) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"", b""),
        (b"plain\r\n", b"plain\r\n"),
        (b"..x\r\n", b".x\r\n"),
        (b"a\r\n..x\r\n", b"a\r\n.x\r\n"),
        (b"a\r\n..\r\n", b"a\r\n.\r\n"),
        (b"...\r\n", b"..\r\n"),
        (b"a.b\r\n", b"a.b\r\n"),
        (b"..a\r\n..b\r\n", b".a\r\n.b\r\n"),
    ],
)
def test_when_unstuff_then_one_leading_dot_removed_per_line(text: bytes, expected: bytes) -> None:
    assert unstuff(text) == expected


@given(
    st.lists(
        st.one_of(
            st.integers(0, 3 * MAX_LINE),
            st.sampled_from([MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_LINE + 2]),
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_the_long_line_check_agrees_with_splitting_the_lines(
    lengths: list[int], ends_with_crlf: bool
) -> None:
    content = b"\r\n".join(b"x" * n for n in lengths) + (b"\r\n" if ends_with_crlf else b"")
    longest = max(map(len, content.split(b"\r\n")), default=0)
    assert has_long_line(content) is (longest > MAX_LINE)


@given(st.binary(max_size=40).map(lambda b: bytes(b"a\r\n."[x % 4] for x in b)))
def test_one_hyperscan_pass_answers_as_counting_does(raw: bytes) -> None:
    """Bare line endings and dots to unstuff, over every mix of CR, LF, dot and text."""
    assert scan_lines(raw) == _count_lines(raw)
    assert _count_lines(raw).bare_line_ending is (
        raw.replace(b"\r\n", b"").count(b"\r") + raw.replace(b"\r\n", b"").count(b"\n") > 0
    )
    assert _count_lines(raw).stuffed is (unstuff(raw) != raw)


def test_lines_are_scanned_the_same_from_many_threads_at_once() -> None:
    """Each thread has its own Hyperscan scratch space: the answers never mix."""
    bare = b"x" * 100_000 + b"\n" + b"y\r\n" * 30_000
    stuffed = b"y\r\n" * 30_000 + b".dot\r\n"
    clean = b"y\r\n" * 40_000
    texts = [bare, stuffed, clean] * 40
    expected = [_count_lines(text) for text in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(scan_lines, texts)) == expected
