#!/usr/bin/env python3
"""Is a change faster? This working tree against a git revision, side by side.

A single run on a shared 2-core VM moves ±20 %, so a change worth a few per
cent cannot be seen by running the old and new relay one after the other.
Here both run at once (each with its own sink and data folder, the bench
config of its own tree), short load runs alternate between them round by
round (which goes first alternates too), and the table gives the medians and
how many rounds the candidate won. Both relays are started and warmed up
before the first measured round, so neither pays for a fresh start.

    python bench/ab_bench.py --baseline HEAD~1 --scenarios plain,pdf --concurrency 1,20
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sink
from messages import SCENARIOS, template
from relay_bench import (
    HOST,
    PROJECT_DIR,
    ReadyNotice,
    TreeMonitor,
    free_port,
    log_tail,
    median,
    stop_process,
    wait_ready,
)


@dataclass
class Side:
    """One relay under test: which source tree it runs, where it listens."""

    name: str
    tree: Path
    port: int = 0
    runs: dict[tuple[str, int], list[dict[str, float]]] = field(default_factory=dict)
    monitor: TreeMonitor | None = None
    peak_mib: dict[tuple[str, int], float] = field(default_factory=dict)
    upstream: sink.SinkHandle | None = None
    accepted: int = 0  # messages it answered 250 to, over the whole run


def export_revision(revision: str, into: Path) -> str:
    """The tree of `revision` (as committed) under `into`; returns its short hash."""
    commit = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "rev-parse", "--short", revision],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "archive", "--format=tar", commit],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


def side_environment(side: Side, notice: ReadyNotice) -> dict[str, str]:
    """The tree's own `smtpguard` package comes first on the path, before any install."""
    return {**notice.environment(), "PYTHONPATH": str(side.tree)}


def check_imports_from_tree(side: Side, env: dict[str, str]) -> None:
    found = subprocess.run(
        [sys.executable, "-c", "import smtpguard; print(smtpguard.__file__)"],
        env=env,
        cwd=side.tree,  # `python -c` and `-m` put the working folder first on the path
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(side.tree.resolve()):
        raise SystemExit(f"{side.name}: smtpguard imports from {found}, not from {side.tree}")


def start_relay(side: Side, workdir: Path) -> tuple[subprocess.Popen[bytes], sink.SinkHandle]:
    folder = workdir / side.name
    folder.mkdir()
    upstream = sink.start_sink(HOST)
    side.upstream = upstream
    side.port = free_port()
    notice = ReadyNotice(folder)
    env = side_environment(side, notice)
    check_imports_from_tree(side, env)
    command = [
        sys.executable,
        "-m",
        "smtpguard",
        "serve",
        "--config",
        str(side.tree / "bench" / "smtpguard-bench.yaml"),
        "--listen",
        f"{HOST}:{side.port}",
        "--upstream",
        f"{HOST}:{upstream.port}",
        "--data-dir",
        str(folder / "data"),
    ]
    with open(workdir / f"{side.name}.log", "wb") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=side.tree,
        )
    side.monitor = TreeMonitor(proc.pid)
    why = wait_ready(proc, side.port, 30.0, notice)
    if why is not None:
        stop_process(proc)
        upstream.stop()
        raise SystemExit(
            f"{side.name} did not start: {why}\n{log_tail(workdir / f'{side.name}.log')}"
        )
    return proc, upstream


def load(
    port: int, scenario: str, concurrency: int, duration: float, warmup: float
) -> dict[str, float]:
    """One run of the load generator; its measured phase's rate and latency."""
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("loadgen.py")),
            "--target",
            f"{HOST}:{port}",
            "--scenario",
            scenario,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    result = json.loads(out.stdout) if out.stdout else {}
    measured = result.get("measured", {})
    if not measured.get("accepted") or measured.get("errors"):
        raise SystemExit(f"load run on port {port} failed: {out.stderr[-800:] or measured}")
    return {
        "rate": measured["rate"],
        "p50": measured["latency_ms"]["p50"],
        "p99": measured["latency_ms"]["p99"],
        "accepted": measured["accepted"] + result.get("warmup", {}).get("accepted", 0),
    }


def run_on(
    side: Side, others: tuple[Side, ...], cell: tuple[str, int], duration: float, warmup: float
) -> dict[str, float]:
    """A load run on `side` once every relay has delivered all it accepted: one still
    working off an earlier run's backlog would take CPU from this one."""
    for each in others:
        drained(each)
    run = load(side.port, *cell, duration, warmup)
    side.accepted += int(run["accepted"])
    return run


