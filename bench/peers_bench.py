"""smtpguard beside real peers: the same load, the same sink, one run, one machine.

    python bench/peers_bench.py                       # as root, in the venv (see bench/README.md)
        [--relays ceiling,floor,postfix,amavis,smtpguard] [--mixes plain,pdf,office,blend]
        [--concurrency 1,20,100] [--duration 10] [--warmup 2] [--repeat 1]
    python bench/peers_bench.py --sizes               # smtpguard's cost against message size
    python bench/peers_bench.py --show-config         # the main.cf and amavisd.conf it writes

Relays, each started fresh per cell on a free loopback port, forwarding to a
fresh capture sink (``sink.py``), driven by the same load generator
(``loadgen.py``) exactly as ``relay_bench.py`` drives its relays (its `Bench`
does the driving: warm-up, drain, measured phase, drain):

* ``ceiling``: no relay, the load generator straight into the sink;
* ``floor``: ``floor_relay.py``, the least a durable relay does (fsync before 250);
* ``postfix``: a private Postfix instance (``postfix -c DIR start``, its own
  config, queue and log in a temp folder: tests/postfix.py's `PostfixInstance`),
  a plain relay to the sink, queue files fsync'd as Postfix always does;
* ``amavis``: amavisd-new in the foreground with its own config and home folder,
  virus and spam checks off: a pass-through content filter to the sink;
* ``smtpguard``: ``smtpguard serve --config bench/smtpguard-bench.yaml``.

Postfix and amavisd must be started as root (they drop to their own users):
run the harness as root. Per cell: msg/s, p50/p99 latency, CPU per message and
peak memory of every process of the relay's instance (its process tree from
/proc, with the CPU of the children it has reaped); then smtpguard's ratios to
the peers against the performance targets.
The table goes between ``<!-- peers_bench:start -->`` and ``<!-- peers_bench:end
-->`` in bench/RESULTS.md (``--sizes``: ``peers_bench_sizes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import relay_bench as rb
import sink
from messages import MIXES, mix

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(1, str(PROJECT_DIR))
from tests.postfix import Ports, PostfixInstance  # noqa: E402
from tests.postfix import unavailable as postfix_unavailable  # noqa: E402

RELAYS: tuple[str, ...] = ("ceiling", "floor", "postfix", "amavis", "smtpguard")
HOST = rb.HOST
SECTION = "peers_bench"
SIZES_SECTION = "peers_bench_sizes"
DRAIN_TIMEOUT = 60.0  # seconds for the sink to get every accepted message
MEMORY_EVERY = 0.25  # seconds between memory samples (Postfix at c=100 has 200+ processes)
PSS_EVERY = 1.0  # seconds between PSS samples (smaps_rollup costs more than status)
# smtpguard tells the sender of every held message at once (one notice through the
# upstream, i.e. to the sink); the bench config names no reviewers' mailbox, so no
# reviewers' notice. The sink therefore expects (accepted - held) + held * this.
SMTPGUARD_NOTICES_PER_HOLD = 1
AMAVIS_USER = "amavis"

# The performance targets: smtpguard msg/s / postfix msg/s per mix, and the others.
POSTFIX_RATE_TARGETS = {"plain": 1.0, "pdf": 0.6}
AMAVIS_RATE_TARGET = 3.0
P99_TARGET = 2.0


# --------------------------------------------------------------------------- /proc


def _scan_proc() -> dict[int, tuple[int, int, int, int]]:
    """Every process: pid -> (ppid, utime+stime, cutime+cstime, starttime), in ticks."""
    out: dict[int, tuple[int, int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                data = fh.read()
        except OSError:
            continue
        f = data[data.rfind(")") + 2 :].split()
        # f[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17, start 22.
        out[int(entry)] = (
            int(f[1]),
            int(f[11]) + int(f[12]),
            int(f[13]) + int(f[14]),
            int(f[19]),
        )
    return out


def _status_kb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) in KiB (0 when gone or a kernel thread)."""
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        pass
    return hwm, rss


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class InstanceMonitor(rb.TreeMonitor):
    """CPU and memory of one relay instance: the process tree under its root.

    CPU: the sum over the live tree of utime+stime plus cutime+cstime (what each
    has collected from children it reaped), so the CPU of processes that came
    and went between two samples is counted too (Postfix retires its smtpd,
    cleanup and smtp processes after 100 uses, amavisd its children after 20
    sessions, pebble its workers). Read afresh whenever `cpu_seconds` is read; only
    differences between two readings are used.

    Memory (`sample`, at most every ``MEMORY_EVERY`` s): the sum of VmHWM over the
    processes alive then; the peak is the largest such sum (a retired process no
    longer counts). PSS (shared pages split between the processes that share them)
    is summed at most every ``PSS_EVERY`` seconds; its peak is the largest sum seen.
    """

    def __init__(self, root: int | None) -> None:
        super().__init__(root if root is not None else -1)
        self.has_root = root is not None
        self.peak_hwm_sum_kb = 0
        self.peak_pss_kb = 0
        self._stats: dict[int, tuple[int, int, int, int]] = {}
        self._next_sample = 0.0
        self._next_pss = 0.0

    def tree(self) -> list[int]:
        stats = _scan_proc()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        tree: list[int] = []
        todo = [self.root] if self.root in stats else []
        while todo and len(tree) < 10_000:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        self._stats = stats
        return tree

    def sample(self) -> None:
        now = time.monotonic()
        if not self.has_root or now < self._next_sample:
            return
        self._next_sample = now + MEMORY_EVERY
        tree = self.tree()
        self.max_procs = max(self.max_procs, len(tree))
        hwm_sum = rss_sum = 0
        for pid in tree:
            self.started[pid] = self._stats[pid][3]
            hwm, rss = _status_kb(pid)
            hwm_sum += hwm
            rss_sum += rss
            if hwm:
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
        self.peak_hwm_sum_kb = max(self.peak_hwm_sum_kb, hwm_sum)
        self.peak_rss_sum_kb = max(self.peak_rss_sum_kb, rss_sum)
        if now >= self._next_pss:
            self._next_pss = now + PSS_EVERY
            self.peak_pss_kb = max(self.peak_pss_kb, sum(_pss_kb(pid) for pid in tree))

    @property
    def peak_mib(self) -> float:
        return self.peak_hwm_sum_kb / 1024

    @property
    def cpu_seconds(self) -> float:
        """CPU used so far by the instance's processes, live and reaped (read now)."""
        if not self.has_root:
            return 0.0
        ticks = 0
        for pid in self.tree():
            _, own, reaped, start = self._stats[pid]
            ticks += own + reaped
            self.started[pid] = start
        return ticks / rb.CLK_TCK


