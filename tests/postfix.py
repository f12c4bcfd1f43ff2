"""A private Postfix instance for end-to-end tests: own config, queue and log, loopback only.

Each `PostfixInstance` lives in its own temporary folder::

    conf/main.cf, conf/master.cf   written here: a minimal base plus deploy/postfix/ snippets
    queue/                         queue_directory (Postfix creates its structure at start)
    data/                          data_directory
    maillog                        maillog_file (the postlog service: no syslog needed)

The `main.cf` / `master.cf` snippets come from `deploy/postfix/` as they are
documented, with one substitution (`deployed`): the documented ports 10025
(smtpguard) and 10026 (the reinjection smtpd) become the test's free ports,
and a master.cf service named `submission` becomes the test's submission
listener `127.0.0.1:PORT`. Nothing else in a snippet is changed, so what
deploy/postfix/ documents is what the tests run.

Postfix insists on running as root with its queue owned by the `postfix`
user: `postfix -c DIR start` runs `post-install create-missing`, which makes
the queue's subfolders with the owners and modes Postfix wants, as long as
the queue folder itself exists, belongs to root and is not writable by others.
The system's own instance (/etc/postfix) is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "postfix"
SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")

# The ports deploy/postfix/ documents.
SMTPGUARD_PORT = 10025
REINJECTION_PORT = 10026

MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"
HOSTNAME = "postfix.test"
COMMAND_TIMEOUT = 30.0


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        for folder in SBIN:
            candidate = Path(folder) / name
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def unavailable() -> str | None:
    """Why a private Postfix instance cannot run here, or None if it can."""
    for name in ("postfix", "postconf", "postqueue"):
        if _tool(name) is None:
            return f"Postfix is not installed ({name} not found); CI installs it (.ci/run)"
    try:
        pwd.getpwnam(MAIL_OWNER)
        grp.getgrnam(SETGID_GROUP)
    except KeyError:
        return f"Postfix is not installed (no {MAIL_OWNER} user or {SETGID_GROUP} group)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    return None


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports the OS had free just now (bound, read, closed)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Ports:
    """Where everything listens in one test: all on 127.0.0.1."""

    submission: int  # Postfix: where the test submits mail
    smtpguard: int  # smtpguard's server.listen (10025 in deploy/postfix/)
    reinjection: int  # Postfix's reinjection smtpd, smtpguard's upstream (10026)
    sink: int  # the capture sink: Postfix's relayhost

    @classmethod
    def pick(cls, sink: int) -> Ports:
        submission, smtpguard, reinjection = free_ports(3)
        return cls(submission, smtpguard, reinjection, sink)


def deployed(name: str, ports: Ports) -> str:
    """deploy/postfix/NAME with the test's ports in place of the documented ones.

    The only changes: `:10025` -> `:<smtpguard port>`, `:10026` ->
    `:<reinjection port>`, and a master.cf entry for the `submission` service
    -> `127.0.0.1:<submission port>`.
    """
    text = (DEPLOY / name).read_text(encoding="utf-8")
    substituted = text.replace(f":{SMTPGUARD_PORT}", f":{ports.smtpguard}")
    substituted = substituted.replace(f":{REINJECTION_PORT}", f":{ports.reinjection}")
    substituted = re.sub(
        r"^submission(?=\s)", f"127.0.0.1:{ports.submission}", substituted, flags=re.MULTILINE
    )
    assert substituted != text, f"deploy/postfix/{name} names none of the documented ports"
    return substituted


# Postfix's own services, as in Debian's master.cf but never chrooted (the
# queue is in a temporary folder with no copy of /etc in it).
BASE_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# A plain submission listener, used when no deploy snippet defines one.
PLAIN_SUBMISSION = "127.0.0.1:{port} inet n - n - - smtpd\n"

BASE_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = {mail_owner}
setgid_group = {setgid_group}
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = {hostname}
mydomain = {hostname}
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
biff = no
relayhost = [127.0.0.1]:{sink}
# Quick retries, so a test never waits long for a deferred message.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_connect_timeout = 5s
"""


