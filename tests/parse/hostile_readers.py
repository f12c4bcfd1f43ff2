"""Readers that misbehave, for the worker pool's tests (importable by worker processes)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from smtpguard.parse import Document, Limits, parse_message

T = TypeVar("T")


def hang_on_marker(raw: bytes, limits: Limits) -> Document:
    if b"HANG" in raw:
        time.sleep(3600)
    return parse_message(raw, limits)


def die_on_marker(raw: bytes, limits: Limits) -> Document:
    if b"DIE" in raw:
        os._exit(9)
    return parse_message(raw, limits)


def allocate_on_marker(raw: bytes, limits: Limits) -> Document:
    if b"GREEDY" in raw:
        hoard = [bytearray(64 * 1024 * 1024) for _ in range(100)]  # 6.4 GB
        del hoard
    return parse_message(raw, limits)


def report_niceness(raw: bytes, limits: Limits) -> Document:
    """Not hostile: tells the test the nice value of the worker that read the message."""
    document = parse_message(raw, limits)
    return Document(
        subject=str(os.getpriority(os.PRIO_PROCESS, 0)), headers=(), parts=document.parts
    )


def read_slowly(
    reader: Callable[[bytes, Limits], T], seconds: float, raw: bytes, limits: Limits
) -> T:
    """A worker that takes `seconds` over every message: reading that lags behind."""
    time.sleep(seconds)
    return reader(raw, limits)
