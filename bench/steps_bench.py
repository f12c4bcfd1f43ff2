#!/usr/bin/env python3
"""Where one client's message spends its time: each SMTP command's reply time, and
each relay thread's CPU per message, smtpguard beside the floor relay.

From a single client the rate is the inverse of one message's round trip, so the
question is which reply the client waits for, and what the relay's event loop does
meanwhile. A client on a raw socket (no library between it and the clock) times
MAIL, RCPT, DATA and the body-to-250 separately on one connection; the relay's
threads are read from /proc/PID/task over the same messages.

    python bench/steps_bench.py [--scenario plain] [--messages 4000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sink
from messages import MessageTemplate, template
from relay_bench import (
    HOST,
    free_port,
    log_tail,
    pid_cpu_seconds,
    process_tree,
    read_stat,
    relay_command,
    relay_environment,
    smtpguard_command,
    stop_process,
    wait_ready,
)

STEPS = ("MAIL", "RCPT", "DATA", "body")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Steps:
    relay: str
    rate: float
    median_ms: dict[str, float]
    main_ms: float  # CPU of the relay's main thread (its event loop), per message
    threads_ms: float  # CPU of every thread of the relay's main process, per message
    children_ms: float  # CPU of its child processes (parse workers), per message


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of `pid`."""
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = read_stat(pid, int(tid))
        if stat is not None:  # else ended since the listing
            seconds[int(tid)] = stat[1] / TICKS
    return seconds


def children_cpu(pid: int) -> float:
    """CPU seconds so far of the live descendants of `pid` (parse workers, which a
    forkserver may have started)."""
    return sum(pid_cpu_seconds(child) for child in process_tree(pid)[1:])


class Client:
    """One SMTP connection on a plain socket, timing each reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lines = self.sock.makefile("rb")
        self.expect(b"220")
        self.command(b"EHLO steps.bench.test\r\n", b"250")

    def expect(self, code: bytes) -> None:
        while True:
            line = self.lines.readline()
            if line[3:4] != b"-":
                break
        if not line.startswith(code):
            raise RuntimeError(f"expected {code.decode()}, the relay said {line[:80]!r}")

    def command(self, line: bytes, code: bytes) -> float:
        started = time.perf_counter()
        self.sock.sendall(line)
        self.expect(code)
        return time.perf_counter() - started

    def send(self, message: MessageTemplate, n: int) -> list[float]:
        body = message.render(n).replace(b"\r\n.", b"\r\n..")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        return [
            self.command(f"MAIL FROM:<{message.sender}>\r\n".encode(), b"250"),
            sum(self.command(f"RCPT TO:<{r}>\r\n".encode(), b"250") for r in message.recipients),
            self.command(b"DATA\r\n", b"354"),
            self.command(body + b".\r\n", b"250"),
        ]

    def close(self) -> None:
        self.command(b"QUIT\r\n", b"221")
        self.sock.close()


def measure(relay: str, args: argparse.Namespace, workdir: Path) -> Steps:
    folder = Path(tempfile.mkdtemp(prefix=f"{relay}-", dir=workdir))
    upstream = sink.start_sink(HOST)
    port = free_port()
    env, notice = relay_environment(relay, folder)
    command = relay_command(relay, port, upstream.port, folder / "data", smtpguard_command())
    log_path = folder / "relay.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        why = wait_ready(proc, port, 30.0, notice)
        if why is not None:
            raise SystemExit(f"{relay} did not start: {why}\n{log_tail(log_path)}")
        message = template(args.scenario)
        client = Client(port)
        for n in range(args.messages // 5):  # warm-up: caches, the store, the upstream link
            client.send(message, n)
        threads, children = thread_cpu(proc.pid), children_cpu(proc.pid)
        started = time.perf_counter()
        timed = [client.send(message, n) for n in range(args.messages)]
        wall = time.perf_counter() - started
        threads_after, children_after = thread_cpu(proc.pid), children_cpu(proc.pid)
        client.close()
    finally:
        stop_process(proc)
        upstream.stop()
    spent = {tid: s - threads.get(tid, 0.0) for tid, s in threads_after.items()}
    per_message = 1000 / args.messages
    return Steps(
        relay=relay,
        rate=args.messages / wall,
        median_ms={
            step: statistics.median(t[i] for t in timed) * 1000 for i, step in enumerate(STEPS)
        },
        main_ms=spent.get(proc.pid, 0.0) * per_message,
        threads_ms=sum(spent.values()) * per_message,
        children_ms=(children_after - children) * per_message,
    )


def table(results: list[Steps]) -> str:
    lines = [
        "| relay | round | msg/s | "
        + " | ".join(f"{s} ms" for s in STEPS)
        + " | loop CPU ms/msg | all threads ms/msg | children ms/msg |",
        "|---|---:|---:|" + "---:|" * (len(STEPS) + 3),
    ]
    for rnd, r in enumerate(results, 0):
        steps = " | ".join(f"{r.median_ms[s]:.3f}" for s in STEPS)
        lines.append(
            f"| {r.relay} | {rnd // 2 + 1} | {r.rate:.0f} | {steps} | {r.main_ms:.2f} | "
            f"{r.threads_ms:.2f} | {r.children_ms:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="plain", help="a bench/messages.py template")
    parser.add_argument("--messages", type=int, default=4000, help="timed messages per run")
    parser.add_argument("--rounds", type=int, default=2, help="floor and smtpguard, in turn")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="smtpguard-steps-") as tmp:
        for _ in range(args.rounds):
            for relay in ("floor", "smtpguard"):
                results.append(measure(relay, args, Path(tmp)))
    print(table(results))
    print(
        "\nReply times are medians over the timed messages, from the client's send to the "
        "reply's last line; CPU is utime + stime from /proc over the same messages."
    )
    argv = ["python", "bench/steps_bench.py", *map(shlex.quote, sys.argv[1:])]
    print(f"Reproduce from the project root:\n  {' '.join(argv)}")


if __name__ == "__main__":
    main()
