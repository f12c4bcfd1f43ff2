#!/usr/bin/env python3
"""A sustained flow faster than smtpguard reads: does the backlog stay bounded?

smtpguard answers 250 once a message is safe in the store and reads it after;
its parse workers run at a lower priority than the loop that takes mail in
(`parse.worker_nice`). For a short burst that means the mail server in front
is never held up. For a flow that lasts, flow control (`server.max_unread_wait`,
`server.max_unscanned`, `server.flow_delay`, as Postfix's in_flow_delay) must
bring the accepted rate down to the rate the relay reads, or unread mail piles up until
`store.max_queue` refuses everything. This runs one load for a long time and
samples the relay's own metrics every second: accepted, read and delivered per
second, and the unread backlog.

    python bench/flow_bench.py --scenario pdf --concurrency 20 --duration 60 [--write]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import sink
import yaml
from ab_bench import load
from relay_bench import (
    HOST,
    PROJECT_DIR,
    ReadyNotice,
    free_port,
    log_tail,
    stop_process,
    wait_ready,
    with_marked_section,
)

BENCH_CONFIG = Path(__file__).with_name("smtpguard-bench.yaml")
RESULTS = Path(__file__).with_name("RESULTS.md")
_SAMPLE = re.compile(r"^(smtpguard_\w+?)(?:\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE)


def _absolute(value: Any, base: Path) -> Any:
    """The bench config with its relative paths made absolute, to be written elsewhere."""
    if isinstance(value, dict):
        return {key: _absolute(item, base) for key, item in value.items()}
    if isinstance(value, str) and value.startswith("../"):
        return str((base / value).resolve())
    return value


def write_config(folder: Path, args: argparse.Namespace, metrics_port: int) -> Path:
    config = _absolute(
        yaml.safe_load(BENCH_CONFIG.read_text(encoding="utf-8")), BENCH_CONFIG.parent
    )
    config["server"]["max_unread_wait"] = args.max_unread_wait
    config["server"]["max_unscanned"] = args.max_unscanned
    config["server"]["flow_delay"] = args.flow_delay
    config["metrics"] = {"listen": f"{HOST}:{metrics_port}"}
    path = folder / "smtpguard.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def totals(metrics_port: int) -> dict[str, float]:
    """Sums of the smtpguard counters the table needs, across their labels."""
    url = f"http://{HOST}:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        found[name] = found.get(name, 0.0) + float(value)
    return found


def sample(
    metrics_port: int,
    upstream: sink.SinkHandle,
    done: threading.Event,
    rows: list[dict[str, float]],
) -> None:
    started = time.monotonic()
    while not done.is_set():
        counts = totals(metrics_port)
        rows.append(
            {
                "t": time.monotonic() - started,
                "accepted": counts.get("smtpguard_messages_received_total", 0.0),
                # One recipient per bench message: a verdict per message read.
                "read": counts.get("smtpguard_verdicts_total", 0.0),
                "delivered": float(upstream.counters.messages),
                "flow_delays": counts.get("smtpguard_flow_delays_total", 0.0),
            }
        )
        done.wait(1.0)


def _rate(rows: list[dict[str, float]], key: str, start: float, end: float) -> float:
    inside = [row for row in rows if start <= row["t"] <= end]
    if len(inside) < 2:
        return 0.0
    return (inside[-1][key] - inside[0][key]) / (inside[-1]["t"] - inside[0]["t"])


def report(rows: list[dict[str, float]], args: argparse.Namespace, command: str) -> str:
    lines = [
        f"## A sustained flow (flow_bench.py): {args.scenario}, {args.concurrency} clients,"
        f" {args.duration:.0f} s, max_unread_wait {args.max_unread_wait},"
        f" max_unscanned {args.max_unscanned}, flow_delay {args.flow_delay}",
        "",
        "| second | accepted/s | read/s | delivered/s | unread | flow delays |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    step = max(1, len(rows) // 30)
    for before, row in zip(rows[::step], rows[step::step], strict=False):
        span = row["t"] - before["t"]
        lines.append(
            f"| {row['t']:.0f} | {(row['accepted'] - before['accepted']) / span:.0f}"
            f" | {(row['read'] - before['read']) / span:.0f}"
            f" | {(row['delivered'] - before['delivered']) / span:.0f}"
            f" | {row['accepted'] - row['read']:.0f} | {row['flow_delays']:.0f} |"
        )
    end = rows[-1]["t"]
    peak = max(row["accepted"] - row["read"] for row in rows)
    lines += [
        "",
        f"First 10 s: accepted {_rate(rows, 'accepted', 0, 10):.0f}/s,"
        f" read {_rate(rows, 'read', 0, 10):.0f}/s."
        f" Last half: accepted {_rate(rows, 'accepted', end / 2, end):.0f}/s,"
        f" read {_rate(rows, 'read', end / 2, end):.0f}/s."
        f" Largest unread backlog {peak:.0f}.",
        "",
        "```",
        command,
        "```",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="pdf")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-unread-wait", default="30s")
    parser.add_argument("--max-unscanned", type=int, default=10_000)
    parser.add_argument("--flow-delay", default="1s")
    parser.add_argument("--write", action="store_true", help="record the table in RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/flow_bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="smtpguard-flow-") as tmp:
        folder = Path(tmp)
        upstream = sink.start_sink(HOST)
        port, metrics_port = free_port(), free_port()
        notice = ReadyNotice(folder)
        relay_log = folder / "relay.log"
        with open(relay_log, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "smtpguard",
                    "serve",
                    "--config",
                    str(write_config(folder, args, metrics_port)),
                    "--listen",
                    f"{HOST}:{port}",
                    "--upstream",
                    f"{HOST}:{upstream.port}",
                    "--data-dir",
                    str(folder / "data"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=notice.environment(),
                cwd=PROJECT_DIR,
            )
        try:
            why = wait_ready(proc, port, 30.0, notice)
            if why is not None:
                raise SystemExit(f"smtpguard did not start: {why}\n{log_tail(relay_log)}")
            rows: list[dict[str, float]] = []
            done = threading.Event()
            sampler = threading.Thread(target=sample, args=(metrics_port, upstream, done, rows))
            sampler.start()
            try:
                load(port, args.scenario, args.concurrency, args.duration, 0.0)
            finally:
                done.set()
                sampler.join()
        finally:
            stop_process(proc)
            upstream.stop()
    text = report(rows, args, command)
    print(text)
    if args.write:
        RESULTS.write_text(
            with_marked_section(RESULTS.read_text(encoding="utf-8"), "flow_bench", text),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