class PidProcess:
    """A relay process that is not our child (Postfix's master): alive while its pid
    still names the process it named at the start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = _scan_proc().get(pid, (0, 0, 0, -1))[3]
        self.returncode: Any = None

    def poll(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                data = fh.read()
            start = int(data[data.rfind(")") + 2 :].split()[19])
        except (OSError, ValueError, IndexError):
            start = -2
        if start != self.started:
            self.returncode = "unknown (not our child)"
            return -1
        return None


class SinkProcess:
    """The ceiling's "relay" is the sink itself: it has exited when the sink has."""

    def __init__(self, sk: sink.SinkHandle) -> None:
        self.sk = sk
        self.returncode: Any = None

    def poll(self) -> int | None:
        if self.sk.process.is_alive():
            return None
        self.returncode = self.sk.process.exitcode
        return -1


# --------------------------------------------------------------------------- relays


class StartFailed(Exception):
    pass


def amavisd_path() -> str | None:
    return shutil.which("amavisd") or (
        "/usr/sbin/amavisd" if os.access("/usr/sbin/amavisd", os.X_OK) else None
    )


def amavis_unavailable() -> str | None:
    if amavisd_path() is None:
        return (
            "amavisd-new is not installed (DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends amavisd-new)"
        )
    try:
        pwd.getpwnam(AMAVIS_USER)
    except KeyError:
        return f"no {AMAVIS_USER} user (the amavisd-new package creates it)"
    if os.geteuid() != 0:
        return "amavisd must be started as root (it drops to the amavis user)"
    return None


def unavailable(relay: str) -> str | None:
    if relay == "postfix":
        why: str | None = postfix_unavailable()
        return why
    if relay == "amavis":
        return amavis_unavailable()
    return None


def postfix_settings(process_limit: int) -> dict[str, str]:
    """What the harness changes in tests/postfix.py's base main.cf: Postfix's own
    defaults back for its test-only quick retries, and the benchmark's limits."""
    return {
        # tests/postfix.py retries deferred mail every second; back to the defaults.
        "queue_run_delay": "300s",
        "minimal_backoff_time": "300s",
        "maximal_backoff_time": "4000s",
        "smtp_connect_timeout": "30s",
        # One smtpd per client connection: room for the largest --concurrency.
        "default_process_limit": str(process_limit),
        # Reuse connections to the next hop (the sink), always, not only under backlog.
        "smtp_connection_cache_on_demand": "yes",
        "smtp_connection_cache_destinations": "$relayhost",
    }


def amavis_conf(home: Path, listen: int, sink_port: int, max_servers: int) -> str:
    """amavisd.conf of one cell: pass-through content filter, no virus or spam checks."""
    return f"""\
# amavisd-new as a pass-through content filter for bench/peers_bench.py.
use strict;
$MYHOME   = '{home}';
$TEMPBASE = "$MYHOME/tmp";
$db_home  = "$MYHOME/db";
$helpers_home = $MYHOME;
$lock_file = "$MYHOME/amavisd.lock";
$pid_file  = "$MYHOME/amavisd.pid";
$daemon_user  = '{AMAVIS_USER}';
$daemon_group = '{AMAVIS_USER}';
$mydomain   = 'bench.test';
$myhostname = 'amavis.bench.test';
@local_domains_maps = (['.northshire.gov.uk']);  # the council's mail is outbound
$DO_SYSLOG = 0;
$LOGFILE   = "$MYHOME/amavis.log";
$log_level = 0;                       # Debian's default: one line per message
$enable_db = 0;                       # no BerkeleyDB (nanny, SNMP counters, cache)
$enable_zmq = 0;
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;
$QUARANTINEDIR = undef;
$path = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/usr/bin:/bin';
$file = 'file';  $gzip = 'gzip';  $bzip2 = 'bzip2';

# Listen on loopback; forward everything (and any notification) to the sink.
$inet_socket_bind = '127.0.0.1';
$inet_socket_port = {listen};
@inet_acl = qw(127.0.0.1);
$forward_method = 'smtp:[127.0.0.1]:{sink_port}';
$notify_method  = $forward_method;
# pre-forked children, one SMTP session each
$max_servers = {max_servers};
# amavisd's default
$max_requests = 20;

# No virus or spam scanning: no ClamAV, no SpamAssassin.
@bypass_virus_checks_maps = (1);
@bypass_spam_checks_maps  = (1);
@av_scanners = ();
@av_scanners_backup = ();

# What stays on, as in Debian's configuration: MIME decoding, file(1) typing,
# banned file name and header checks.
$final_banned_destiny     = D_DISCARD;
$final_bad_header_destiny = D_PASS;
$banned_filename_re = new_RE(
  qr'\\.[^./]*\\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\\.?$'i,
  qr'\\{{[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}\\}}?$'i,
  qr'^application/x-msdownload$'i,
  qr'^application/x-msdos-program$'i,
  qr'^application/hta$'i,
  qr'.\\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$'i,
  qr'^\\.(exe-ms)$',
);
1;
"""


