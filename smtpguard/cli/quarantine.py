"""`smtpguard quarantine ...` and `smtpguard audit ...`: the reviewer's command line.

Every command runs as the reviewer at the keyboard (see review.reviewers): an
unknown login is refused before the store is opened. The commands share the
relay's store; a release is delivered by the running relay, and `release`
waits to say whether the upstream took it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from smtpguard.config import Config
from smtpguard.config.staff import load_staff
from smtpguard.review.audit import verify_chain
from smtpguard.review.quarantine import Held, HoldFilter, Quarantine
from smtpguard.review.reviewers import Reviewer, ReviewRefused, invoking_login, reviewer_for
from smtpguard.spool import RecipientState, ReviewConflict, Store, open_configured_store

EXIT_OK = 0
EXIT_REFUSED = 1  # the action was refused or failed; the message says why
EXIT_ERROR = 2

AddOption = Callable[[argparse.ArgumentParser], None]


def add_arguments(
    quarantine: argparse.ArgumentParser,
    audit: argparse.ArgumentParser,
    add_config: AddOption,
    add_data_dir: AddOption,
) -> None:
    actions = quarantine.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="held and delayed messages")
    listing.add_argument(
        "--state",
        choices=["held", "delayed", "failed"],
        help="only these copies (failed: released, then refused by the upstream)",
    )
    listing.add_argument("--sender", help="only from this sender")
    listing.add_argument("--domain", help="only with a waiting copy to this recipient domain")
    listing.add_argument("--rule", help="only where this rule fired")
    listing.add_argument("--older-than", type=_duration, metavar="AGE", help="e.g. 2h, 3d")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = actions.add_parser("show", help="one held message: verdict, findings, history")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--content", action="store_true", help="print the message itself (audited)")
    release = actions.add_parser("release", help="approve held copies for delivery")
    release.add_argument("id")
    release.add_argument("--recipient", action="append", default=[], metavar="ADDR")
    release.add_argument("--reason", required=True)
    release.add_argument(
        "--wait",
        type=_duration,
        default=None,
        metavar="TIME",
        help="how long to wait for the upstream's answer (default: review.release_wait)",
    )
    reject = actions.add_parser("reject", help="refuse held or delayed copies; the sender is told")
    reject.add_argument("id")
    reject.add_argument("--recipient", action="append", default=[], metavar="ADDR")
    reject.add_argument("--reason", required=True)
    recall = actions.add_parser("recall", help="stop a delayed message before its time")
    recall.add_argument("id")
    recall.add_argument("--reason", default="recalled at the sender's request")
    delete = actions.add_parser("delete", help="refuse every waiting copy without a notice")
    delete.add_argument("id")
    delete.add_argument("--reason", default="deleted by a reviewer")
    export = actions.add_parser("export", help="write the held message to stdout (audited)")
    export.add_argument("id")
    for sub in (listing, show, release, reject, recall, delete, export):
        add_config(sub)
        add_data_dir(sub)

    audit_actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_actions.add_parser("verify", help="check the audit log's hash chain")
    entries = audit_actions.add_parser("show", help="print the audit log")
    entries.add_argument("--message", metavar="ID", help="only this message's entries")
    entries.add_argument("--json", action="store_true", help="one JSON object per line")
    for sub in (verify, entries):
        add_config(sub)
        add_data_dir(sub)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 2h, 3d)") from None


def run_quarantine(args: argparse.Namespace, config: Config) -> int:
    try:
        reviewer = _reviewer(config)
    except ReviewRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    command = args.quarantine_command
    work: Callable[[Quarantine], Awaitable[int]] = {
        "list": lambda q: _list(q, args),
        "show": lambda q: _show(q, reviewer, args),
        "release": lambda q: _release(q, reviewer, args, config),
        "reject": lambda q: _reject(q, reviewer, args),
        "recall": lambda q: _recall(q, reviewer, args),
        "delete": lambda q: _delete(q, reviewer, args),
        "export": lambda q: _export(q, reviewer, args),
    }[command]
    return asyncio.run(_with_store(config, lambda store: work(Quarantine(store, config))))


def run_audit(args: argparse.Namespace, config: Config) -> int:
    try:
        _reviewer(config)
    except ReviewRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.audit_command == "verify":
        return asyncio.run(_with_store(config, _verify))
    return asyncio.run(_with_store(config, lambda store: _audit_show(store, args)))


def _reviewer(config: Config) -> Reviewer:
    staff = load_staff(config.council.staff) if config.council.staff else None
    return reviewer_for(invoking_login(), staff)


async def _with_store(config: Config, work: Callable[[Store], Awaitable[int]]) -> int:
    store = open_configured_store(config.store)
    await store.open()
    try:
        return await work(store)
    except (ReviewConflict, ReviewRefused) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        await store.close()


# -- list and show ------------------------------------------------------------------


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).astimezone().strftime("%Y-%m-%d %H:%M")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _copies(held: Held) -> list[dict[str, Any]]:
    """Each waiting copy: its state, approvals so far and needed, the rules that held it."""
    copies = []
    review = held.review
    failed = held.failed()
    for r in held.record.recipients:
        shown = review.recipients.get(r.address) if review else None
        copies.append(
            {
                "address": r.address,
                "state": "release failed" if r.address in failed else r.state.value,
                "action": shown.action if shown else None,
                "approvals": [
                    {"reviewer": a.reviewer, "role": a.role, "reason": a.reason, "at": a.at}
                    for a in held.approvals_of(r.address)
                ],
                "approvals_needed": held.needed(r.address) if r.state is RecipientState.HELD else 0,
                "approver_needed": bool(shown and shown.approver),
                "rules": [rule.name for rule in shown.rules] if shown else [],
                "last_reply": r.last_reply,
            }
        )
    return copies


def _summary(held: Held) -> dict[str, Any]:
    record = held.record
    return {
        "id": record.id,
        "state": record.state.value,
        "sender": record.envelope.sender or "<>",
        "received_at": record.envelope.received_at,
        "size": record.size,
        "release_at": record.release_at,
        "expires_at": record.review_until,
        "rules": list(held.review.rules()) if held.review else [],
        "recipients": _copies(held),
    }


async def _list(desk: Quarantine, args: argparse.Namespace) -> int:
    only = HoldFilter(args.state, args.sender, args.domain, args.rule, args.older_than)
    found = await desk.held(only)
    if args.json:
        print(json.dumps([_summary(h) for h in found]))
        return EXIT_OK
    now = time.time()
    table = Table(title=f"Quarantine: {len(found)} message(s) waiting")
    table.add_column("id", no_wrap=True, min_width=21)
    for column in ("age", "sender", "waiting copies", "approvals", "held by", "expires"):
        table.add_column(column, overflow="fold")
    for held in found:
        copies = [c for c in _copies(held) if c["state"] in ("held", "delayed", "release failed")]
        record = held.record
        expires = (
            f"delivers {_when(record.release_at)}"
            if not record.addresses_in(RecipientState.HELD)
            else _when(record.review_until)
        )
        table.add_row(
            record.id,
            _age(now - record.envelope.received_at),
            record.envelope.sender or "<>",
            "\n".join(
                f"{c['address']} ({c['state']}: {c['last_reply']})"
                if c["state"] == "release failed"
                else f"{c['address']} ({c['state']})"
                for c in copies
            ),
            "\n".join(_approval_count(c) for c in copies),
            "\n".join(held.review.deciding_rules()) if held.review else "-",
            expires,
        )
    _console().print(table)
    return EXIT_OK


def _console() -> Console:
    """Rich's own width on a terminal; piped into a file or a mail, one row per line."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _approval_count(copy: dict[str, Any]) -> str:
    if copy["state"] != "held":
        return "-"
    text = f"{len(copy['approvals'])}/{copy['approvals_needed']}"
    return text + (" (approver)" if copy["approver_needed"] else "")


