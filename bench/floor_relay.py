"""The floor: the least a durable aiosmtpd -> aiosmtplib relay has to do.

    python bench/floor_relay.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --spool DIR

* accepts SMTP with aiosmtpd on its own event loop (``loop.create_server``,
  uvloop when importable, as smtpguard uses);
* in ``handle_DATA`` writes the envelope and message to ``DIR`` as
  ``tmp -> fsync(file) -> rename -> fsync(dir)`` in a worker thread
  (``asyncio.to_thread``) and only then answers 250 (451 if that fails);
* hands the message to an ``asyncio.Queue``; a pool of delivery tasks (10 by
  default), each keeping one ``aiosmtplib.SMTP`` connection to the upstream
  open (reconnecting after an error), sends it and then deletes its file;
* on start, queues any message left in ``DIR`` by an earlier run;
* on SIGTERM/SIGINT stops listening, lets the queue drain (bounded), exits.

No parsing, no policy, no database: whatever a real relay costs above this is
the price of its features.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("floor")

R250_QUEUED = "250 2.0.0 OK: queued as {}"
R451_TRY_AGAIN = "451 4.3.0 Temporary failure, try again later"
R452_QUEUE_FULL = "452 4.3.1 Queue full, try again later"

MAX_DELIVERY_ATTEMPTS = 5
SHUTDOWN_DRAIN_SECONDS = 10.0


@dataclass(frozen=True)
class Job:
    path: Path
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


class Spool:
    """A folder of message files, each made durable before it is acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid()}-{time.time_ns():x}"

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids):08d}"

    def write(self, msg_id: str, mail_from: str, rcpt_tos: list[str], content: bytes) -> Path:
        """Write tmp, fsync it, rename it into place, fsync the folder (blocking)."""
        header = json.dumps({"from": mail_from, "to": rcpt_tos}).encode() + b"\n"
        tmp = self.dir / f"{msg_id}.tmp"
        final = self.dir / f"{msg_id}.msg"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, header)
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        os.fsync(self._dir_fd)
        return final

    def recover(self) -> list[Job]:
        """Messages left by an earlier run (bounded by what the folder holds)."""
        jobs: list[Job] = []
        for path in sorted(self.dir.glob("*.msg")):
            header, _, content = path.read_bytes().partition(b"\n")
            meta = json.loads(header)
            jobs.append(Job(path, str(meta["from"]), [str(r) for r in meta["to"]], content))
        for tmp in self.dir.glob("*.tmp"):  # never acknowledged
            tmp.unlink(missing_ok=True)
        return jobs

    def close(self) -> None:
        os.close(self._dir_fd)


class FloorHandler:
    """aiosmtpd handler: spool durably, queue, answer 250."""

    def __init__(self, spool: Spool, queue: asyncio.Queue[Job], max_queue: int) -> None:
        self.spool = spool
        self.queue = queue
        self.max_queue = max_queue

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.queue.qsize() >= self.max_queue:
            return R452_QUEUE_FULL
        content = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        rcpt_tos = list(envelope.rcpt_tos)
        msg_id = self.spool.new_id()
        try:
            path = await asyncio.to_thread(self.spool.write, msg_id, mail_from, rcpt_tos, content)
        except OSError:
            log.exception("spool write failed")
            return R451_TRY_AGAIN
        self.queue.put_nowait(Job(path, mail_from, rcpt_tos, content))
        return R250_QUEUED.format(msg_id)


class Deliverer:
    """One delivery task with one persistent upstream connection."""

    def __init__(self, host: str, port: int, hostname: str) -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self.smtp: aiosmtplib.SMTP | None = None

    async def _connected(self) -> aiosmtplib.SMTP:
        if self.smtp is not None and self.smtp.is_connected:
            return self.smtp
        self.close()
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.hostname,
            use_tls=False,
            start_tls=False,
            timeout=60,
        )
        await smtp.connect()
        self.smtp = smtp
        return smtp

    def close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
            self.smtp = None

    async def deliver(self, job: Job) -> bool:
        """Send one message; True once the upstream accepted it (bounded retries)."""
        backoff = 0.1
        for _attempt in range(MAX_DELIVERY_ATTEMPTS):
            try:
                smtp = await self._connected()
                await smtp.sendmail(job.mail_from, job.rcpt_tos, job.content)
                return True
            except aiosmtplib.SMTPRecipientsRefused:
                log.warning("upstream refused all recipients of %s", job.path.name)
                return False
            except aiosmtplib.SMTPResponseException as exc:
                if 500 <= exc.code < 600:
                    log.warning("upstream refused %s: %s", job.path.name, exc.code)
                    return False
                if exc.code == 421:
                    self.close()
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                log.warning("delivery of %s failed: %s", job.path.name, exc)
                self.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        return False

    async def run(self, queue: asyncio.Queue[Job]) -> None:
        try:
            while True:
                job = await queue.get()
                try:
                    delivered = await self.deliver(job)
                    try:
                        if delivered:
                            job.path.unlink(missing_ok=True)
                        else:  # keep it for an operator
                            job.path.rename(job.path.with_suffix(".failed"))
                    except OSError:
                        log.exception("could not finish spool file %s", job.path.name)
                finally:
                    queue.task_done()
        finally:
            await self.quit()

    async def quit(self) -> None:
        if self.smtp is not None and self.smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await asyncio.wait_for(self.smtp.quit(), 2)
        self.close()


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def amain(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    spool = Spool(Path(args.spool))
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in spool.recover():
        queue.put_nowait(job)
    up_host, up_port = args.upstream
    deliverers = [Deliverer(up_host, up_port, args.hostname) for _ in range(args.workers)]
    tasks = [asyncio.create_task(d.run(queue)) for d in deliverers]

    handler = FloorHandler(spool, queue, args.max_queue)
    host, port = args.listen
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=args.hostname,
            data_size_limit=50 * 1024 * 1024,
            timeout=300,
        ),
        host=host,
        port=port,
        backlog=1024,
        reuse_address=True,
    )
    bound = server.sockets[0].getsockname()
    log.warning(
        "floor relay listening on %s:%s -> %s:%s, spool %s, loop %s",
        bound[0],
        bound[1],
        up_host,
        up_port,
        spool.dir,
        type(loop).__module__,
    )
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        try:
            await asyncio.wait_for(queue.join(), SHUTDOWN_DRAIN_SECONDS)
        except TimeoutError:
            log.warning("%d messages left in the spool at exit", queue.qsize())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        spool.close()


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop when importable (as smtpguard does), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Minimal durable aiosmtpd -> aiosmtplib relay.")
    parser.add_argument("--listen", type=split_hostport, required=True, help="HOST:PORT")
    parser.add_argument("--upstream", type=split_hostport, required=True, help="HOST:PORT")
    parser.add_argument("--spool", required=True, help="spool folder")
    parser.add_argument("--workers", type=int, default=10, help="delivery tasks/connections")
    parser.add_argument("--max-queue", type=int, default=100_000, help="452 above this")
    parser.add_argument("--hostname", default="floor.bench.test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    run_loop(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