class Target:
    """One relay instance of one cell."""

    process: rb.RelayProcess
    root: int | None = None
    log_path: Path | None = None

    def start(self) -> int:
        """Start it; the port it listens on. Raises StartFailed."""
        raise NotImplementedError

    def stop(self) -> str:
        return ""

    def log_tail(self) -> str:
        return rb.log_tail(self.log_path) if self.log_path else ""


class CeilingTarget(Target):
    def __init__(self, sk: sink.SinkHandle) -> None:
        self.sk = sk
        self.process = SinkProcess(sk)

    def start(self) -> int:
        return self.sk.port


class PopenTarget(Target):
    """floor, smtpguard (relay_bench's commands) and amavisd: a child process."""

    def __init__(
        self,
        cmd: list[str],
        listen: int,
        log_path: Path,
        timeout: float,
        ready: tuple[dict[str, str] | None, rb.ReadyNotice | None] = (None, None),
    ) -> None:
        self.cmd = cmd
        self.env, self.notice = ready
        self.listen = listen
        self.log_path = log_path
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        assert self.log_path is not None
        with open(self.log_path, "ab") as log_fh:
            try:
                self.proc = subprocess.Popen(
                    self.cmd,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_DIR,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                )
            except OSError as exc:
                raise StartFailed(f"could not start: {exc}") from exc
        self.process = self.proc
        self.root = self.proc.pid
        why = rb.wait_ready(self.proc, self.listen, self.timeout, self.notice)
        if why is not None:
            raise StartFailed(f"did not start: {why}")
        return self.listen

    def stop(self) -> str:
        return rb.stop_process(self.proc) if self.proc is not None else "never started"


class AmavisTarget(PopenTarget):
    def __init__(
        self, cell_dir: Path, sink_port: int, max_servers: int, log_path: Path, timeout: float
    ) -> None:
        listen = rb.free_port()
        home = cell_dir / "home"
        for sub in (home, home / "tmp", home / "db"):
            sub.mkdir(parents=True, exist_ok=True)
        user = pwd.getpwnam(AMAVIS_USER)
        for sub in (home, home / "tmp", home / "db"):
            os.chown(sub, user.pw_uid, user.pw_gid)
        self.conf = cell_dir / "amavisd.conf"
        self.conf.write_text(amavis_conf(home, listen, sink_port, max_servers))
        self.conf.chmod(0o644)
        cmd = [str(amavisd_path()), "-c", str(self.conf), "foreground"]
        super().__init__(cmd, listen, log_path, timeout)
        self.amavis_log = home / "amavis.log"

    def log_tail(self) -> str:
        return rb.log_tail(self.amavis_log) + "\n" + super().log_tail()