def drained(side: Side, timeout: float = 300.0) -> None:
    assert side.upstream is not None
    deadline = time.monotonic() + timeout
    while side.upstream.counters.messages < side.accepted:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{side.name}: {side.upstream.counters.messages} of {side.accepted}"
                f" accepted messages delivered after {timeout:.0f} s"
            )
        time.sleep(0.05)


def _sample(sides: tuple[Side, ...], done: threading.Event) -> None:
    """Memory of each relay's process tree, every 0.1 s, until `done`."""
    while not done.wait(0.1):
        for side in sides:
            if side.monitor is not None:
                side.monitor.sample()


def _spread(runs: list[dict[str, float]]) -> str:
    rates = [r["rate"] for r in runs]
    return f"{median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"


def _both(b: list[dict[str, float]], c: list[dict[str, float]], key: str) -> str:
    return f"{median([r[key] for r in b]):.2f} / {median([r[key] for r in c]):.2f}"


def table(baseline: Side, candidate: Side, cells: list[tuple[str, int]]) -> str:
    lines = [
        f"| scenario | conc | {baseline.name} msg/s | {candidate.name} msg/s | ratio"
        " | candidate faster | p50 ms (b / c) | p99 ms (b / c) | peak RSS MiB (b / c) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        b, c = baseline.runs[cell], candidate.runs[cell]
        wins = sum(1 for x, y in zip(b, c, strict=True) if y["rate"] > x["rate"])
        rate_b = median([r["rate"] for r in b])
        rate_c = median([r["rate"] for r in c])

        lines.append(
            f"| {cell[0]} | {cell[1]} | {_spread(b)} | {_spread(c)} | {rate_c / rate_b:.2f}x"
            f" | {wins}/{len(b)} | {_both(b, c, 'p50')} | {_both(b, c, 'p99')}"
            f" | {baseline.peak_mib[cell]:.0f} / {candidate.peak_mib[cell]:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with")
    parser.add_argument(
        "--scenarios", default="plain", help=f"{','.join(SCENARIOS)}, office, text-<N>k, pdfs-<N>"
    )
    parser.add_argument("--concurrency", default="1,20")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each run")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    for scenario in scenarios:
        try:
            template(scenario)  # plain, pdf, office, text-<N>k, pdfs-<N>
        except ValueError as exc:
            parser.error(str(exc))
    cells = [(s, int(c)) for s in scenarios for c in args.concurrency.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smtpguard-ab-") as tmp:
        workdir = Path(tmp)
        commit = export_revision(args.baseline, workdir / "baseline-tree")
        baseline = Side(f"baseline {commit}", workdir / "baseline-tree")
        candidate = Side("working tree", PROJECT_DIR)
        running = []
        try:
            for side in (baseline, candidate):
                running.append(start_relay(side, workdir))
            both = (baseline, candidate)
            for side in both:  # neither is measured fresh
                run_on(side, both, (scenarios[0], 1), 2.0, 0.5)
            sampling = threading.Event()
            sampler = threading.Thread(target=_sample, args=((baseline, candidate), sampling))
            sampler.start()
            try:
                for cell in cells:
                    for side in (baseline, candidate):
                        assert side.monitor is not None
                        side.monitor.peak_rss_sum_kb = 0  # the peak within this cell
                    for index in range(args.rounds):
                        order = (baseline, candidate) if index % 2 == 0 else (candidate, baseline)
                        for side in order:
                            run = run_on(side, both, cell, args.duration, args.warmup)
                            side.runs.setdefault(cell, []).append(run)
                    for side in (baseline, candidate):
                        assert side.monitor is not None
                        side.peak_mib[cell] = side.monitor.peak_rss_sum_kb / 1024
            finally:
                sampling.set()
                sampler.join()
        finally:
            for proc, upstream in running:
                stop_process(proc)
                upstream.stop()
    print(table(baseline, candidate, cells))
    print()
    print(
        "peak RSS: the largest sum of VmRSS over the relay's processes at one sample"
        " (every 0.1 s) within the cell; memory a relay kept from earlier cells counts."
    )
    print(
        f"{args.rounds} alternating rounds per cell, {args.duration:g} s each; took"
        f" {time.monotonic() - started:.0f} s. Reproduce from the project root:"
    )
    print(f"  python bench/ab_bench.py {shlex.join(argv if argv is not None else sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    os.chdir(PROJECT_DIR)
    sys.exit(main())
