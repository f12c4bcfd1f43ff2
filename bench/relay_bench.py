"""Relay benchmark: smtpguard against the floor relay, over loopback, in one run.

    python bench/relay_bench.py [--duration 10] [--warmup 2] [--repeat 1]   # in the venv
        [--concurrency 1,20] [--scenarios plain,pdf] [--relays floor,smtpguard]

(see bench/README.md; --help lists every option)

For every scenario x concurrency, and for each relay in turn (interleaved, so
both see the machine in the same state), one cell:

1. start a fresh capture sink (`sink.py`, own process, port 0);
2. start a fresh relay process on a free loopback port, upstream = the sink,
   with its own spool/data folder; wait for its 220 banner (20 s at most);
3. start the load generator (`loadgen.py`, own process): connect N clients,
   warm up, wait for the relay to deliver the warm-up to the sink, then the
   measured phase (fixed duration, or fixed count with --messages);
4. wait (30 s at most) for the sink to have every message the relay accepted;
5. SIGTERM the relay and wait; stop the sink.

Reported per cell: messages/s accepted (accepted / wall time of the sending
phase), p50/p99 latency from MAIL FROM to the 250 after DATA, peak memory of
the relay (sum of VmHWM from /proc/PID/status over the relay and any child
processes), relay CPU, CPU used by anything else on the machine, sink count
against accepted count, and the drain (time from the end of sending until the
last message reached the sink). With --repeat N, medians over N rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import loadgen
import sink
from messages import SCENARIOS, template

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
CONFIG = BENCH_DIR / "smtpguard-bench.yaml"
RESULTS = BENCH_DIR / "RESULTS.md"
RELAYS: tuple[str, ...] = ("floor", "smtpguard")
HOST = "127.0.0.1"
SAMPLE_EVERY = 0.1  # seconds between memory samples
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc


def _read_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_stat(pid: int, thread: int | None = None) -> tuple[int, int, int] | None:
    """(ppid, utime+stime in ticks, start time) of ``pid`` (or of one of its threads),
    or None if it is gone."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        with open(path) as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    # fields[0] is state (field 3): ppid is field 4, utime 14, stime 15, starttime 22.
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def pid_cpu_seconds(pid: int) -> float:
    stat = read_stat(pid)
    return stat[1] / CLK_TCK if stat is not None else 0.0


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    tree: list[int] = []
    todo = [root]
    while todo and len(tree) < 10_000:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


class TreeMonitor:
    """Peak memory and CPU of a process and its descendants, by polling /proc."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.hwm_kb: dict[int, int] = {}  # highest VmHWM seen per pid
        self.cpu_ticks: dict[int, int] = {}  # latest utime+stime seen per pid
        self.started: dict[int, int] = {}  # start time per pid, to tell a pid reused
        self.peak_rss_sum_kb = 0  # highest sum of VmRSS seen at one sample
        self.max_procs = 0

    def sample(self) -> None:
        tree = process_tree(self.root)
        self.max_procs = max(self.max_procs, len(tree))
        rss_sum = 0
        for pid in tree:
            hwm = _read_status_kb(pid, "VmHWM")
            if hwm is not None:
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
            rss_sum += _read_status_kb(pid, "VmRSS") or 0
            stat = read_stat(pid)
            if stat is not None:
                self.cpu_ticks[pid] = stat[1]
                self.started.setdefault(pid, stat[2])
        self.peak_rss_sum_kb = max(self.peak_rss_sum_kb, rss_sum)

    def leftovers(self) -> list[int]:
        """Descendants seen earlier that are still alive (same pid, same start time)."""
        alive = []
        for pid, started in self.started.items():
            stat = read_stat(pid)
            if pid != self.root and stat is not None and stat[2] == started:
                alive.append(pid)
        return alive

    @property
    def peak_mib(self) -> float:
        """Sum over the tree of each process's high-water mark (an upper bound)."""
        return sum(self.hwm_kb.values()) / 1024

    @property
    def cpu_seconds(self) -> float:
        """CPU time used so far by every process seen in the tree."""
        return sum(self.cpu_ticks.values()) / CLK_TCK