async def _show(desk: Quarantine, reviewer: Reviewer, args: argparse.Namespace) -> int:
    if args.content:
        content = await desk.content(reviewer, args.id, "show-content")
        sys.stdout.write(content.decode("utf-8", "replace"))
        return EXIT_OK
    held = await desk.get(args.id)
    history = await desk.history(args.id)
    stored = held.review.as_dict() if held.review else {}
    shown = {
        **_summary(held),
        "client": held.record.envelope.client_address,
        "cases": stored.get("cases", []),
        "verdicts": stored.get("recipients", {}),
        "findings": stored.get("findings", []),
        "attachments": stored.get("attachments", []),
        "history": [
            {"at": e.at, "actor": e.actor, "action": e.action, "detail": e.detail} for e in history
        ],
    }
    if args.json:
        print(json.dumps(shown))
        return EXIT_OK
    _print_show(shown)
    return EXIT_OK


def _print_show(shown: dict[str, Any]) -> None:
    console = _console()
    console.print(f"[bold]Message {shown['id']}[/bold] ({shown['state']})")
    console.print(f"  from {shown['sender']} (client {shown['client']}), {shown['size']} bytes")
    console.print(
        f"  received {_when(shown['received_at'])}; hold expires {_when(shown['expires_at'])}"
    )
    if shown["release_at"]:
        console.print(f"  delayed copies deliver at {_when(shown['release_at'])}")
    if shown["cases"]:
        console.print(f"  cases: {', '.join(shown['cases'])}")
    console.print("\n[bold]Recipients[/bold]")
    verdicts = shown["verdicts"]
    for copy in shown["recipients"]:
        verdict = verdicts.get(copy["address"], {})
        line = f"  {copy['address']}: {copy['state']}"
        if copy["state"] == "held":
            line += f", approvals {_approval_count(copy)}"
        console.print(line, highlight=False)
        if verdict.get("classes") or verdict.get("facts"):
            console.print(f"    [{', '.join(verdict['classes'] + verdict['facts'])}]", markup=False)
        for rule in verdict.get("rules", []):
            console.print(
                f"    {rule['explanation']}",
                markup=False,  # it starts with the rule's name
            )
        for approval in copy["approvals"]:
            console.print(
                f"    approved by {approval['reviewer']} ({approval['role']}) "
                f"at {_when(approval['at'])}: {approval['reason']}",
                markup=False,
            )
    console.print("\n[bold]Findings[/bold]")
    for f in shown["findings"]:
        console.print(
            f"  {f['detector']} in {f['location']}: {f['count']} distinct, {f['confidence']}"
            f" - {f['excerpt']}",
            markup=False,
        )
    if shown["attachments"]:
        console.print("\n[bold]Attachments[/bold]")
        for a in shown["attachments"]:
            flags = f" [{', '.join(a['flags'])}]" if a["flags"] else ""
            console.print(f"  {a['path']}: {a['kind']}, {a['size']} bytes{flags}", markup=False)
    console.print("\n[bold]History[/bold]")
    for entry in shown["history"]:
        detail = {k: v for k, v in entry["detail"].items() if k != "role"}
        console.print(
            f"  {_when(entry['at'])} {entry['actor']} {entry['action']} {json.dumps(detail)}",
            markup=False,
        )