@contextlib.contextmanager
def _temp_parent(folder: Path) -> Iterator[None]:
    """Make tempfile.mkdtemp() (as PostfixInstance calls it) create under ``folder``."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved


class PostfixTarget(Target):
    """A private Postfix (tests/postfix.py): `postfix -c DIR start`, relayhost = the sink."""

    def __init__(self, workdir: Path, sink_port: int, process_limit: int, log_copy: Path) -> None:
        self.ports = Ports.pick(sink_port)
        with _temp_parent(workdir):
            self.instance = PostfixInstance(self.ports, settings=postfix_settings(process_limit))
        self.log_path = self.instance.maillog
        self.log_copy = log_copy

    def start(self) -> int:
        try:
            asyncio.run(self.instance.start())
        except (AssertionError, OSError) as exc:
            raise StartFailed(f"did not start: {str(exc)[:2000]}") from exc
        pid_file = self.instance.root / "queue" / "pid" / "master.pid"
        try:
            self.root = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise StartFailed(f"no master pid in {pid_file}: {exc}") from exc
        self.process = PidProcess(self.root)
        return int(self.ports.submission)

    def stop(self) -> str:
        with contextlib.suppress(OSError):
            shutil.copyfile(self.instance.maillog, self.log_copy)
        self.log_path = self.log_copy
        try:
            asyncio.run(self.instance.stop())
        except (AssertionError, OSError) as exc:
            return f"postfix stop failed: {exc}"
        return "postfix stop"


# --------------------------------------------------------------------------- cells


@dataclass
class PeerCell(rb.Cell):
    held: int = 0  # accepted messages smtpguard holds (never delivered; peers: 0)
    expected: int = 0  # messages the sink should receive
    peak_pss_mib: float = 0.0
    amavis_servers: int = 0


class PeersBench(rb.Bench):
    """relay_bench's Bench, with the peers as relays: only starting and stopping differ."""

    def __init__(self, args: argparse.Namespace, workdir: Path, sg_cmd: list[str]) -> None:
        super().__init__(args, workdir, sg_cmd)
        self.process_limit = max(100, max(args.concurrency) + 50)

    def amavis_servers(self, concurrency: int) -> int:
        if self.args.amavis_servers:
            return int(self.args.amavis_servers)
        return max(2 * (os.cpu_count() or 1), concurrency)

    def expected_at_sink(self, cell: rb.Cell, phases: list[dict[str, Any]]) -> int:
        accepted = sum(int(p["accepted"]) for p in phases)
        held = 0
        if cell.relay == "smtpguard":
            names = {t.name for t in mix(cell.scenario).templates if t.held}
            held = sum(
                int(n) for p in phases for k, n in p.get("accepted_by", {}).items() if k in names
            )
        expected = accepted - held + held * SMTPGUARD_NOTICES_PER_HOLD
        if isinstance(cell, PeerCell):
            cell.held, cell.expected = held, expected
        return expected

    def make_target(self, relay: str, name: str, sk: sink.SinkHandle, conc: int) -> Target:
        args = self.args
        log_path = self.workdir / f"{name}.log"
        if relay == "ceiling":
            return CeilingTarget(sk)
        if relay == "postfix":
            return PostfixTarget(self.workdir, sk.port, self.process_limit, log_path)
        cell_dir = self.workdir / name
        cell_dir.mkdir()
        if relay == "amavis":
            servers = self.amavis_servers(conc)
            return AmavisTarget(cell_dir, sk.port, servers, log_path, args.start_timeout)
        listen = rb.free_port()
        cmd = rb.relay_command(relay, listen, sk.port, cell_dir, self.sg_cmd)
        ready = rb.relay_environment(relay, cell_dir)
        return PopenTarget(cmd, listen, log_path, args.start_timeout, ready)

    def run_cell(self, relay: str, scenario: str, concurrency: int, rnd: int) -> PeerCell:
        cell = PeerCell(relay, scenario, concurrency, message_bytes=mix(scenario).size, round=rnd)
        if relay == "amavis":
            cell.amavis_servers = self.amavis_servers(concurrency)
        name = f"{relay}-{scenario}-c{concurrency}" + (f"-r{rnd}" if self.args.repeat > 1 else "")
        sk = sink.start_sink(HOST)
        try:
            target = self.make_target(relay, name, sk, concurrency)
        except (OSError, KeyError) as exc:
            sk.stop()
            cell.failed = f"could not set up: {exc}"
            return cell
        monitor: InstanceMonitor | None = None
        try:
            port = target.start()
            monitor = InstanceMonitor(target.root)
            self._drive(cell, target.process, sk, port, monitor)
        except StartFailed as exc:
            cell.failed = str(exc)
        finally:
            if monitor is not None:
                monitor.sample()
            cell.stop = target.stop()
            if monitor is not None and monitor.has_root:
                self._reap_leftovers(cell, monitor)
                cell.peak_pss_mib = monitor.peak_pss_kb / 1024
            sk.stop()
            cell.log = target.log_tail()
        if relay == "ceiling":
            cell.cpu_ms_per_msg = None
        elif not cell.failed and cell.drained and cell.sink_received != cell.expected:
            cell.notes.append(f"sink got {cell.sink_received}, expected {cell.expected}")
        return cell

    def run(self, cells: list[rb.Cell]) -> None:
        skip = {r: f"skipped: {why}" for r in self.args.relays if (why := unavailable(r))}
        for rnd in range(1, self.args.repeat + 1):
            for scenario in self.args.mixes:
                for conc in self.args.concurrency:
                    for relay in self.args.relays:
                        self._one(cells, skip, relay, scenario, conc, rnd)

    def _one(
        self,
        cells: list[rb.Cell],
        skip: dict[str, str],
        relay: str,
        scenario: str,
        conc: int,
        rnd: int,
    ) -> None:
        if relay in skip:
            size = mix(scenario).size
            cells.append(PeerCell(relay, scenario, conc, size, failed=skip[relay], round=rnd))
            return
        label = f"r{rnd} " if self.args.repeat > 1 else ""
        print(f"-- {label}{relay:9s} {scenario:9s} c={conc:<3d} ...", end=" ", flush=True)
        cell = self.run_cell(relay, scenario, conc, rnd)
        cells.append(cell)
        if cell.failed:
            print(f"FAILED: {cell.failed}", flush=True)
            print(rb._indent(cell.log), flush=True)
            if cell.failed.startswith(("did not start", "could not")):
                skip[relay] = f"skipped: {cell.failed.splitlines()[0]} in an earlier cell"
            return
        cpu = "-" if cell.cpu_ms_per_msg is None else f"{cell.cpu_ms_per_msg:.2f}"
        print(
            f"{cell.rate:8.1f} msg/s  p50 {cell.latency_ms.get('p50', 0):7.2f} ms"
            f"  p99 {cell.latency_ms.get('p99', 0):7.2f} ms  CPU {cpu} ms/msg"
            f"  peak {cell.peak_mib:6.1f} MiB  sink {cell.sink_received}/{cell.expected}"
            f"  other CPU {cell.other_cpu_pct:.0f}%",
            flush=True,
        )