# --------------------------------------------------------------------------- relays


def free_port(host: str = HOST) -> int:
    """A free TCP port on ``host``, picked by the kernel (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def smtpguard_command() -> list[str]:
    """The smtpguard entry point: the venv script if installed, else ``python -m``."""
    script = Path(sys.executable).parent / "smtpguard"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "smtpguard"]


def relay_command(
    relay: str, listen: int, upstream: int, data_dir: Path, sg_cmd: list[str]
) -> list[str]:
    if relay == "floor":
        return [
            sys.executable,
            str(BENCH_DIR / "floor_relay.py"),
            "--listen",
            f"{HOST}:{listen}",
            "--upstream",
            f"{HOST}:{upstream}",
            "--spool",
            str(data_dir),
        ]
    if relay == "smtpguard":
        return [
            *sg_cmd,
            "serve",
            "--config",
            str(CONFIG),
            "--listen",
            f"{HOST}:{listen}",
            "--upstream",
            f"{HOST}:{upstream}",
            "--data-dir",
            str(data_dir),
        ]
    raise ValueError(f"unknown relay {relay!r}")


def banner_ok(port: int, timeout: float = 1.0) -> bool:
    """True if something on ``port`` answers with a 220 banner."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            line = sock.recv(512)
            if line.startswith(b"220"):
                with contextlib.suppress(OSError):
                    sock.sendall(b"QUIT\r\n")
                    sock.recv(512)
                return True
    except OSError:
        return False
    return False


class RelayProcess(Protocol):
    """What a cell needs of the relay under test: has it exited, and with what."""

    returncode: Any

    def poll(self) -> int | None: ...


