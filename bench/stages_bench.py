#!/usr/bin/env python3
"""How fast would smtpguard accept mail if a stage of its work cost nothing?

smtpguard reads, decides and delivers every message on the same event loop
that answers its clients. This runs the relay as shipped beside copies with
stages switched off (stage_switches.py: no reading, no delivery, both, or
nothing after the 250), and beside the floor relay and Postfix, on the same
load. A variant's rate is more than moving its stages to another core could
give on this machine, since there they would still take CPU, and the
machine's two cores are shared with the load generator and the sink (which
has nothing to do when nothing is delivered).

Each run starts a fresh relay and sink, so mail left unread or undelivered by
a variant never piles up across runs; variants take turns within each round,
and the order rotates. Nothing is written to bench/RESULTS.md.

    python bench/stages_bench.py --concurrency 1,20 --rounds 3
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import peers_bench
import relay_bench as rb
import sink
from ab_bench import load
from stage_switches import STAGES

SHIPPED = "shipped"
DEFAULT_VARIANTS = "shipped,no-reading,no-delivery,no-reading+no-delivery,accept-only"
REFERENCES = ("floor", "postfix")


@dataclass
class Runs:
    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    drain: list[float] = field(default_factory=list)


class Running:
    """One relay (a variant of smtpguard, the floor relay or Postfix) and its sink."""

    def __init__(self, name: str, workdir: Path, start_timeout: float) -> None:
        self.name = name
        self.sink = sink.start_sink(rb.HOST)
        self.proc: subprocess.Popen[bytes] | None = None
        self.postfix: peers_bench.PostfixTarget | None = None
        self.folder = workdir / f"{name}-{time.monotonic_ns()}"
        self.folder.mkdir()
        self.log = self.folder / "relay.log"
        try:
            self.port, self.root = self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> tuple[int, int | None]:
        if self.name == "postfix":
            self.postfix = peers_bench.PostfixTarget(
                self.folder, self.sink.port, 150, self.folder / "maillog"
            )
            return self.postfix.start(), None
        listen = rb.free_port()
        if self.name == "floor":
            command = rb.relay_command("floor", listen, self.sink.port, self.folder, [])
            env, notice = None, None
        else:
            smtpguard = [sys.executable, str(rb.BENCH_DIR / "stage_switches.py"), self.name]
            command = rb.relay_command("smtpguard", listen, self.sink.port, self.folder, smtpguard)
            env, notice = rb.relay_environment("smtpguard", self.folder)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=rb.PROJECT_DIR,
            )
        why = rb.wait_ready(self.proc, listen, timeout, notice)
        if why is not None:
            raise SystemExit(f"{self.name} {why}\n{rb.log_tail(self.log)}")
        return listen, self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            rb.stop_process(self.proc)
        if self.postfix is not None:
            self.postfix.stop()
        self.sink.stop()


def measure(
    name: str, cell: tuple[str, int], args: argparse.Namespace, workdir: Path
) -> dict[str, float]:
    relay = Running(name, workdir, args.start_timeout)
    try:
        monitor = rb.TreeMonitor(relay.root) if relay.root is not None else None
        if monitor is not None:
            monitor.sample()
        before = monitor.cpu_seconds if monitor is not None else 0.0
        run = load(relay.port, cell[0], cell[1], args.duration, args.warmup)
        loaded = time.monotonic()
        if delivers(name):
            # Mail accepted faster than it is delivered leaves work (and CPU) for later:
            # counted until the sink has everything.
            deadline = loaded + args.drain_timeout
            while relay.sink.counters.messages < run["accepted"]:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: not all accepted mail delivered in time")
                time.sleep(0.02)
        run["drain"] = time.monotonic() - loaded
        if monitor is not None:
            monitor.sample()
            run["cpu_ms"] = (monitor.cpu_seconds - before) * 1000 / run["accepted"]
        return run
    finally:
        relay.stop()


def delivers(name: str) -> bool:
    return not {"no-delivery", "accept-only"} & set(name.split("+"))


def describe(name: str) -> str:
    if name == SHIPPED:
        return "smtpguard as shipped"
    if name == "floor":
        return "minimal aiosmtpd -> aiosmtplib relay, fsync before 250"
    if name == "postfix":
        return "Postfix as a plain relay"
    return "; ".join(STAGES[stage] for stage in name.split("+"))


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(
    names: list[str], cells: list[tuple[str, int]], runs: dict[tuple[str, str, int], Runs]
) -> str:
    lines = [
        "| relay | what it does | mix | conc | msg/s median (min-max) | vs shipped | vs postfix"
        " | p50 ms | p99 ms | drain s | CPU ms/msg |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, conc in cells:
        medians = {
            name: rb.median(runs[(name, scenario, conc)].rates)
            for name in names
            if runs[(name, scenario, conc)].rates
        }
        for name in names:
            r = runs[(name, scenario, conc)]
            if not r.rates:
                continue
            rate = medians[name]
            cpu = f"{rb.median(r.cpu_ms):.2f}" if r.cpu_ms else "-"
            lines.append(
                f"| {name} | {describe(name)} | {scenario} | {conc}"
                f" | {rate:.0f} ({min(r.rates):.0f}-{max(r.rates):.0f})"
                f" | {_ratio(rate, medians.get(SHIPPED))} | {_ratio(rate, medians.get('postfix'))}"
                f" | {rb.median(r.p50):.2f} | {rb.median(r.p99):.2f}"
                f" | {rb.median(r.drain):.2f} | {cpu} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"smtpguard variants: shipped, or stages joined by '+' ({', '.join(STAGES)})",
    )
    parser.add_argument(
        "--references",
        default=",".join(REFERENCES),
        help="floor, postfix (Postfix needs root and the Debian package; skipped without)",
    )
    parser.add_argument("--scenarios", default="plain")
    parser.add_argument("--concurrency", default="1,20")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        for stage in [] if variant == SHIPPED else variant.split("+"):
            if stage not in STAGES:
                parser.error(f"unknown stage {stage!r}")
    references = [r for r in args.references.split(",") if r]
    skipped = []
    for reference in references:
        if reference not in REFERENCES:
            parser.error(f"unknown reference relay {reference!r}")
        if reference == "postfix" and (why := peers_bench.unavailable("postfix")):
            skipped.append(f"postfix skipped: {why}")
    references = [r for r in references if not (r == "postfix" and skipped)]
    names = variants + references
    scenarios = [s for s in args.scenarios.split(",") if s]
    cells = [(s, int(c)) for s in scenarios for c in args.concurrency.split(",")]
    runs = {(n, *cell): Runs() for n in names for cell in cells}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smtpguard-stages-") as tmp:
        Path(tmp).chmod(0o755)  # Postfix's daemons (its own users) reach their folders in it
        for index in range(args.rounds):
            for cell in cells:
                shift = index % len(names)
                for name in names[shift:] + names[:shift]:
                    run = measure(name, cell, args, Path(tmp))
                    got = runs[(name, *cell)]
                    got.rates.append(run["rate"])
                    got.p50.append(run["p50"])
                    got.p99.append(run["p99"])
                    got.drain.append(run["drain"])
                    if "cpu_ms" in run:
                        got.cpu_ms.append(run["cpu_ms"])
                    print(
                        f"-- round {index + 1} {name:28s} {cell[0]} c={cell[1]:<3d}"
                        f" {run['rate']:7.1f} msg/s  p99 {run['p99']:7.2f} ms",
                        flush=True,
                    )
    print()
    print(table(names, cells, runs))
    print()
    for line in skipped:
        print(line)
    print(
        "drain s: from the end of the load until the sink had every accepted message (a"
        " variant that delivers nothing: 0). CPU ms/msg: the relay's process tree (not"
        " Postfix's), from the start of the warm-up until then, per message accepted."
    )
    print(
        f"{args.rounds} rounds, a fresh relay and sink per run, {args.warmup:g} s warm-up"
        f" and {args.duration:g} s measured; took {time.monotonic() - started:.0f} s."
        " Reproduce from the project root:"
    )
    given = argv if argv is not None else sys.argv[1:]
    print(f"  python bench/stages_bench.py {shlex.join(given)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
