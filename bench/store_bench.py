"""Store benchmark: SQLite against PostgreSQL, the store alone, same machine, same run.

    python bench/store_bench.py [--messages 4000] [--concurrency 32] [--size 4096]
        [--dsn postgresql://user@host/db] [--backends sqlite,postgresql]

Each message goes through what the relay asks of the store for a clean message:
`accept` (durable: the 250 waits for it), `claim` (taken for delivery), and
`record_attempt` (delivered: the outcome committed, the bytes dropped).
`--concurrency` tasks do this at once, as the relay's SMTP sessions and delivery
workers do. Reported per backend: messages/s through all three steps, and the
p50/p99 latency of `accept` alone (what a client waits for before its 250).

Without `--dsn` a throwaway PostgreSQL cluster is started (tests/pg.py) with
fsync ON, in a temp folder on the same file system as SQLite's, so both pay for
durable commits. The backends run one after another, each on a fresh store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smtpguard.envelope import Envelope  # noqa: E402
from smtpguard.spool import (  # noqa: E402
    MessageState,
    Origin,
    RecipientOutcome,
    RecipientState,
    Store,
    new_message_id,
    open_store,
)

RECIPIENTS = ("s.mills@millsandco-solicitors.co.uk", "team@partner.example")


@dataclass
class Result:
    backend: str
    messages: int
    seconds: float
    accept_ms: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.accept_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def run_backend(
    backend: str, folder: Path, dsn: str | None, messages: int, concurrency: int, size: int
) -> Result:
    store: Store = open_store(backend, folder / "data", dsn=dsn)
    await store.open()
    content = (b"Subject: bench\r\n\r\n" + b"x" * 76 + b"\r\n") * max(1, size // 78)
    latencies: list[float] = []
    remaining = iter(range(messages))

    async def worker(number: int) -> None:
        owner = f"bench:{number}"
        for _ in remaining:
            message_id = new_message_id()
            envelope = Envelope("bench@council.example", RECIPIENTS, "127.0.0.1", "bench", 0.0)
            started = time.perf_counter()
            await store.accept(
                message_id,
                envelope,
                content,
                state=MessageState.QUEUED,
                origin=Origin.RELAY,
                expires_at=time.time() + 3600,
            )
            latencies.append((time.perf_counter() - started) * 1000)
            assert await store.claim(message_id, owner, 600)
            outcomes = [RecipientOutcome(r, RecipientState.DELIVERED, "250 ok") for r in RECIPIENTS]
            await store.record_attempt(message_id, outcomes, MessageState.DELIVERED, None)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        seconds = time.perf_counter() - started
        counts = await store.counts()
        assert counts.active == 0, counts
    finally:
        await store.close()
    return Result(backend, messages, seconds, latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    parser.add_argument("--dsn", default=None, help="an empty PostgreSQL database to use")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    cluster = None
    dsn = args.dsn
    if "postgresql" in backends and dsn is None:
        from tests.pg import find_bindir, start_cluster

        bindir = find_bindir()
        if bindir is None:
            print("PostgreSQL server binaries not found: pass --dsn", file=sys.stderr)
            return 2
        cluster = start_cluster(bindir, fsync=True)
        dsn = cluster.dsn()
    results = []
    try:
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix="store-bench-") as folder:
                results.append(
                    asyncio.run(
                        run_backend(
                            backend,
                            Path(folder),
                            dsn if backend == "postgresql" else None,
                            args.messages,
                            args.concurrency,
                            args.size,
                        )
                    )
                )
    finally:
        if cluster is not None:
            cluster.stop()

    print(
        f"store: accept + claim + record_attempt, {args.messages} messages of "
        f"{args.size} bytes, {args.concurrency} at once; {os.cpu_count()} CPUs"
    )
    print("| backend | msg/s | accept p50 ms | accept p99 ms | wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r.backend} | {r.rate:.0f} | {statistics.median(r.accept_ms):.2f} "
            f"| {r.percentile(0.99):.2f} | {r.seconds:.2f} |"
        )
    print("reproduce: " + shlex.join([sys.executable, "bench/store_bench.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
