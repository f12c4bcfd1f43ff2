"""`smtpguard queue list|flush`: the delivery queue, from the same store the relay uses."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from smtpguard.config import Config
from smtpguard.spool import MessageState, open_configured_store

QUEUE_STATES = (
    MessageState.RECEIVED,
    MessageState.QUEUED,
    MessageState.DELIVERING,
    MessageState.DEFERRED,
    MessageState.RELEASED,
    MessageState.HELD,  # waiting for a reviewer or a delay: never delivered meanwhile
)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


async def list_queue(config: Config, *, as_json: bool) -> int:
    store = open_configured_store(config.store)
    await store.open()
    try:
        records = await store.messages(QUEUE_STATES)
    finally:
        await store.close()
    now = time.time()
    rows = [
        {
            "id": r.id,
            "state": r.state.value,
            "sender": r.envelope.sender or "<>",
            "recipients": [
                {"address": p.address, "state": p.state.value, "last_reply": p.last_reply}
                for p in r.recipients
            ],
            "size": r.size,
            "received_at": r.envelope.received_at,
            "attempts": r.attempts,
            "next_attempt_at": r.next_attempt_at,
            "release_at": r.release_at,
        }
        for r in records
    ]
    if as_json:
        print(json.dumps(rows))
        return 0
    table = Table(title=f"Delivery queue: {len(rows)} message(s)")
    table.add_column("id", no_wrap=True, min_width=21)  # whole: it is what commands take
    for column in ("state", "age", "sender", "recipients", "attempts", "next try", "last reply"):
        table.add_column(column, overflow="fold")
    for r in records:
        waiting = [p for p in r.recipients if not p.state.finished]
        next_try = (
            _age(r.next_attempt_at - now)
            if r.next_attempt_at and r.state is MessageState.DEFERRED
            else ""
        )
        if r.release_at:
            next_try = f"delayed: {_age(r.release_at - now)}"
        table.add_row(
            r.id,
            r.state.value,
            _age(now - r.envelope.received_at),
            r.envelope.sender or "<>",
            "\n".join(f"{p.address} ({p.state.value})" for p in waiting) or "-",
            str(r.attempts),
            next_try,
            "\n".join(p.last_reply[:60] for p in waiting if p.last_reply),
        )
    Console().print(table)
    return 0


async def flush_queue(config: Config) -> int:
    store = open_configured_store(config.store)
    await store.open()
    try:
        count = await store.retry_now(time.time())
    finally:
        await store.close()
    print(f"{count} deferred message(s) will be retried at the relay's next queue check.")
    return 0