class ReadyNotice:
    """A NOTIFY_SOCKET of the bench's own (systemd's readiness protocol): smtpguard
    sends READY=1 only once every one of its processes serves, which a 220 banner
    from the first of them does not show."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))

    def environment(self) -> dict[str, str]:
        return {**os.environ, "NOTIFY_SOCKET": str(self.path)}

    def ready(self) -> bool:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                if b"READY=1" in self.sock.recv(4096):
                    return True
        return False

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def relay_environment(relay: str, folder: Path) -> tuple[dict[str, str] | None, ReadyNotice | None]:
    if relay != "smtpguard":
        return None, None
    notice = ReadyNotice(folder)
    return notice.environment(), notice


def wait_ready(
    proc: RelayProcess, port: int, timeout: float, notice: ReadyNotice | None = None
) -> str | None:
    """None when the relay answers 220 (and, given `notice`, said READY=1) within
    ``timeout``, else why not."""
    deadline = time.monotonic() + timeout
    banner = False
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"exited with status {proc.returncode} before answering"
            banner = banner or banner_ok(port)
            if banner and (notice is None or notice.ready()):
                return None
            time.sleep(0.1)
    finally:
        if notice is not None:
            notice.close()
    what = "no 220 banner" if not banner else "no READY=1"
    return f"{what} on port {port} within {timeout:.0f} s"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
    """SIGTERM, wait, SIGKILL if needed; returns how it ended."""
    if proc.poll() is not None:
        return f"had already exited ({proc.returncode})"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return f"killed after {timeout:.0f} s without exiting on SIGTERM"
    return f"exited {proc.returncode} on SIGTERM"


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- one cell


@dataclass
class Cell:
    relay: str
    scenario: str
    concurrency: int
    message_bytes: int = 0
    failed: str | None = None
    accepted: int = 0  # measured phase
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    rate: float = 0.0
    e2e_rate: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    peak_mib: float = 0.0
    peak_rss_sum_mib: float = 0.0
    procs: int = 0
    relay_cpu_s: float = 0.0
    cpu_ms_per_msg: float | None = None
    relay_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0  # CPU used on the machine by anything but this benchmark
    round: int = 1
    rounds: int = 1
    rate_min: float = 0.0
    rate_max: float = 0.0
    total_accepted: int = 0  # warm-up + measured
    sink_received: int = 0
    drained: bool = False
    drain_s: float | None = None
    stop: str = ""
    log: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return (self.scenario, self.concurrency)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, sg_cmd: list[str]) -> None:
        self.args = args
        self.workdir = workdir
        self.sg_cmd = sg_cmd
        self.ctx = mp.get_context("spawn")

    def _wait_pipe(
        self, conn: Any, monitor: TreeMonitor, proc: RelayProcess, deadline: float
    ) -> tuple[str, Any]:
        """Next message from the load generator, sampling memory while waiting."""
        while time.monotonic() < deadline:
            if conn.poll(SAMPLE_EVERY):
                kind, value = conn.recv()
                return str(kind), value
            monitor.sample()
            if proc.poll() is not None:
                return "relay_exited", proc.returncode
        return "timeout", None

    def _wait_sink(
        self, sk: sink.SinkHandle, target: int, monitor: TreeMonitor, timeout: float
    ) -> bool:
        """Wait for ``target`` messages at the sink: at most ``timeout`` s, and give up
        sooner when nothing has arrived for ``--stall-timeout`` s."""
        deadline = time.monotonic() + timeout
        next_sample = 0.0
        seen, seen_at = sk.counters.messages, time.monotonic()
        while sk.counters.messages < target:
            now = time.monotonic()
            if sk.counters.messages != seen:
                seen, seen_at = sk.counters.messages, now
            if now - seen_at >= self.args.stall_timeout:
                return False
            if now >= deadline or not sk.process.is_alive():
                return False
            if now >= next_sample:
                monitor.sample()
                next_sample = now + SAMPLE_EVERY
            time.sleep(0.005)
        return True

    def run_cell(self, relay: str, scenario: str, concurrency: int, rnd: int) -> Cell:
        args = self.args
        cell = Cell(relay, scenario, concurrency, message_bytes=template(scenario).size)
        cell.round = rnd
        name = f"{relay}-{scenario}-c{concurrency}" + (f"-r{rnd}" if args.repeat > 1 else "")
        data_dir = self.workdir / name
        data_dir.mkdir()
        log_path = self.workdir / f"{name}.log"
        sk = sink.start_sink(HOST)
        listen = free_port()
        cmd = relay_command(relay, listen, sk.port, data_dir, self.sg_cmd)
        env, notice = relay_environment(relay, data_dir)
        with open(log_path, "wb") as log_fh:
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_DIR,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            except OSError as exc:
                sk.stop()
                cell.failed = f"could not start: {exc}"
                return cell
        monitor = TreeMonitor(proc.pid)
        try:
            why = wait_ready(proc, listen, args.start_timeout, notice)
            if why is not None:
                cell.failed = f"did not start: {why}"
                return cell
            self._drive(cell, proc, sk, listen, monitor)
        finally:
            monitor.sample()
            cell.stop = stop_process(proc)
            self._reap_leftovers(cell, monitor)
            sk.stop()
            cell.log = log_tail(log_path)
            if proc.returncode not in (0, -signal.SIGTERM) and cell.failed is None:
                cell.notes.append(f"relay {cell.stop}")
        return cell

    @staticmethod
    def _reap_leftovers(cell: Cell, monitor: TreeMonitor) -> None:
        """Child processes of the relay still alive after it stopped: wait, then kill."""
        deadline = time.monotonic() + 5
        while (left := monitor.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            cell.notes.append(f"killed {len(left)} relay child process(es) left after it exited")
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def expected_at_sink(self, cell: Cell, phases: list[dict[str, Any]]) -> int:
        """Messages the sink should receive for these load generator phases (PhaseResult
        dicts): every accepted one. peers_bench.py overrides it for mail a relay holds."""
        return sum(int(phase["accepted"]) for phase in phases)

    def _drive(
        self,
        cell: Cell,
        proc: RelayProcess,
        sk: sink.SinkHandle,
        port: int,
        monitor: TreeMonitor,
    ) -> None:
        args = self.args
        monitor.sample()
        cfg = loadgen.LoadConfig(
            host=HOST,
            port=port,
            scenario=cell.scenario,
            concurrency=cell.concurrency,
            duration=args.duration,
            messages=args.messages,
            warmup=args.warmup,
        )
        parent, child = self.ctx.Pipe()
        lg = self.ctx.Process(target=loadgen.child_main, args=(cfg, child), name="bench-loadgen")
        lg.start()
        child.close()
        phase_budget = args.duration if args.messages is None else cfg.max_phase_seconds
        deadline = time.monotonic() + args.warmup + phase_budget + args.drain_timeout + 120
        result: dict[str, Any] | None = None
        cpu_start = 0.0
        measure_start = measure_end = 0.0
        others: dict[str, float] = {}
        try:
            while result is None:
                kind, value = self._wait_pipe(parent, monitor, proc, deadline)
                if kind == "warmup_done":
                    warm_ok = self.expected_at_sink(cell, [value])
                    if not self._wait_sink(sk, warm_ok, monitor, args.drain_timeout):
                        cell.notes.append(
                            f"warm-up not drained: sink {sk.counters.messages}/{warm_ok}"
                        )
                    parent.send("go")
                elif kind == "measure_start":
                    monitor.sample()
                    cpu_start = monitor.cpu_seconds
                    measure_start = float(value)
                    others["busy0"] = machine_busy_seconds()
                    others["ours0"] = pid_cpu_seconds(sk.pid) + self_cpu_seconds() + cpu_start
                elif kind == "measure_end":
                    measure_end = float(value)
                    monitor.sample()
                    others["busy1"] = machine_busy_seconds()
                    others["ours1"] = (
                        pid_cpu_seconds(sk.pid) + self_cpu_seconds() + monitor.cpu_seconds
                    )
                elif kind == "result":
                    result = value
                elif kind == "error":
                    cell.failed = f"load generator failed: {value}"
                    return
                elif kind == "relay_exited":
                    cell.failed = f"relay exited with status {value} during the run"
                    return
                else:
                    cell.failed = "load generator timed out"
                    return
        finally:
            if result is None and lg.is_alive():  # the cell failed: do not wait for it
                lg.terminate()
            lg.join(10)
            if lg.is_alive():
                lg.kill()
                lg.join(5)
            parent.close()

        measured = result["measured"]
        warm = result["warmup"]
        cell.accepted = int(measured["accepted"])
        cell.errors = {**measured["errors"], **result["connect_errors"]}
        cell.wall_s = float(measured["wall_s"])
        cell.rate = float(measured["rate"])
        cell.latency_ms = dict(measured["latency_ms"])
        cell.loadgen_cpu_pct = 100 * float(measured["cpu_s"]) / max(cell.wall_s, 1e-9)
        if len(others) == 4:
            ours = others["ours1"] - others["ours0"] + float(measured["cpu_s"])
            other = others["busy1"] - others["busy0"] - ours
            cell.other_cpu_pct = max(0.0, 100 * other / max(measure_end - measure_start, 1e-9))
        if result["connected"] < cell.concurrency:
            cell.notes.append(f"only {result['connected']}/{cell.concurrency} clients connected")
        cell.total_accepted = int(warm["accepted"]) + cell.accepted
        expected = self.expected_at_sink(cell, [warm, measured])

        cell.drained = self._wait_sink(sk, expected, monitor, args.drain_timeout)
        drained_at = time.monotonic()
        monitor.sample()
        cell.sink_received = sk.counters.messages
        if cell.drained:
            last = max(sk.counters.last_at, measure_end)
            cell.drain_s = last - measure_end
            e2e_wall = last - measure_start
            cell.e2e_rate = cell.accepted / e2e_wall if e2e_wall > 0 else 0.0
            drained_at = last
        cell.relay_cpu_s = monitor.cpu_seconds - cpu_start
        cell.cpu_ms_per_msg = 1000 * cell.relay_cpu_s / cell.accepted if cell.accepted else None
        window = max(drained_at - measure_start, 1e-9)
        cell.relay_cpu_pct = 100 * cell.relay_cpu_s / window
        cell.peak_mib = monitor.peak_mib
        cell.peak_rss_sum_mib = monitor.peak_rss_sum_kb / 1024
        cell.procs = monitor.max_procs
        if sk.counters.messages > expected:
            cell.notes.append(
                f"sink got {sk.counters.messages - expected} more than expected "
                "(duplicates or bounces)"
            )

    def run(self, cells: list[Cell]) -> None:
        """Run every cell (``--repeat`` rounds), appending to ``cells`` as it goes."""
        skip: dict[str, str] = {}
        for rnd in range(1, self.args.repeat + 1):
            for scenario in self.args.scenarios:
                for conc in self.args.concurrency:
                    for relay in self.args.relays:
                        self._run_one(cells, skip, relay, scenario, conc, rnd)

    def _run_one(
        self,
        cells: list[Cell],
        skip: dict[str, str],
        relay: str,
        scenario: str,
        conc: int,
        rnd: int,
    ) -> None:
        if relay in skip:
            size = template(scenario).size
            cells.append(Cell(relay, scenario, conc, size, failed=skip[relay], round=rnd))
            return
        label = f"r{rnd} " if self.args.repeat > 1 else ""
        print(f"-- {label}{relay:9s} {scenario:5s} c={conc:<3d} ...", end=" ", flush=True)
        cell = self.run_cell(relay, scenario, conc, rnd)
        cells.append(cell)
        if cell.failed:
            print(f"FAILED: {cell.failed}", flush=True)
            print(_indent(cell.log), flush=True)
            if cell.failed.startswith(("did not start", "could not start")):
                skip[relay] = f"skipped: {cell.failed} in an earlier cell"
        else:
            print(
                f"{cell.rate:8.1f} msg/s  p50 {cell.latency_ms.get('p50', 0):7.2f} ms"
                f"  p99 {cell.latency_ms.get('p99', 0):7.2f} ms"
                f"  peak {cell.peak_mib:6.1f} MiB"
                f"  sink {cell.sink_received}/{cell.total_accepted}"
                f"  other CPU {cell.other_cpu_pct:.0f}%",
                flush=True,
            )


def aggregate(cells: list[Cell]) -> list[Cell]:
    """One cell per relay x scenario x concurrency: medians over the rounds that ran.

    Counts (accepted, sink, errors) are summed; peak memory and drain take the
    worst round; rates, latencies and CPU take the median; a cell that failed in
    every round is reported as its first failure.
    """
    groups: dict[tuple[str, str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.relay, c.scenario, c.concurrency), []).append(c)
    out: list[Cell] = []
    for (relay, scenario, conc), group in groups.items():
        ok = [c for c in group if not c.failed]
        if not ok:
            out.append(group[0])
            continue
        agg = Cell(relay, scenario, conc, message_bytes=ok[0].message_bytes, rounds=len(ok))
        rates = [c.rate for c in ok]
        agg.rate, agg.rate_min, agg.rate_max = median(rates), min(rates), max(rates)
        agg.accepted = sum(c.accepted for c in ok)
        agg.total_accepted = sum(c.total_accepted for c in ok)
        agg.sink_received = sum(c.sink_received for c in ok)
        agg.drained = all(c.drained for c in ok)
        errors: dict[str, int] = {}
        for c in ok:
            for key, n in c.errors.items():
                errors[key] = errors.get(key, 0) + n
        agg.errors = errors
        keys = set.intersection(*(set(c.latency_ms) for c in ok))
        agg.latency_ms = {k: median([c.latency_ms[k] for c in ok]) for k in keys}
        agg.peak_mib = max(c.peak_mib for c in ok)
        agg.peak_rss_sum_mib = max(c.peak_rss_sum_mib for c in ok)
        agg.procs = max(c.procs for c in ok)
        per_msg = [c.cpu_ms_per_msg for c in ok if c.cpu_ms_per_msg is not None]
        agg.cpu_ms_per_msg = median(per_msg) if per_msg else None
        agg.relay_cpu_pct = median([c.relay_cpu_pct for c in ok])
        agg.loadgen_cpu_pct = median([c.loadgen_cpu_pct for c in ok])
        agg.other_cpu_pct = median([c.other_cpu_pct for c in ok])
        drains = [c.drain_s for c in ok if c.drain_s is not None]
        agg.drain_s = max(drains) if agg.drained and drains else None
        if agg.drained:
            agg.e2e_rate = median([c.e2e_rate for c in ok])
        failures = [c for c in group if c.failed]
        agg.notes = [f"round {c.round}: {n}" if len(group) > 1 else n for c in ok for n in c.notes]
        agg.notes += [f"round {c.round} failed: {c.failed}" for c in failures]
        agg.stop = "; ".join(sorted({c.stop for c in ok}))
        out.append(agg)
    return out


def _indent(text: str) -> str:
    return "\n".join("     | " + line for line in text.splitlines())


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def results_table(cells: list[Cell]) -> str:
    head = (
        "| relay | scenario | msg size | conc | msg/s | p50 ms | p99 ms | peak RSS MiB "
        "| relay CPU ms/msg | relay CPU % | loadgen CPU % | other CPU % | errors "
        "| sink / accepted | drain s | e2e msg/s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n"
    )
    rows: list[str] = []
    for c in cells:
        size = f"{c.message_bytes / 1024:.1f} KiB"
        if c.failed:
            rows.append(
                f"| {c.relay} | {c.scenario} | {size} | {c.concurrency} | "
                f"{c.failed} | | | | | | | | | | | |"
            )
            continue
        errors = sum(c.errors.values())
        err = str(errors) if not errors else f"{errors} ({_errors_text(c.errors)})"
        sink_txt = f"{c.sink_received} / {c.total_accepted}" + ("" if c.drained else " NOT DRAINED")
        rate = f"{c.rate:.1f}"
        if c.rounds > 1:
            rate += f" ({c.rate_min:.0f}-{c.rate_max:.0f})"
        rows.append(
            f"| {c.relay} | {c.scenario} | {size} | {c.concurrency} | {rate} "
            f"| {_fmt(c.latency_ms.get('p50'), 2)} | {_fmt(c.latency_ms.get('p99'), 2)} "
            f"| {c.peak_mib:.1f} | {_fmt(c.cpu_ms_per_msg, 2)} | {c.relay_cpu_pct:.0f} "
            f"| {c.loadgen_cpu_pct:.0f} | {c.other_cpu_pct:.0f} | {err} "
            f"| {sink_txt} | {_fmt(c.drain_s, 3)} | {_fmt(c.e2e_rate if c.drained else None)} |"
        )
    return head + "\n".join(rows) + "\n"


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items()))


def ratio_table(cells: list[Cell], relays: list[str]) -> str | None:
    if "floor" not in relays or "smtpguard" not in relays:
        return None
    floor = {c.key: c for c in cells if c.relay == "floor" and not c.failed}
    guard = {c.key: c for c in cells if c.relay == "smtpguard" and not c.failed}
    keys = [k for k in floor if k in guard]
    if not keys:
        return None
    lines = [
        "| scenario | conc | msg/s | p50 | p99 | peak RSS | relay CPU/msg | e2e msg/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in keys:
        f, g = floor[key], guard[key]
        f_cpu, g_cpu = f.cpu_ms_per_msg, g.cpu_ms_per_msg
        lines.append(
            f"| {key[0]} | {key[1]} | {_ratio(g.rate, f.rate)} "
            f"| {_ratio(g.latency_ms.get('p50'), f.latency_ms.get('p50'))} "
            f"| {_ratio(g.latency_ms.get('p99'), f.latency_ms.get('p99'))} "
            f"| {_ratio(g.peak_mib, f.peak_mib)} | {_ratio(g_cpu, f_cpu)} "
            f"| {_ratio(g.e2e_rate or None, f.e2e_rate or None)} |"
        )
    return "\n".join(lines) + "\n"


def _fs_type(path: Path) -> str:
    best, fstype = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], f"{parts[2]} on {parts[0]} ({parts[1]})"
    return fstype


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_total() -> str:
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "?"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _source_state() -> str:
    """The commit of the project tree and whether smtpguard/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(PROJECT_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_DIR), "status", "--porcelain", "--", "smtpguard"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return (head or "no commit yet") + (" + uncommitted changes in smtpguard/" if dirty else "")


