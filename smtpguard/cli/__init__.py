"""`smtpguard` command line: serve, scan, check-config, queue, stats, quarantine, audit, edm,
spool."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from smtpguard.config import Config, ConfigError, Overrides, default_config_path, load_config
from smtpguard.spool.instance import DataFolderInUse

EXIT_OK = 0
EXIT_HELD = 1
EXIT_ERROR = 2


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $SMTPGUARD_CONFIG, /etc/smtpguard/smtpguard.yaml, "
        "config/smtpguard.yaml)",
    )


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="store folder (overrides config)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtpguard", description="Outbound data-loss-prevention SMTP relay."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the relay")
    _add_config(serve)
    serve.add_argument("--listen", metavar="HOST:PORT", help="listen address (overrides config)")
    serve.add_argument("--upstream", metavar="HOST:PORT", help="next hop (overrides config)")
    _add_data_dir(serve)
    serve.add_argument("--mode", choices=["after-queue", "before-queue"])

    demo = commands.add_parser(
        "demo", help="send the example council's breach scenarios through a local relay"
    )
    _add_config(demo)
    demo.add_argument(
        "--data-dir", type=Path, default=Path("demo-data"), help="where the demo's store is left"
    )
    demo.add_argument(
        "--keep-running", action="store_true", help="keep the relay running after the scenarios"
    )

    check = commands.add_parser("check-config", help="validate the configuration")
    _add_config(check)

    scan = commands.add_parser("scan", help="dry run: show the verdict for a message file")
    _add_config(scan)
    scan.add_argument("file", type=Path, metavar="FILE.eml")
    scan.add_argument("--from", dest="sender", default=None, help="envelope sender (default: From)")
    scan.add_argument(
        "--to",
        dest="recipients",
        action="append",
        default=[],
        help="recipient, repeatable (default: To, Cc and Bcc)",
    )
    scan.add_argument("--json", action="store_true", help="print one JSON object")

    queue = commands.add_parser("queue", help="the delivery queue")
    queue_commands = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    queue_list = queue_commands.add_parser("list", help="messages waiting for delivery")
    queue_flush = queue_commands.add_parser("flush", help="retry deferred messages now")
    for sub in (queue_list, queue_flush):
        _add_config(sub)
        _add_data_dir(sub)
    queue_list.add_argument("--json", action="store_true", help="print JSON")

    stats = commands.add_parser(
        "stats", help="the relay at a glance: queue, holds, recent outcomes"
    )
    _add_config(stats)
    _add_data_dir(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object")

    from smtpguard.cli.edm import add_arguments as add_edm_arguments

    add_edm_arguments(commands.add_parser("edm", help="exact data match registers"), _add_config)

    from smtpguard.cli.quarantine import add_arguments as add_review_arguments

    add_review_arguments(
        commands.add_parser("quarantine", help="held and delayed mail: review, release, refuse"),
        commands.add_parser("audit", help="the audit log of verdicts and reviewer actions"),
        _add_config,
        _add_data_dir,
    )

    from smtpguard.cli.spool import add_arguments as add_spool_arguments

    add_spool_arguments(
        commands.add_parser("spool", help="spool encryption keys and rotation"),
        _add_config,
        _add_data_dir,
    )
    return parser


def _load(args: argparse.Namespace, overrides: Overrides | None = None) -> Config:
    return load_config(args.config or default_config_path(), overrides)


def _serve(args: argparse.Namespace) -> int:
    from smtpguard.relay import run_relay

    overrides = Overrides(
        listen=args.listen, upstream=args.upstream, data_dir=args.data_dir, mode=args.mode
    )
    return run_relay(args.config or default_config_path(), overrides)


def _demo(args: argparse.Namespace) -> int:
    from smtpguard.demo import run_demo

    source = args.config or default_config_path()
    _load(args)  # the example must be valid before anything starts
    try:
        return run_demo(source, args.data_dir, keep_running=args.keep_running)
    except KeyboardInterrupt:
        return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    path = args.config or default_config_path()
    _load(args)
    print(f"{path}: OK")
    return EXIT_OK


def _envelope_from_headers(raw: bytes) -> tuple[str, tuple[str, ...]]:
    """Without --from/--to, `scan` reads the envelope a mail server would have used:
    the sender from Sender or From, the recipients from To, Cc and Bcc."""
    import email.parser
    import email.policy
    import email.utils

    header_end = raw.find(b"\r\n\r\n")
    head = raw if header_end < 0 else raw[: header_end + 2]
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    senders = email.utils.getaddresses(message.get_all("Sender", []) or message.get_all("From", []))
    sender = next((address for _, address in senders if address), "")
    recipients: list[str] = []
    for name in ("To", "Cc", "Bcc"):
        for _, address in email.utils.getaddresses([str(v) for v in message.get_all(name, [])]):
            if address and address not in recipients:
                recipients.append(address)
    return sender, tuple(recipients)


def _scan(args: argparse.Namespace) -> int:
    from smtpguard.decide import Action
    from smtpguard.envelope import Envelope
    from smtpguard.inspect import inspect_message
    from smtpguard.spool.sqlite import read_correspondents

    config = _load(args)
    raw = args.file.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    sender, recipients = _envelope_from_headers(raw)
    envelope = Envelope(
        sender=args.sender if args.sender is not None else sender,
        recipients=tuple(args.recipients) or recipients,
        client_address="127.0.0.1",
        client_name="scan",
        received_at=time.time(),
    )
    correspondents = read_correspondents(
        config.store.data_dir, envelope.sender, envelope.recipients
    )
    verdict = inspect_message(raw, envelope, config, correspondents)
    result = {
        "verdict": verdict.action.value,
        "recipients": {
            address: {
                "action": v.action.value,
                "approvals": v.approvals,
                "rules": list(v.rules),
                "classes": list(v.classes),
                "facts": list(v.facts),
                "reason": v.reason,
                "delay_seconds": v.delay_seconds,
                "route": v.route,
                "require_tls": v.require_tls,
                "notify": sorted(v.notify),
                "explanation": list(v.explanation),
            }
            for address, v in verdict.recipients.items()
        },
        "cases": list(verdict.cases),
        "findings": [
            {
                "detector": f.detector,
                "location": f.location,
                "confidence": f.confidence.label,
                "count": f.count,
                "excerpt": f.excerpt,
                **({"theme": f.theme} if f.theme else {}),
            }
            for f in verdict.findings
        ],
        "errors": [],
    }
    if args.json:
        print(json.dumps(result, indent=None))
    else:
        print(f"verdict: {result['verdict']}")
        for address, v in verdict.recipients.items():
            classes = ", ".join((*v.classes, *v.facts))
            print(f"  {address} [{classes}]: {v.action.value}")
            for line in v.explanation:
                print(f"    {line}")
    held = verdict.action in (Action.QUARANTINE, Action.REJECT, Action.DELAY)
    return EXIT_HELD if held else EXIT_OK


def _queue(args: argparse.Namespace) -> int:
    from smtpguard.cli.queue import flush_queue, list_queue

    config = _load(args, Overrides(data_dir=args.data_dir))
    if args.queue_command == "list":
        return asyncio.run(list_queue(config, as_json=args.json))
    return asyncio.run(flush_queue(config))


def _stats(args: argparse.Namespace) -> int:
    from smtpguard.cli.stats import show_stats

    config = _load(args, Overrides(data_dir=args.data_dir))
    return asyncio.run(show_stats(config, as_json=args.json))


def _edm(args: argparse.Namespace) -> int:
    from smtpguard.cli.edm import run_edm

    return run_edm(args)


def _quarantine(args: argparse.Namespace) -> int:
    from smtpguard.cli.quarantine import run_quarantine

    return run_quarantine(args, _load(args, Overrides(data_dir=args.data_dir)))


def _audit(args: argparse.Namespace) -> int:
    from smtpguard.cli.quarantine import run_audit

    return run_audit(args, _load(args, Overrides(data_dir=args.data_dir)))


def _spool(args: argparse.Namespace) -> int:
    from smtpguard.cli.spool import run_spool

    return run_spool(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        # A command's output is its answer (scan --json is piped to jq): the
        # library's own log lines go to stderr, and only warnings.
        from smtpguard.config import LoggingConfig
        from smtpguard.log import configure_logging

        configure_logging(LoggingConfig(level="warning"))
    handlers = {
        "serve": _serve,
        "check-config": _check_config,
        "demo": _demo,
        "scan": _scan,
        "queue": _queue,
        "stats": _stats,
        "edm": _edm,
        "quarantine": _quarantine,
        "audit": _audit,
        "spool": _spool,
    }
    try:
        return handlers[args.command](args)
    except (ConfigError, DataFolderInUse) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"smtpguard: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
