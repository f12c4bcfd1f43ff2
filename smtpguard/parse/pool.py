"""Worker processes for parsing, with a time limit per message.

Parsing untrusted attachments runs outside the relay's process: a file that
makes a parser hang or crash costs one worker, which is killed and replaced,
and the message is recorded as uninspectable (policy decides, nothing is
let out unread). pebble provides the pool that can kill one worker on a
timeout without breaking the others.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

import structlog
from pebble import ProcessExpired, ProcessPool

from smtpguard.parse.model import Document, Limits, Part

log = structlog.get_logger("smtpguard.parse")

Result = TypeVar("Result")


def kill_after(limits: Limits) -> float:
    """Headroom over the message's own time limit before its worker is killed."""
    return limits.message_seconds * 1.2 + 1.0


def _start_worker(max_bytes: int, nice: int, setup: Callable[[], None] | None) -> None:
    """Runs in each new worker: a hostile file gets MemoryError, not the machine; reading
    yields the CPU to the relay's loop (`nice`); and `setup` (the relay's logging) runs,
    since a forkserver child inherits none of it."""
    if nice > 0:
        os.nice(nice)
    if max_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    if setup is not None:
        setup()


@functools.cache
def may_lower_priority() -> bool:
    """Whether a process here may lower its own priority, asked of a throwaway child.

    A systemd unit with `SystemCallFilter=~@resources` (and without the shipped unit's
    `SystemCallFilter=setpriority`) kills a process that tries, with SIGSYS: every
    worker would die at birth, and every attachment would be uninspectable. The
    first call waits for the child (~50 ms): the relay asks before its loop starts.
    """
    try:
        probe = subprocess.run(
            [sys.executable, "-I", "-S", "-c", "import os; os.nice(1)"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def unreadable_message(reason: str, size: int) -> Document:
    return Document(
        subject="",
        headers=(),
        parts=(Part("message", "uninspectable", "", frozenset(), size, "", reason),),
    )


# Workers are recycled now and then (parsers can leak; RLIMIT_AS bounds a leak
# meanwhile). A new worker imports everything and builds its detectors on its first
# message, ~0.8 s of CPU: at 500 tasks that was ~1.7 ms per PDF message (15 % of
# the pool's throughput, measured with 2 workers: 5.6 vs 4.5-4.9 ms per message).
_TASKS_PER_WORKER = 5_000

_INLINE_LIMIT = 8 * 1024  # read (and scanned) on the loop in about a millisecond
_CONTENT_TYPE = re.compile(rb"^content-type:[ \t]*([^;\r\n]*)", re.IGNORECASE | re.MULTILINE)


def carries_only_short_text(raw: bytes) -> bool:
    """A small single-part text/plain message (or one with no Content-Type at all)."""
    if len(raw) > _INLINE_LIMIT:
        return False
    end = raw.find(b"\r\n\r\n")
    header = raw if end == -1 else raw[:end]
    declared = _CONTENT_TYPE.findall(header)
    return not declared or (len(declared) == 1 and declared[0].strip().lower() == b"text/plain")


class ParsePool(Generic[Result]):
    def __init__(
        self,
        workers: int,
        limits: Limits,
        worker_memory: int,
        reader: Callable[[bytes, Limits], Result],
        unreadable: Callable[[str, int], Result],
        worker_setup: Callable[[], None] | None = None,
        worker_nice: int = 0,
    ) -> None:
        """`reader` runs in the workers (parse_message, or parse and detect together);
        `unreadable(reason, size)` stands for a message no worker could read;
        `worker_setup` (picklable) runs once in each new worker, whose nice value is
        raised by `worker_nice`."""
        self.limits = limits
        self.reader = reader  # replaced on reload, with the new config's detectors
        if worker_nice > 0 and not may_lower_priority():
            log.warning(
                "parse.worker_nice_refused",
                reason="this system does not let a process lower its own priority "
                "(a service's SystemCallFilter without setpriority?); workers run at "
                "the relay's priority",
            )
            worker_nice = 0
        self.worker_nice = worker_nice
        self._unreadable = unreadable
        self._pool = ProcessPool(
            max_workers=workers,
            max_tasks=_TASKS_PER_WORKER,
            initializer=_start_worker,
            initargs=(worker_memory, worker_nice, worker_setup),
            context=multiprocessing.get_context("forkserver"),
        )

    async def parse(self, raw: bytes) -> Result:
        """What the reader makes of the message; never raises for anything it contains."""
        if carries_only_short_text(raw):
            # No attachment to be hostile, and too short to hold the loop for long:
            # reading it here saves the round trip to a worker.
            return self.reader(raw, self.limits)
        future = self._pool.schedule(
            self.reader,
            args=(raw, self.limits),
            timeout=kill_after(self.limits),
        )
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            log.warning("parse.worker_killed", reason="timeout", size=len(raw))
            return self._unreadable("the message took too long to read", len(raw))
        except ProcessExpired as exc:
            log.warning("parse.worker_died", exitcode=exc.exitcode, size=len(raw))
            return self._unreadable("reading the message crashed a worker", len(raw))
        except MemoryError:
            return self._unreadable("the message needs too much memory to read", len(raw))

    def close(self) -> None:
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join(timeout=5)