# -- decisions ------------------------------------------------------------------------


async def _release(
    desk: Quarantine, reviewer: Reviewer, args: argparse.Namespace, config: Config
) -> int:
    outcome = await desk.release(reviewer, args.id, args.recipient, args.reason)
    for address, needs in outcome.waiting.items():
        print(f"approved by {reviewer.login}: {address} is still held: needs {needs}")
    if not outcome.released:
        return EXIT_OK
    wait = config.review.release_wait if args.wait is None else args.wait
    states = await desk.delivery_outcome(args.id, outcome.released, wait)
    failed = False
    for address in outcome.released:
        record = states.get(address)
        state = record.state if record else None
        reply = record.last_reply if record else ""
        if state is RecipientState.DELIVERED:
            print(f"released: {address}: delivered ({reply})")
        elif state in (RecipientState.BOUNCED, RecipientState.HELD):
            print(f"failed: {address}: not delivered: {reply}")
            failed = True
        elif state is RecipientState.DEFERRED:
            print(f"queued: {address}: the upstream said {reply}; the relay will retry")
        else:
            print(f"approved: {address}: waiting for the relay to deliver it (is it running?)")
    return EXIT_REFUSED if failed else EXIT_OK


async def _reject(desk: Quarantine, reviewer: Reviewer, args: argparse.Namespace) -> int:
    refused = await desk.reject(reviewer, args.id, args.recipient, args.reason)
    print(f"rejected: {', '.join(refused)}; the sender is told")
    return EXIT_OK


async def _recall(desk: Quarantine, reviewer: Reviewer, args: argparse.Namespace) -> int:
    recalled = await desk.recall(reviewer, args.id, args.reason)
    print(f"recalled: {', '.join(recalled)}; the sender is told")
    return EXIT_OK


async def _delete(desk: Quarantine, reviewer: Reviewer, args: argparse.Namespace) -> int:
    deleted = await desk.delete(reviewer, args.id, args.reason)
    print(f"deleted: {', '.join(deleted)}")
    return EXIT_OK


async def _export(desk: Quarantine, reviewer: Reviewer, args: argparse.Namespace) -> int:
    content = await desk.content(reviewer, args.id, "export")
    sys.stdout.buffer.write(content)
    sys.stdout.flush()
    return EXIT_OK


# -- audit ------------------------------------------------------------------------------


async def _verify(store: Store) -> int:
    report = verify_chain(await store.audit_entries())
    if report.intact:
        print(f"audit log intact: {report.entries} entries, head {report.head}")
        return EXIT_OK
    print(
        f"audit log BROKEN at entry {report.broken_at}: {report.problem} "
        f"({report.entries} entries before it check; last good hash {report.head})"
    )
    return EXIT_REFUSED


async def _audit_show(store: Store, args: argparse.Namespace) -> int:
    for entry in await store.audit_entries(args.message):
        if args.json:
            print(
                json.dumps(
                    {
                        "seq": entry.seq,
                        "at": entry.at,
                        "actor": entry.actor,
                        "action": entry.action,
                        "message_id": entry.message_id,
                        "detail": entry.detail,
                        "hash": entry.hash,
                    }
                )
            )
        else:
            print(
                f"{entry.seq:6d} {_when(entry.at)} {entry.actor} {entry.action} "
                f"{entry.message_id or '-'} {json.dumps(entry.detail)}"
            )
    return EXIT_OK


__all__: Sequence[str] = ["add_arguments", "run_audit", "run_quarantine"]
