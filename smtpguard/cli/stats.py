"""`smtpguard stats`: the relay at a glance, read from its store (the relay need not run).

For the administrator at a shell what `/metrics` is for Prometheus: how much is
queued, how many holds wait for reviewers and for how long, and what happened
to recent mail. Counts only: no address, subject or content is printed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from smtpguard.cli.queue import _age
from smtpguard.config import Config
from smtpguard.metrics import held_for_review
from smtpguard.spool import MessageState, RecipientState, Store, open_configured_store

# Holds read to count them and find the oldest; enough for any council's quarantine.
_HOLDS_LIMIT = 100_000
_WINDOWS = (("last_hour", 3600.0), ("last_24h", 86400.0))
# Copy states worth a line, in the order an administrator reads them.
_RECENT = (
    RecipientState.DELIVERED,
    RecipientState.DEFERRED,
    RecipientState.BOUNCED,
    RecipientState.HELD,
    RecipientState.DELAYED,
    RecipientState.REJECTED,
    RecipientState.EXPIRED,
)


async def gather_stats(store: Store, now: float) -> dict[str, Any]:
    """Everything `stats` shows, as plain data (the `--json` output)."""
    counts = await store.counts()
    held_messages = counts.by_state.get(MessageState.HELD, 0)
    awaiting, oldest = await held_for_review(store, held_messages, limit=_HOLDS_LIMIT)
    recent: dict[str, dict[str, int]] | None = {}
    for name, seconds in _WINDOWS:
        activity = await store.recipient_activity(now - seconds)
        if activity is None or recent is None:
            recent = None
            continue
        recent[name] = {state.value: activity.get(state, 0) for state in _RECENT}
    return {
        "at": now,
        "messages": {s.value: counts.by_state.get(s, 0) for s in MessageState if not s.finished},
        "holds": {
            "awaiting_review": awaiting,
            "oldest_age_seconds": round(now - oldest, 1) if oldest is not None else None,
        },
        # Recipient copies of relayed mail by their state, among those whose state
        # changed in the window (a copy held then released and delivered counts once,
        # as delivered). None when the store backend cannot tell.
        "recent": recent,
    }


async def show_stats(config: Config, *, as_json: bool) -> int:
    store = open_configured_store(config.store)
    await store.open()
    try:
        stats = await gather_stats(store, time.time())
    finally:
        await store.close()
    if as_json:
        print(json.dumps(stats))
        return 0
    console = Console()
    messages = Table(title="Messages by state")
    messages.add_column("state")
    messages.add_column("messages", justify="right")
    for state, count in stats["messages"].items():
        messages.add_row(state, str(count))
    messages.add_row("[bold]total[/bold]", f"[bold]{sum(stats['messages'].values())}[/bold]")
    console.print(messages)
    holds = stats["holds"]
    oldest = holds["oldest_age_seconds"]
    console.print(
        f"Holds awaiting review: {holds['awaiting_review']}"
        + (f" (oldest {_age(oldest)})" if oldest is not None else "")
    )
    recent = stats["recent"]
    if recent is None:
        console.print("Recent outcomes: not available from this store backend.")
        return 0
    outcomes = Table(title="Recent copies, by state now")
    outcomes.add_column("state")
    outcomes.add_column("last hour", justify="right")
    outcomes.add_column("last 24 h", justify="right")
    for state in _RECENT:
        outcomes.add_row(
            state.value,
            str(recent["last_hour"][state.value]),
            str(recent["last_24h"][state.value]),
        )
    console.print(outcomes)
    return 0