def aggregate(raw: list[rb.Cell]) -> list[PeerCell]:
    """relay_bench's medians over rounds, with the peers' own columns."""
    groups: dict[tuple[str, str, int], list[PeerCell]] = {}
    for c in raw:
        assert isinstance(c, PeerCell)
        groups.setdefault((c.relay, c.scenario, c.concurrency), []).append(c)
    out: list[PeerCell] = []
    for agg in rb.aggregate(raw):
        group = groups[(agg.relay, agg.scenario, agg.concurrency)]
        ok = [c for c in group if not c.failed] or group[:1]
        cell = PeerCell(**asdict(agg))
        cell.held = sum(c.held for c in ok)
        cell.expected = sum(c.expected for c in ok)
        cell.peak_pss_mib = max(c.peak_pss_mib for c in ok)
        cell.amavis_servers = max(c.amavis_servers for c in ok)
        out.append(cell)
    return out


# --------------------------------------------------------------------------- report


def _mib(value: float) -> str:
    return f"{value:.0f}" if value else "-"


def results_table(cells: list[PeerCell]) -> str:
    lines = [
        "| relay | mix | msg size | conc | msg/s | p50 ms | p99 ms | CPU ms/msg | relay CPU % "
        "| peak MiB (ΣVmHWM) | peak PSS MiB | procs | loadgen CPU % | other CPU % | errors "
        "| held | sink / expected | drain s | e2e msg/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for c in cells:
        size = f"{c.message_bytes / 1024:.1f} KiB"
        relay = c.relay + (f" ({c.amavis_servers} servers)" if c.amavis_servers else "")
        if c.failed:
            lines.append(
                f"| {relay} | {c.scenario} | {size} | {c.concurrency} | {c.failed} |" + " |" * 14
            )
            continue
        errors = sum(c.errors.values())
        err = str(errors) if not errors else f"{errors} ({rb._errors_text(c.errors)})"
        sink_txt = f"{c.sink_received} / {c.expected}" + ("" if c.drained else " NOT DRAINED")
        rate = f"{c.rate:.1f}"
        if c.rounds > 1:
            rate += f" ({c.rate_min:.0f}-{c.rate_max:.0f})"
        ceiling = c.relay == "ceiling"
        held = str(c.held) if c.relay == "smtpguard" else "-"
        lines.append(
            f"| {relay} | {c.scenario} | {size} | {c.concurrency} | {rate} "
            f"| {rb._fmt(c.latency_ms.get('p50'), 2)} | {rb._fmt(c.latency_ms.get('p99'), 2)} "
            f"| {rb._fmt(c.cpu_ms_per_msg, 2)} | {'-' if ceiling else f'{c.relay_cpu_pct:.0f}'} "
            f"| {_mib(c.peak_mib)} | {_mib(c.peak_pss_mib)} | {c.procs or '-'} "
            f"| {c.loadgen_cpu_pct:.0f} | {c.other_cpu_pct:.0f} | {err} | {held} | {sink_txt} "
            f"| {rb._fmt(c.drain_s, 3)} | {rb._fmt(c.e2e_rate if c.drained else None)} |"
        )
    return "\n".join(lines) + "\n"


def _check(ratio: float | None, target: float | None, at_least: bool) -> str:
    if ratio is None:
        return "-"
    text = f"{ratio:.2f}x"
    if target is None:
        return text
    ok = ratio >= target if at_least else ratio <= target
    return f"{text} {'✓' if ok else '✗'}"


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _e2e(cell: PeerCell | None) -> float | None:
    return cell.e2e_rate if cell is not None and cell.drained and cell.e2e_rate else None


def ratio_table(cells: list[PeerCell]) -> str | None:
    by = {(c.relay, c.scenario, c.concurrency): c for c in cells if not c.failed}
    keys = sorted(
        {(c.scenario, c.concurrency) for c in cells if c.relay == "smtpguard" and not c.failed},
        key=lambda k: (MIXES.index(k[0]) if k[0] in MIXES else 99, k[1]),
    )
    if not keys:
        return None
    lines = [
        "| mix | conc | msg/s vs postfix (target) | msg/s vs amavis (target ≥3x) "
        "| p99 vs postfix (target ≤2x) | e2e msg/s vs postfix | CPU/msg vs postfix "
        "| CPU/msg vs amavis | msg/s vs floor | msg/s vs ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, conc in keys:
        g = by[("smtpguard", scenario, conc)]
        pf = by.get(("postfix", scenario, conc))
        am = by.get(("amavis", scenario, conc))
        fl = by.get(("floor", scenario, conc))
        ce = by.get(("ceiling", scenario, conc))
        pf_target = POSTFIX_RATE_TARGETS.get(scenario)
        p99 = _div(g.latency_ms.get("p99"), pf.latency_ms.get("p99") if pf else None)
        pf_rate = _check(_div(g.rate, pf.rate if pf else None), pf_target, True)
        if pf_target is not None and pf_rate != "-":
            pf_rate += f" (≥{pf_target:.1f}x)"
        lines.append(
            f"| {scenario} | {conc} | {pf_rate} "
            f"| {_check(_div(g.rate, am.rate if am else None), AMAVIS_RATE_TARGET, True)} "
            f"| {_check(p99, P99_TARGET, False)} "
            f"| {_check(_div(_e2e(g), _e2e(pf)), None, True)} "
            f"| {_check(_div(g.cpu_ms_per_msg, pf.cpu_ms_per_msg if pf else None), None, False)} "
            f"| {_check(_div(g.cpu_ms_per_msg, am.cpu_ms_per_msg if am else None), None, False)} "
            f"| {_check(_div(g.rate, fl.rate if fl else None), None, True)} "
            f"| {_check(_div(g.rate, ce.rate if ce else None), None, True)} |"
        )
    return "\n".join(lines) + "\n"


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_facts(workdir: Path, load_before: str) -> list[str]:
    facts = rb.machine_facts(workdir)
    facts.append(
        "peers: Postfix "
        + _tool_version(["postconf", "-d", "-h", "mail_version"])
        + ", amavisd-new "
        + _tool_version(["dpkg-query", "-W", "-f", "${Version}", "amavisd-new"])
    )
    facts.append(f"load average (1, 5, 15 min) before the run: {load_before}; after: {loadavg()}")
    facts.append(f"run as uid {os.geteuid()}" + (" (root)" if os.geteuid() == 0 else ""))
    return facts


def reproduce_command(args: argparse.Namespace) -> str:
    argv = ["python", "bench/peers_bench.py"]
    if args.sizes:
        argv += ["--sizes", "--relays", ",".join(args.relays)]
        argv += ["--sizes-text", ",".join(str(v) for v in args.sizes_text)]
        argv += ["--sizes-pdfs", ",".join(str(v) for v in args.sizes_pdfs)]
    else:
        argv += ["--relays", ",".join(args.relays), "--mixes", ",".join(args.mixes)]
    argv += ["--concurrency", ",".join(str(c) for c in args.concurrency)]
    argv += ["--warmup", f"{args.warmup:g}"]
    if args.repeat > 1:
        argv += ["--repeat", str(args.repeat)]
    if args.messages is not None:
        argv += ["--messages", str(args.messages)]
    else:
        argv += ["--duration", f"{args.duration:g}"]
    if args.drain_timeout != DRAIN_TIMEOUT:
        argv += ["--drain-timeout", f"{args.drain_timeout:g}"]
    if args.amavis_servers:
        argv += ["--amavis-servers", str(args.amavis_servers)]
    if args.smtpguard_cmd:
        argv += ["--smtpguard-cmd", args.smtpguard_cmd]
    return shlex.join(argv)


def _phase_text(args: argparse.Namespace, elapsed: float) -> str:
    return (
        f"Warm-up {args.warmup:g} s per cell (then drained); measured phase "
        + (f"{args.messages} messages" if args.messages else f"{args.duration:g} s")
        + "; fresh relay and sink per cell, relays interleaved within each mix x concurrency"
        + (f"; {args.repeat} rounds, medians (msg/s with min-max)" if args.repeat > 1 else "")
        + f"; run took {elapsed:.0f} s."
    )


def _tail(cells: list[PeerCell], args: argparse.Namespace, workdir: Path, load0: str) -> list[str]:
    out: list[str] = []
    notes = [(c, n) for c in cells for n in c.notes]
    failed = [c for c in cells if c.failed]
    if notes or failed:
        out += ["### Notes", ""]
        for c, note in notes:
            out.append(f"- {c.relay} {c.scenario} c={c.concurrency}: {note}")
        for c in failed:
            reason = c.failed or ""
            out.append(f"- {c.relay} {c.scenario} c={c.concurrency}: {reason.splitlines()[0]}")
            if not reason.startswith("skipped") and c.log.strip():
                out += ["", "```", c.log[-3000:], "```", ""]
        out.append("")
    out += ["### Machine", ""] + [f"- {f}" for f in machine_facts(workdir, load0)] + [""]
    out += [
        "### Reproduce",
        "",
        "As root, from the project root, in its virtualenv (`. .venv/bin/activate`), with "
        "Postfix and amavisd-new installed (bench/README.md):",
        "",
        "```",
        reproduce_command(args),
        "```",
        "",
    ]
    return out


def report(
    raw: list[rb.Cell], args: argparse.Namespace, workdir: Path, elapsed: float, load0: str
) -> str:
    cells = aggregate(raw)
    blend = mix("blend")
    out = [
        "## smtpguard beside its peers (peers_bench.py)",
        "",
        "Loopback only, one machine: load generator -> relay -> capture sink, the same "
        "load generator and sink for every relay. **ceiling**: no relay (load generator "
        "straight into the sink); **floor**: minimal aiosmtpd -> aiosmtplib relay, fsync "
        "before 250; **postfix**: a private Postfix instance as a plain relay (no content "
        "filter, queue files fsync'd); **amavis**: amavisd-new as a pass-through content "
        "filter (virus and spam checks off; it answers 250 only once the sink has the "
        "message, and keeps no queue of its own); **smtpguard**: the example council's full "
        "default policy and registers (bench/smtpguard-bench.yaml).",
        "",
        "- **msg/s**: messages accepted (250 after DATA) in the measured phase / its wall "
        "time; **p50/p99**: client-measured, MAIL FROM to the 250 after DATA on an open "
        "connection.",
        "- **CPU ms/msg**: CPU (user+system) of every process of the relay's instance (its "
        "process tree, counting the children it reaped), from the start of the measured phase "
        "until the sink had everything, per accepted message; **relay CPU %**: the same in % "
        "of one core.",
        "- **peak MiB (ΣVmHWM)**: the largest sum, at one sample (every 0.1 s), of VmHWM over "
        "the instance's processes alive then; **peak PSS MiB**: the largest sum of PSS "
        "(shared pages divided among their sharers; sampled every second), closer to what "
        "the instance really occupies when it forks many processes (Postfix, amavis).",
        "- **other CPU %**: CPU used on the machine by anything outside the benchmark during "
        "the sending phase (% of one core): high means that cell was disturbed.",
        "- **held**: accepted messages smtpguard holds for review (accepted with 250, never "
        "delivered: counted as done). The peers deliver everything, held mail included: "
        "that is expected, they have no policy. **sink / expected**: messages at the sink "
        "/ what should arrive (smtpguard: delivered + one hold notice to the sender per held "
        "message).",
        f"- Mixes: **plain** {mix('plain').size / 1024:.1f} KiB text; **pdf** "
        f"{mix('pdf').size / 1024:.1f} KiB with a 6-page PDF; **office** "
        f"{mix('office').size / 1024 / 1024:.2f} MiB with a DOCX report (photographs) and an "
        f"XLSX scheme list; **blend** (mean {blend.size / 1024:.1f} KiB): {blend.describe()}.",
        "",
        _phase_text(args, elapsed),
        "",
        results_table(cells),
    ]
    ratios = ratio_table(cells)
    if ratios:
        out += [
            "### smtpguard / peers",
            "",
            "msg/s ratios above 1.00x: smtpguard is faster; p99 and CPU ratios above 1.00x: "
            "smtpguard costs more. ✓/✗ against the targets (msg/s vs postfix: ≥1.0x plain, "
            "≥0.6x pdf; vs amavis ≥3x on every mix; p99 ≤2x postfix's).",
            "",
            ratios,
        ]
    out += _tail(cells, args, workdir, load0)
    return "\n".join(out)


def _fit(xs: list[float], ys: list[float], unit: str) -> str:
    """Least-squares line of ys against xs, with its R² and the largest relative miss."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return "too few points for a fit"
    slope, intercept = statistics.linear_regression(xs, ys)
    r2 = statistics.correlation(xs, ys) ** 2 if len(set(ys)) > 1 else 1.0
    miss = max(abs(intercept + slope * x - y) / y for x, y in zip(xs, ys, strict=True) if y)
    return (
        f"CPU ms/msg = {intercept:.2f} + {slope:.2f} x {unit}, R² = {r2:.3f} "
        f"(largest miss of a point: {100 * miss:.0f} %)"
    )


def sizes_report(
    raw: list[rb.Cell], args: argparse.Namespace, workdir: Path, elapsed: float, load0: str
) -> str:
    cells = aggregate(raw)
    out = [
        "## How smtpguard's cost grows with the message (peers_bench.py --sizes)",
        "",
        "Concurrency " + ", ".join(str(c) for c in args.concurrency) + ". **text-N**: plain "
        "text of N KiB (past 4 KiB a long quoted reply thread); **pdfs-N**: a short note with "
        "N one-page PDFs (about 5 KiB each). CPU ms/msg: the relay's process tree, as in the "
        "peers table. msg/s is the rate smtpguard accepts (it scans after the 250); e2e msg/s "
        "the rate that reached the sink. A straight line fits when R² is near 1; the largest "
        "miss shows a point the line does not describe (R² is dominated by the largest "
        "message).",
        "",
        _phase_text(args, elapsed),
        "",
        "| relay | message | size KiB | conc | msg/s | p50 ms | p99 ms | CPU ms/msg "
        "| peak MiB (ΣVmHWM) | other CPU % | sink / expected | drain s | e2e msg/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for c in cells:
        if c.failed:
            out.append(
                f"| {c.relay} | {c.scenario} | {c.message_bytes / 1024:.0f} "
                f"| {c.concurrency} | {c.failed} | | | | | | | | |"
            )
            continue
        out.append(
            f"| {c.relay} | {c.scenario} | {c.message_bytes / 1024:.1f} | {c.concurrency} "
            f"| {c.rate:.1f} | {rb._fmt(c.latency_ms.get('p50'), 2)} "
            f"| {rb._fmt(c.latency_ms.get('p99'), 2)} | {rb._fmt(c.cpu_ms_per_msg, 2)} "
            f"| {_mib(c.peak_mib)} | {c.other_cpu_pct:.0f} "
            f"| {c.sink_received} / {c.expected}{'' if c.drained else ' NOT DRAINED'} "
            f"| {rb._fmt(c.drain_s, 3)} | {rb._fmt(c.e2e_rate if c.drained else None)} |"
        )
    out += ["", "Linear fits of CPU ms per message:", ""]
    for relay in args.relays:
        for conc in args.concurrency:
            ok = [
                c
                for c in cells
                if c.relay == relay
                and c.concurrency == conc
                and not c.failed
                and c.cpu_ms_per_msg is not None
            ]
            text = [c for c in ok if c.scenario.startswith("text-")]
            pdfs = [c for c in ok if c.scenario.startswith("pdfs-")]
            xs = [c.message_bytes / 1024 / 1024 for c in text]
            out.append(
                f"- {relay} c={conc}, text-N against size: "
                + _fit(xs, [float(c.cpu_ms_per_msg or 0) for c in text], "MiB")
            )
            counts = [float(c.scenario.split("-")[1]) for c in pdfs]
            out.append(
                f"- {relay} c={conc}, pdfs-N against the number of PDFs: "
                + _fit(counts, [float(c.cpu_ms_per_msg or 0) for c in pdfs], "PDFs")
            )
    out.append("")
    out += _tail(cells, args, workdir, load0)
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def show_config(args: argparse.Namespace) -> str:
    """The Postfix main.cf and the amavisd.conf a cell writes (example ports)."""
    sink_port, listen = 10026, 10024
    with tempfile.TemporaryDirectory() as tmp, _temp_parent(Path(tmp)):
        inst = PostfixInstance(
            Ports(10025, 0, 0, sink_port),
            settings=postfix_settings(max(100, max(args.concurrency) + 50)),
        )
        main_cf = (inst.conf / "main.cf").read_text()
        master_cf = (inst.conf / "master.cf").read_text()
        root = inst.root
    text = [
        f"# Postfix main.cf (sink on {sink_port}, listening on 10025; {root} is a temp folder)",
        main_cf,
        "# Postfix master.cf",
        master_cf,
        f"# amavisd.conf (listening on {listen}, sink on {sink_port})",
        amavis_conf(
            Path("/tmp/smtpguard-peers-XXXX/amavis-plain-c1/home"),
            listen,
            sink_port,
            max(2 * (os.cpu_count() or 1), max(args.concurrency)),
        ),
    ]
    return "\n".join(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark smtpguard beside Postfix and amavisd-new.")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--messages", type=int, default=None, help="measure N messages per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell")
    p.add_argument("--repeat", type=int, default=1, help="rounds; medians are reported")
    p.add_argument("--concurrency", type=rb._csv(int), default=None, help="default 1,20,100")
    p.add_argument("--mixes", type=rb._csv(str, MIXES), default=list(MIXES))
    p.add_argument("--relays", type=rb._csv(str, RELAYS), default=None)
    p.add_argument(
        "--sizes",
        action="store_true",
        help="instead: smtpguard's cost against message size and attachment count "
        "(default --relays smtpguard --concurrency 1)",
    )
    p.add_argument(
        "--sizes-text",
        type=rb._csv(int),
        default=[2, 20, 200, 2048],
        help="text sizes in KiB for --sizes",
    )
    p.add_argument(
        "--sizes-pdfs", type=rb._csv(int), default=[1, 2, 4, 8], help="PDF counts for --sizes"
    )
    p.add_argument(
        "--amavis-servers",
        type=int,
        default=0,
        help="amavisd $max_servers (default: the larger of 2 x CPUs and the cell's concurrency)",
    )
    p.add_argument("--start-timeout", type=float, default=30.0, help="seconds to wait for 220")
    p.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT)
    p.add_argument("--stall-timeout", type=float, default=10.0)
    p.add_argument("--smtpguard-cmd", default=None)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    p.add_argument("--results", type=Path, default=rb.RESULTS)
    p.add_argument("--no-results", action="store_true")
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the Postfix and amavisd configuration a cell writes, and exit",
    )
    args = p.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = [1] if args.sizes else [1, 20, 100]
    if args.relays is None:
        args.relays = ["smtpguard"] if args.sizes else list(RELAYS)
    if args.sizes:
        args.mixes = [f"text-{k}k" if k % 1024 else f"text-{k // 1024}m" for k in args.sizes_text]
        args.mixes += [f"pdfs-{n}" for n in args.sizes_pdfs]
        for name in args.mixes:
            try:
                mix(name)
            except ValueError as exc:
                p.error(str(exc))
    if args.duration <= 0 or args.warmup < 0 or (args.messages is not None and args.messages <= 0):
        p.error("--duration and --messages must be positive, --warmup not negative")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be within 1..20")
    if any(c < 1 or c > 1000 for c in args.concurrency):
        p.error("--concurrency must be within 1..1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show_config:
        print(show_config(args))
        return 0
    sg_cmd = shlex.split(args.smtpguard_cmd) if args.smtpguard_cmd else rb.smtpguard_command()
    print("building the messages ...", flush=True)
    for name in args.mixes:  # office is generated once and cached in a temp file
        mix(name)
    workdir = Path(tempfile.mkdtemp(prefix="smtpguard-peers-", dir=args.workdir))
    workdir.chmod(0o755)  # amavisd (as amavis) and Postfix's daemons reach their folders in it
    load0 = loadavg()
    print(f"work folder {workdir}; load average {load0}", flush=True)
    started = time.monotonic()
    cells: list[rb.Cell] = []
    complete = False
    try:
        PeersBench(args, workdir, sg_cmd).run(cells)
        complete = True
    finally:
        elapsed = time.monotonic() - started
        if args.sizes:
            text, section = sizes_report(cells, args, workdir, elapsed, load0), SIZES_SECTION
        else:
            text, section = report(cells, args, workdir, elapsed, load0), SECTION
        print()
        print(text)
        if not complete:
            print("(interrupted: partial results, results file not written)")
        elif not args.no_results:
            old = args.results.read_text() if args.results.exists() else ""
            args.results.write_text(rb.with_marked_section(old, section, text))
            print(f"(written to {args.results}, between <!-- {section}:start/end -->)")
        if args.keep or any(c.failed and not c.failed.startswith("skipped") for c in cells):
            stamp = dt.datetime.now(dt.UTC).isoformat()
            (workdir / "cells.json").write_text(
                json.dumps({"at": stamp, "cells": [asdict(c) for c in cells]}, indent=1)
            )
            print(f"logs and cells.json kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("reproduce with:\n  " + reproduce_command(args))
    return 0 if any(not c.failed for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
