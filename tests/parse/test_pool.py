"""The parse worker pool: a hostile message costs a worker, never the relay."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest

from smtpguard.parse import Document, Limits, ParsePool, parse_message
from smtpguard.parse.pool import unreadable_message
from tests.parse import hostile_readers

MESSAGE = b"Subject: fine\r\n\r\nNothing to see.\r\n"
# Anything but short plain text goes to a worker.
ATTACHMENT = b"Subject: x\r\nContent-Type: application/octet-stream\r\n\r\n"


@pytest.fixture
async def pool_factory() -> AsyncIterator[Callable[..., ParsePool[Document]]]:
    pools: list[ParsePool[Document]] = []

    def make(
        reader: Callable[[bytes, Limits], Document] = parse_message,
        worker_nice: int = 0,
        **limits: float,
    ) -> ParsePool[Document]:
        pool = ParsePool(
            2,
            Limits(**limits),  # type: ignore[arg-type]
            2 * 1024**3,
            reader,
            unreadable_message,
            worker_nice=worker_nice,
        )
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await asyncio.to_thread(pool.close)


async def test_when_message_parsed_in_pool_then_same_document_as_in_process(
    pool_factory: Callable[..., ParsePool[Document]],
) -> None:
    pool = pool_factory()
    raw = ATTACHMENT + b"Nothing to see.\r\n"
    assert await pool.parse(raw) == parse_message(raw)


async def test_when_worker_nice_set_then_workers_read_at_that_much_lower_priority(
    pool_factory: Callable[..., ParsePool[Document]],
) -> None:
    """The relay's loop keeps its priority: only the workers are lowered."""
    own = os.nice(0)
    lowered = pool_factory(hostile_readers.report_niceness, worker_nice=7)
    plain = pool_factory(hostile_readers.report_niceness)
    assert (await lowered.parse(ATTACHMENT + b"x\r\n")).subject == str(min(own + 7, 19))
    assert (await plain.parse(ATTACHMENT + b"x\r\n")).subject == str(own)
    assert os.nice(0) == own


async def test_when_worker_hangs_then_killed_message_uninspectable_and_pool_still_works(
    pool_factory: Callable[..., ParsePool[Document]],
) -> None:
    pool = pool_factory(hostile_readers.hang_on_marker, message_seconds=0.5)
    started = time.monotonic()
    document = await pool.parse(ATTACHMENT + b"HANG\r\n")
    assert time.monotonic() - started < 10
    [part] = document.parts
    assert part.kind == "uninspectable"
    assert "too long" in part.reason
    assert (await pool.parse(MESSAGE)).parts[0].text == "Nothing to see.\r\n"


async def test_when_worker_dies_then_message_uninspectable_and_pool_still_works(
    pool_factory: Callable[..., ParsePool[Document]],
) -> None:
    pool = pool_factory(hostile_readers.die_on_marker)
    document = await pool.parse(ATTACHMENT + b"DIE\r\n")
    assert document.parts[0].kind == "uninspectable"
    assert "crashed" in document.parts[0].reason
    assert (await pool.parse(MESSAGE)).parts[0].kind == "text"


async def test_when_worker_asks_for_too_much_memory_then_uninspectable_not_oom(
    pool_factory: Callable[..., ParsePool[Document]],
) -> None:
    pool = pool_factory(hostile_readers.allocate_on_marker)
    document = await pool.parse(ATTACHMENT + b"GREEDY\r\n")
    assert document.parts[0].kind == "uninspectable"
    assert (await pool.parse(MESSAGE)).parts[0].kind == "text"


async def test_when_many_messages_at_once_then_all_parsed(
    pool_factory: Callable[..., ParsePool[Document]],
) -> None:
    pool = pool_factory()
    raw = ATTACHMENT + b"Nothing to see.\r\n"
    documents = await asyncio.gather(*(pool.parse(raw) for _ in range(50)))
    assert all(d.parts[0].text == "Nothing to see.\r\n" for d in documents)


@pytest.mark.parametrize(
    "raw, inline",
    [
        (b"Subject: x\r\n\r\nhello\r\n", True),
        (b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n", True),
        (b"Subject: x\r\nContent-Type: TEXT/PLAIN\r\n\r\nhello\r\n", True),
        (b"Subject: x\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\r\n", False),
        (b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b--\r\n", False),
        (
            b"Subject: x\r\nContent-Type: text/plain\r\nContent-Type: application/pdf\r\n\r\nx",
            False,
        ),
        (b"Subject: x\r\n\r\n" + b"x" * 9_000, False),
    ],
    ids=["no-type", "text-plain", "upper-case", "html", "multipart", "two-types", "large"],
)
def test_only_short_single_part_text_is_read_without_a_worker(raw: bytes, inline: bool) -> None:
    from smtpguard.parse.pool import carries_only_short_text

    assert carries_only_short_text(raw) is inline


async def test_when_one_file_takes_too_long_in_a_worker_then_that_part_is_uninspectable(
    pool_factory: Callable[..., ParsePool[Document]],
) -> None:
    import io

    import openpyxl

    from tests.parse.test_mime import _message

    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("caseload")
    for index in range(60_000):
        sheet.append([f"CS-{index:06d}", "a name", "2015-03-14", index])
    buffer = io.BytesIO()
    book.save(buffer)
    raw = _message(("caseload.xlsx", buffer.getvalue(), "application/octet-stream"))
    pool = pool_factory(part_seconds=0.05)
    document = await pool.parse(raw)
    part = next(p for p in document.parts if p.path == "attachment:caseload.xlsx")
    assert part.kind == "uninspectable"
    assert part.reason == "took too long to read"
    assert document.parts[0].path == "body"  # the rest of the message was still read
