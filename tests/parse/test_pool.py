"""The parse worker pool: a hostile message costs a worker, never the relay."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from smtpguard.parse import Document, Limits, ParsePool, parse_message
from smtpguard.parse.pool import unreadable_message
from tests.conftest import write_config
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
    own = _niceness()
    lowered = pool_factory(hostile_readers.report_niceness, worker_nice=7)
    plain = pool_factory(hostile_readers.report_niceness)
    assert (await lowered.parse(ATTACHMENT + b"x\r\n")).subject == str(min(own + 7, 19))
    assert (await plain.parse(ATTACHMENT + b"x\r\n")).subject == str(own)
    assert _niceness() == own


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


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


_SETPRIORITY = {"x86_64": 141, "aarch64": 140}
_UNDER_SECCOMP = r"""
import asyncio, ctypes, os, platform, signal, subprocess, sys
from smtpguard.parse import Document, Limits, ParsePool
from smtpguard.parse.pool import may_lower_priority, unreadable_message
from tests.parse import hostile_readers

class Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]

class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

# A systemd unit's SystemCallFilter=~@resources, for setpriority: kill the process.
code = (Instruction * 4)(
    Instruction(0x20, 0, 0, 0),                       # load the system call number
    Instruction(0x15, 0, 1, int(sys.argv[1])),        # setpriority?
    Instruction(0x06, 0, 0, 0x80000000),              # then SECCOMP_RET_KILL_PROCESS
    Instruction(0x06, 0, 0, 0x7FFF0000),              # else SECCOMP_RET_ALLOW
)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Program(4, code)), 0, 0) == 0  # SECCOMP_MODE_FILTER
killed = subprocess.run([sys.executable, "-c", "import os; os.nice(1)"]).returncode
print("direct", killed == -signal.SIGSYS)
print("allowed", may_lower_priority())

async def main() -> None:
    pool = ParsePool(1, Limits(), 2 * 1024**3, hostile_readers.report_niceness,
                     unreadable_message, worker_nice=7)
    try:
        attachment = b"Subject: x\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n"
        document = await pool.parse(attachment)
        print("worker", document.subject, document.parts[0].kind)
    finally:
        pool.close()

asyncio.run(main())
"""


@pytest.mark.skipif(platform.machine() not in _SETPRIORITY, reason="seccomp test for x86_64/arm64")
def test_when_lowering_priority_is_forbidden_then_workers_run_at_normal_priority() -> None:
    """Under a seccomp filter that kills setpriority, as a hardened systemd unit without
    the shipped unit's exception would, the pool notices and its workers still read."""
    result = subprocess.run(
        [sys.executable, "-c", _UNDER_SECCOMP, str(_SETPRIORITY[platform.machine()])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answers = ("direct ", "allowed ", "worker ")
    lines = [line for line in result.stdout.splitlines() if line.startswith(answers)]
    # Read (as text, not uninspectable) by a worker at the parent's own priority.
    assert lines == ["direct True", "allowed False", f"worker {_niceness()} text"], result.stdout
    assert "parse.worker_nice_refused" in result.stdout + result.stderr


_PROBE_WHERE = r"""
import asyncio, os, signal, subprocess, sys
from pathlib import Path
from smtpguard.config import Overrides
from smtpguard.relay import run_relay

real_run = subprocess.run

def run(*args, **kwargs):
    try:
        asyncio.get_running_loop()
        print("probe in the loop", flush=True)
    except RuntimeError:
        print("probe before the loop", flush=True)
    return real_run(*args, **kwargs)

subprocess.run = run
stop = lambda address: os.kill(os.getpid(), signal.SIGTERM)
sys.exit(run_relay(Path(sys.argv[1]), Overrides(), on_ready=stop))
"""


def test_relay_asks_whether_workers_may_be_niced_before_its_loop_starts(tmp_path: Path) -> None:
    """The probe waits for a child process: asked inside the loop, it would hold up
    everything the loop serves for as long."""
    config = write_config(tmp_path, {"parse": {"worker_nice": 10}})
    result = subprocess.run(
        [sys.executable, "-c", _PROBE_WHERE, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probes = [line for line in result.stdout.splitlines() if line.startswith("probe ")]
    assert probes == ["probe before the loop"], result.stdout