class PostfixInstance:
    """One private Postfix: write its config, start, submit, read its queue, flush, stop."""

    def __init__(
        self,
        ports: Ports,
        *,
        main_snippets: Sequence[str] = (),
        master_snippets: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`settings` replace (or add to) the base main.cf's parameters, by name."""
        self.ports = ports
        self.root = Path(tempfile.mkdtemp(prefix="smtpguard-postfix-"))
        # Postfix's unprivileged daemons reach data_directory and the log by absolute path.
        self.root.chmod(0o755)
        self.conf = self.root / "conf"
        self.maillog = self.root / "maillog"
        self.started = False
        self._write_config(main_snippets, master_snippets, settings or {})

    def _write_config(
        self,
        main_snippets: Sequence[str],
        master_snippets: Sequence[str],
        settings: Mapping[str, str],
    ) -> None:
        self.conf.mkdir(mode=0o755)
        (self.root / "queue").mkdir(mode=0o755)
        main = BASE_MAIN_CF.format(
            root=self.root,
            mail_owner=MAIL_OWNER,
            setgid_group=SETGID_GROUP,
            hostname=HOSTNAME,
            sink=self.ports.sink,
        )
        for name, value in settings.items():
            line = f"{name} = {value}"
            main, found = re.subn(rf"^{name} =.*$", line, main, flags=re.MULTILINE)
            if not found:
                main += f"{line}\n"
        main += "".join(f"\n# deploy/postfix/{n}\n{deployed(n, self.ports)}" for n in main_snippets)
        master = BASE_MASTER_CF
        snippets = [deployed(n, self.ports) for n in master_snippets]
        submission = f"127.0.0.1:{self.ports.submission} "
        if not any(line.startswith(submission) for s in snippets for line in s.splitlines()):
            master += PLAIN_SUBMISSION.format(port=self.ports.submission)
        master += "".join(
            f"# deploy/postfix/{n}\n{s}" for n, s in zip(master_snippets, snippets, strict=True)
        )
        (self.conf / "main.cf").write_text(main, encoding="utf-8")
        (self.conf / "master.cf").write_text(master, encoding="utf-8")

    # -- running commands ----------------------------------------------------

    async def command(self, tool: str, *args: str, check: bool = True) -> tuple[int, str]:
        """Run a Postfix command against this instance (`-c conf`); its output."""
        path = _tool(tool)
        assert path is not None, f"{tool} not found"
        process = await asyncio.create_subprocess_exec(
            path,
            "-c",
            str(self.conf),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "MAIL_CONFIG": str(self.conf)},
        )
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                out, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"{tool} {' '.join(args)} did not finish") from None
        assert process.returncode is not None
        text = out.decode("utf-8", "replace")
        if check and process.returncode != 0:
            raise AssertionError(
                f"{tool} -c {self.conf} {' '.join(args)} exited {process.returncode}:\n"
                f"{text}\n--- maillog ---\n{self.log()}"
            )
        return process.returncode, text

    async def start(self) -> None:
        """`postfix check` (warnings are failures: the snippets must be clean), then start."""
        _, installed = await self.command("postconf", "-h", "mail_version")
        version = tuple(int(n) for n in re.findall(r"\d+", installed)[:2])
        assert version >= (3, 4), f"maillog_file needs Postfix 3.4 or later, not {version}"
        _, warnings = await self.command("postfix", "check")
        assert warnings.strip() == "", f"postfix check:\n{warnings}"
        await self.command("postfix", "start")
        self.started = True
        await self.wait_listening(self.ports.submission)

    async def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"Postfix does not listen on {port}:\n{self.log()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self) -> None:
        """`postfix stop`, wait until its master is gone, then remove the folder."""
        try:
            if self.started:
                await self.command("postfix", "stop", check=False)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    code, _ = await self.command("postfix", "status", check=False)
                    if code != 0:
                        break
                    await asyncio.sleep(0.1)
                else:
                    await self.command("postfix", "abort", check=False)
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- mail ----------------------------------------------------------------

    async def submit(self, sender: str, recipients: Sequence[str], content: bytes) -> str:
        """Send one message to the submission listener; Postfix's reply to DATA.

        Refusals raise aiosmtplib's SMTPRecipientsRefused / SMTPDataError / ...
        """
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.ports.submission, timeout=30)
        await client.connect()
        try:
            errors, reply = await client.sendmail(sender, list(recipients), content)
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()
        assert not errors, errors
        return reply

    async def queue(self) -> list[dict[str, Any]]:
        """`postqueue -j`: one dict per queued message (queue_name, queue_id, recipients...)."""
        _, out = await self.command("postqueue", "-j")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    async def flush(self) -> None:
        """`postqueue -f`: try every queued message now, dead destinations included."""
        await self.command("postqueue", "-f")

    async def wait_for_queue(
        self, predicate: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Poll `postqueue -j` until `predicate(entries)` holds; the entries."""
        deadline = time.monotonic() + timeout
        while True:
            entries = await self.queue()
            if predicate(entries):
                return entries
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix queue never {what}: {entries}\n{self.log()}")
            await asyncio.sleep(0.2)

    def log(self) -> str:
        try:
            return self.maillog.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first match of `pattern` (a regex) in the maillog, waiting for it to appear."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = compiled.search(self.log())
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the Postfix log:\n{self.log()}")
            await asyncio.sleep(0.1)
