"""`smtpguard demo`: the example council's breach scenarios, through a real relay.

Starts the relay in this process with the example configuration, its next
hops replaced by local capture sinks (the upstream and each route), sends
B1-B8 and two ordinary messages over SMTP, and prints what happened to each
copy: delivered (and through which hop), delayed, held for review, refused.
The store is left in the demo's data folder with a config file of its own, so
that `smtpguard quarantine list --config DIR/smtpguard-demo.yaml` shows the
real holds, with whoever ran the demo added to the staff register as an
approver.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import getpass
import os
import pwd
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import yaml
from aiosmtpd.smtp import SMTP as SMTPServer
from rich.console import Console
from rich.table import Table

from smtpguard.config import Config, Overrides, load_config
from smtpguard.config.model import LoggingConfig
from smtpguard.envelope import Envelope
from smtpguard.inspect import inspect_message
from smtpguard.log import configure_logging
from smtpguard.relay import RelayService
from smtpguard.spool import MessageState

SENDER = "m.patel@northshire.gov.uk"  # a children's social worker in the example council
_SETTLED_WAIT = 30.0
# Settings of the example config that name files, relative to the config file.
_PATH_KEYS = (
    ("detect", "keywords"),
    ("council", "domains"),
    ("council", "staff"),
    ("policy", "file"),
)


@dataclass(frozen=True)
class Scenario:
    name: str  # "B3"
    what: str  # the breach, in a few words
    recipients: tuple[str, ...]
    message: bytes


@dataclass
class Hop:
    """A capture sink standing in for one next hop; records which copies it got."""

    name: str
    copies: dict[str, list[str]] = field(default_factory=dict)  # smtpguard id -> recipients
    server: asyncio.Server | None = None
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or b""
        marker = content.find(b"(smtpguard) with ")
        if marker >= 0:
            end = content.find(b";", marker)
            queue_id = content[marker:end].rsplit(b" ", 1)[-1].decode("ascii", "replace")
            self.copies.setdefault(queue_id, []).extend(envelope.rcpt_tos)
        return "250 2.0.0 captured"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTPServer(self, hostname=f"{self.name}.demo", enable_SMTPUTF8=True),
            host="127.0.0.1",
            port=0,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


def _mail(subject: str, body: str, to: Sequence[str], **extra: Any) -> bytes:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = ", ".join(to)
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid("demo", domain="northshire.gov.uk")
    mail.set_content(body)
    for filename, data in extra.get("attachments", ()):
        mail.add_attachment(data, maintype="text", subtype="csv", filename=filename)
    return mail.as_bytes(policy=SMTP_POLICY)


def _nhs_numbers(count: int) -> list[str]:
    """Valid NHS numbers (modulus 11) from the 999 test range, never a real patient's."""
    found: list[str] = []
    stem = 999_000_000
    while len(found) < count:
        digits = [int(d) for d in str(stem)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        check = 0 if check == 11 else check
        if check != 10:
            text = f"{stem}{check}"
            found.append(f"{text[:3]} {text[3:6]} {text[6:]}")
        stem += 7
    return found


def scenarios() -> list[Scenario]:
    caseload = "Name,Date of birth,NHS number\n" + "".join(
        f"Child {n},{1 + n % 27:02d}/0{1 + n % 9}/201{n % 9},{number}\n"
        for n, number in enumerate(_nhs_numbers(25))
    )
    mailing = [f"parent{n}@example{n}.org.uk" for n in range(12)]
    court = "northshire.familycourt@justice.gov.uk"
    return [
        Scenario(
            "B1",
            "case report to a solicitor: only over verified TLS",
            ("s.mills@millsandco-solicitors.co.uk",),
            _mail(
                "CS-204817 assessment report",
                "Please find the assessment for CS-204817 ahead of the hearing.\n",
                ["s.mills@millsandco-solicitors.co.uk"],
            ),
        ),
        Scenario(
            "B2",
            "report to a mistyped Cafcass domain",
            ("guardian.team@cafcas.gov.uk",),
            _mail(
                "CS-204817 analysis",
                "The social work analysis for CS-204817 is below.\n",
                ["guardian.team@cafcas.gov.uk"],
            ),
        ),
        Scenario(
            "B3",
            "allegations sent to the accused father",
            ("dan.hart77@gmail.com",),
            _mail(
                "CS-204817 strategy discussion",
                "Minutes of the strategy discussion for CS-204817 are attached below.\n",
                ["dan.hart77@gmail.com"],
            ),
        ),
        Scenario(
            "B4",
            "two families' cases in one message",
            ("s.mills@millsandco-solicitors.co.uk",),
            _mail(
                "Hearing bundle",
                "Bundle for CS-275530, with the chronology from CS-311092 included.\n",
                ["s.mills@millsandco-solicitors.co.uk"],
            ),
        ),
        Scenario(
            "B5",
            "court bundle to a solicitor the case does not list",
            ("p.ash@brightwaterlaw.co.uk",),
            _mail(
                "CS-311092 court bundle",
                "The court bundle for CS-311092 is attached for the hearing.\n",
                ["p.ash@brightwaterlaw.co.uk"],
            ),
        ),
        Scenario(
            "B6",
            "a refuge address, written differently, to the court",
            (court,),
            _mail(
                "Address for service",
                "The mother can be contacted at 14 Elmwood Rd, Flat 2, NS4 7QJ.\n",
                [court],
            ),
        ),
        Scenario(
            "B7",
            "a mailing with twelve parents in To",
            tuple(mailing),
            _mail(
                "Parents' forum",
                "Dear all, the parents' forum meets on Thursday at 6pm.\n",
                mailing,
            ),
        ),
        Scenario(
            "B8",
            "a spreadsheet of the caseload to webmail",
            ("jodie.whitlock@gmail.com",),
            _mail(
                "Numbers you asked for",
                "Here is the list.\n",
                ["jodie.whitlock@gmail.com"],
                attachments=[("caseload.csv", caseload.encode())],
            ),
        ),
        Scenario(
            "ok",
            "ordinary internal mail",
            ("d.clarke@northshire.gov.uk",),
            _mail(
                "Team meeting",
                "The team meeting moves to 2pm on Tuesday.\n",
                ["d.clarke@northshire.gov.uk"],
            ),
        ),
        Scenario(
            "ok",
            "ordinary external mail, no personal data",
            ("training@northshire-fostering.org.uk",),
            _mail(
                "Training dates",
                "Thank you for the training dates; Wednesday suits us.\n",
                ["training@northshire-fostering.org.uk"],
            ),
        ),
    ]


def _invoking_login() -> str:
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name or getpass.getuser()


def write_demo_config(source: Path, data_dir: Path, hops: dict[str, Hop]) -> Path:
    """A config for the demo's store: the example's, with absolute paths, the sinks as next
    hops, and a staff register that makes whoever ran the demo an approver."""
    raw: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    base = source.parent.absolute()
    for section, key in _PATH_KEYS:
        value = raw.get(section, {}).get(key)
        if isinstance(value, str):
            raw[section][key] = str(base / value)
        elif isinstance(value, list):
            raw[section][key] = [str(base / v) for v in value]
    edm = raw.get("detect", {}).get("edm") or {}
    for kind, paths in (edm.get("exports") or {}).items():
        edm["exports"][kind] = (
            str(base / paths) if isinstance(paths, str) else [str(base / p) for p in paths]
        )
    staff_path = data_dir / "staff.csv"
    with open(raw["council"]["staff"], encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    login = _invoking_login()
    if not any(len(row) > 4 and row[4] == login for row in rows[1:]):
        rows.append(
            [
                f"{login}@demo.invalid",
                f"{login} (demo)",
                "information-governance",
                "approver",
                login,
            ]
        )
    with staff_path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    raw["council"]["staff"] = str(staff_path)
    raw["server"]["listen"] = "127.0.0.1:0"
    raw["store"] = {**raw.get("store", {}), "data_dir": str(data_dir)}
    raw["upstream"] = {**raw["upstream"], "host": "127.0.0.1", "port": hops["upstream"].port}
    for name, route in (raw.get("policy", {}).get("routes") or {}).items():
        route.update(host="127.0.0.1", port=hops[name].port)
    raw["delivery"] = {**raw.get("delivery", {}), "poll_interval": "200ms"}
    raw["logging"] = {"level": "warning", "format": "json"}
    raw.pop("metrics", None)  # no fixed port of the example's: the demo is not watched
    path = data_dir / "smtpguard-demo.yaml"
    path.write_text(
        "# Written by `smtpguard demo`: the example config, pointed at this folder.\n"
        + yaml.safe_dump(raw, sort_keys=False),
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    queue_id: str
    copies: dict[str, str]  # recipient -> what happened
    rules: tuple[str, ...]


async def _send(port: int, scenario: Scenario) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
    await client.connect()
    try:
        _, reply = await client.sendmail(SENDER, list(scenario.recipients), scenario.message)
    finally:
        await client.quit()
    return reply.rsplit(" ", 1)[-1]


def run_demo(source: Path, data_dir: Path, *, keep_running: bool = False) -> int:
    data_dir = data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    example = yaml.safe_load(source.read_text(encoding="utf-8"))
    names = ["upstream", *(example.get("policy", {}).get("routes") or {})]
    return asyncio.run(_run_demo(source, data_dir, names, keep_running))


async def _run_demo(source: Path, data_dir: Path, names: list[str], keep_running: bool) -> int:
    hops = {name: Hop(name) for name in names}
    for hop in hops.values():
        await hop.start()
    config_path = await asyncio.to_thread(write_demo_config, source, data_dir, hops)
    configure_logging(LoggingConfig(level="warning"))
    config = await asyncio.to_thread(load_config, config_path, Overrides())
    service = RelayService(config_path, Overrides(), config)
    try:
        address = await service.start()
        outcomes = []
        for scenario in scenarios():
            queue_id = await _send(address[1], scenario)
            outcomes.append(await _outcome(service, hops, scenario, queue_id))
        _print(outcomes)
        print(
            f"\nThe holds stay in {data_dir}. As a reviewer (you are an approver in the demo's "
            "staff register):\n"
            f"  smtpguard quarantine list --config {config_path}\n"
            f"  smtpguard quarantine show ID --config {config_path}\n"
            f"  smtpguard audit verify --config {config_path}"
        )
        if keep_running:
            print(f"\nRelay listening on {address[0]}:{address[1]}; Ctrl-C to stop.")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
    finally:
        service.request_stop()
        await service.shutdown()
        for hop in hops.values():
            await hop.stop()
    return 0


async def _outcome(
    service: RelayService, hops: dict[str, Hop], scenario: Scenario, queue_id: str
) -> Outcome:
    deadline = time.monotonic() + _SETTLED_WAIT
    busy = (
        MessageState.RECEIVED,
        MessageState.QUEUED,
        MessageState.DELIVERING,
        MessageState.RELEASED,
    )
    record = await service.store.load(queue_id)
    while time.monotonic() < deadline and (record is None or record.state in busy):
        await asyncio.sleep(0.1)
        record = await service.store.load(queue_id)
    copies: dict[str, str] = {}
    if record is not None:
        for r in record.recipients:
            hop = next(
                (h.name for h in hops.values() if r.address in h.copies.get(queue_id, ())), None
            )
            state = r.state.value
            copies[r.address] = f"delivered via {hop}" if state == "delivered" and hop else state
    return Outcome(scenario, queue_id, copies, _deciding_rules(service.config, scenario))


def _deciding_rules(config: Config, scenario: Scenario) -> tuple[str, ...]:
    """The rules that decided each copy's fate (the scan's own verdict, as `scan` shows it)."""
    envelope = Envelope(SENDER, scenario.recipients, "127.0.0.1", "demo", time.time())
    verdict = inspect_message(scenario.message, envelope, config)
    rules: list[str] = []
    for v in verdict.recipients.values():
        if v.action.severity > 0:  # delayed, held or refused: the rules that did it
            rules += [r.name for r in v.fired if r.action is v.action]
        else:  # delivered: the instructions it went with (route, require_tls, tag)
            rules += [r.name for r in v.fired]
    return tuple(dict.fromkeys(rules))


def _print(outcomes: Sequence[Outcome]) -> None:
    table = Table(title="smtpguard demo: the example council's breach scenarios")
    table.add_column("")
    table.add_column("what goes wrong", overflow="fold", max_width=28)
    table.add_column("queue id", no_wrap=True)
    for column in ("recipient", "what happened", "deciding rules"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        copies = list(outcome.copies.items())
        shown = copies[:3] + (
            [("...", f"and {len(copies) - 3} more alike")] if len(copies) > 3 else []
        )
        table.add_row(
            outcome.scenario.name,
            outcome.scenario.what,
            outcome.queue_id,
            "\n".join(address for address, _ in shown),
            "\n".join(state for _, state in shown),
            "\n".join(outcome.rules) or "-",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # piped into a file or a test: one row, one line
    console.print(table)
