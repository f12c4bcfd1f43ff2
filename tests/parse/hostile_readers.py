"""Readers that misbehave, for the worker pool's tests (importable by worker processes)."""

from __future__ import annotations

import os
import time

from smtpguard.parse import Document, Limits, parse_message


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