def machine_facts(workdir: Path) -> list[str]:
    return [
        f"smtpguard source: {_source_state()}",
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"nproc: {len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()}), {_cpu_model()}",
        f"memory: {_mem_total()}",
        f"kernel: {platform.system()} {platform.release()}",
        f"python: {platform.python_version()} ({sys.executable})",
        "packages: "
        + ", ".join(
            f"{d} {_version(d)}" for d in ("aiosmtpd", "aiosmtplib", "uvloop", "smtpguard")
        ),
        f"spool/data folders: {workdir} on {_fs_type(workdir)}",
    ]


def marked_sections(text: str) -> dict[str, str]:
    """The ``<!-- NAME:start -->`` ... ``<!-- NAME:end -->`` blocks of ``text``, by NAME
    (markers included). Other benchmarks (peers_bench.py) keep their results in these."""
    found: dict[str, str] = {}
    for m in re.finditer(r"<!-- ([\w:.-]+):start -->.*?<!-- \1:end -->", text, flags=re.DOTALL):
        found[m.group(1)] = m.group(0)
    return found


def with_marked_section(text: str, name: str, body: str) -> str:
    """``text`` with section NAME's content replaced by ``body`` (appended if absent)."""
    block = f"<!-- {name}:start -->\n{body.strip()}\n<!-- {name}:end -->"
    old = marked_sections(text).get(name)
    if old is not None:
        return text.replace(old, block, 1)
    return (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"


def keep_marked_sections(old_text: str, new_text: str) -> str:
    """``new_text`` followed by the marked sections of ``old_text`` it does not have."""
    out = new_text
    for name, block in marked_sections(old_text).items():
        if name not in marked_sections(out):
            out = out.rstrip() + "\n\n" + block + "\n"
    return out


def reproduce_command(args: argparse.Namespace) -> str:
    argv = [
        "python",
        "bench/relay_bench.py",
        "--relays",
        ",".join(args.relays),
        "--scenarios",
        ",".join(args.scenarios),
        "--concurrency",
        ",".join(str(c) for c in args.concurrency),
        "--warmup",
        f"{args.warmup:g}",
    ]
    if args.repeat > 1:
        argv += ["--repeat", str(args.repeat)]
    if args.messages is not None:
        argv += ["--messages", str(args.messages)]
    else:
        argv += ["--duration", f"{args.duration:g}"]
    if args.smtpguard_cmd:
        argv += ["--smtpguard-cmd", args.smtpguard_cmd]
    # From the project root, with the project's virtualenv active (. .venv/bin/activate).
    return shlex.join(argv)


def report(raw: list[Cell], args: argparse.Namespace, workdir: Path, elapsed: float) -> str:
    cells = aggregate(raw)
    out: list[str] = ["# smtpguard relay benchmark", ""]
    out += [
        "Loopback only: load generator -> relay -> capture sink, each in its own process, "
        "all on this machine's CPUs.",
        "",
        "- **msg/s**: messages accepted (250 after DATA) in the measured phase / wall time of "
        "that sending phase.",
        "- **p50/p99**: client-measured latency per message from MAIL FROM to the 250 after "
        "DATA on an already open connection (connect and EHLO not timed).",
        "- **peak RSS**: sum of VmHWM (/proc/PID/status) over the relay process and its "
        "children, over the whole cell (warm-up included).",
        "- **relay CPU**: user+system CPU of the relay (and children) from the start of the "
        "measured phase until the sink had everything; ms per accepted message, and % of one "
        "core.",
        "- **loadgen CPU %**: CPU of the load generator process during the sending phase (% of "
        "one core), to show it is not the bottleneck; **other CPU %**: CPU used on the "
        "machine by anything outside this benchmark during the sending phase (% of one "
        "core): when it is high, that cell was disturbed.",
        "- **sink / accepted**: messages the sink received / messages the relay accepted "
        "(warm-up + measured); **drain s**: time from the last 250 to the last message at "
        "the sink; **e2e msg/s**: measured messages / (last message at sink - start of "
        "the measured phase).",
        "",
        f"Warm-up {args.warmup:g} s per cell (then drained); measured phase "
        + (f"{args.messages} messages" if args.messages else f"{args.duration:g} s")
        + "; fresh relay and sink per cell"
        + (
            f"; {args.repeat} rounds, medians shown (msg/s with min-max), worst peak RSS"
            if args.repeat > 1
            else ""
        )
        + f"; run took {elapsed:.0f} s.",
        "",
        results_table(cells),
    ]
    ratios = ratio_table(cells, args.relays)
    if ratios:
        out += [
            "## smtpguard / floor",
            "",
            "(msg/s below 1.00x means smtpguard is slower; "
            "latency, memory and CPU above 1.00x mean it costs more.)",
            "",
            ratios,
        ]
    notes = [(c, n) for c in cells for n in c.notes]
    failed = [c for c in cells if c.failed and not c.failed.startswith("skipped")]
    if notes or failed:
        out += ["## Notes", ""]
        for c, note in notes:
            out.append(f"- {c.relay} {c.scenario} c={c.concurrency}: {note}")
        for c in failed:
            out.append(f"- {c.relay} {c.scenario} c={c.concurrency}: {c.failed}; last log lines:")
            out += ["", "```", c.log, "```", ""]
        out.append("")
    out += ["## Machine", ""] + [f"- {fact}" for fact in machine_facts(workdir)] + [""]
    out += [
        "## Reproduce",
        "",
        "From the project root, in its virtualenv (`. .venv/bin/activate`):",
        "",
        "```",
        reproduce_command(args),
        "```",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def _csv(kind: type, allowed: tuple[str, ...] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {allowed}")
        return values

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark smtpguard against a floor relay.")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument(
        "--messages",
        type=int,
        default=None,
        help="measure this many messages per cell instead of --duration",
    )
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds of every cell; medians are reported"
    )
    p.add_argument("--concurrency", type=_csv(int), default=[1, 20], help="e.g. 1,20")
    p.add_argument("--scenarios", type=_csv(str, SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--relays", type=_csv(str, RELAYS), default=list(RELAYS))
    p.add_argument("--start-timeout", type=float, default=20.0, help="seconds to wait for 220")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the sink to get everything",
    )
    p.add_argument(
        "--smtpguard-cmd",
        default=None,
        help="command that starts smtpguard, before 'serve ...' "
        "(default: the venv's smtpguard script, else 'python -m smtpguard')",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        help="stop waiting for the sink after this many seconds without a new message",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent folder for spool/data folders and logs (default: system temp)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to overwrite")
    p.add_argument("--no-results", action="store_true", help="do not write the results file")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or (args.messages is not None and args.messages <= 0):
        p.error("--duration and --messages must be positive, --warmup not negative")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be within 1..20")
    if any(c < 1 or c > 1000 for c in args.concurrency):
        p.error("--concurrency must be within 1..1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sg_cmd = shlex.split(args.smtpguard_cmd) if args.smtpguard_cmd else smtpguard_command()
    workdir = Path(tempfile.mkdtemp(prefix="smtpguard-bench-", dir=args.workdir))
    print(f"work folder {workdir}; smtpguard command: {shlex.join(sg_cmd)}", flush=True)
    started = time.monotonic()
    cells: list[Cell] = []
    complete = False
    try:
        Bench(args, workdir, sg_cmd).run(cells)
        complete = True
    finally:
        elapsed = time.monotonic() - started
        text = report(cells, args, workdir, elapsed)
        print()
        print(text)
        if not complete:
            print("(interrupted: partial results, results file not written)")
        elif not args.no_results:
            # Sections of other benchmarks (peers_bench.py) in the file are kept.
            old = args.results.read_text() if args.results.exists() else ""
            args.results.write_text(keep_marked_sections(old, text))
            print(f"(written to {args.results})")
        if args.keep or any(c.failed for c in cells):
            (workdir / "cells.json").write_text(json.dumps([asdict(c) for c in cells], indent=1))
            print(f"logs and cells.json kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("reproduce with:\n  " + reproduce_command(args))
    return 0 if any(not c.failed for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
