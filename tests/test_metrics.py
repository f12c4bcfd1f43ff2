"""Metrics, /healthz and `smtpguard stats` against a real relay over real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiosmtplib
import pytest
import structlog
import yaml

import smtpguard.metrics
import smtpguard.relay
from smtpguard.config import ConfigError, load_config
from smtpguard.config.model import MetricsConfig
from smtpguard.decide import Action, RecipientVerdict
from smtpguard.metrics import verdict_label
from smtpguard.relay import RelayService
from tests.conftest import RelayRunner, write_config
from tests.sink import CaptureSink

SENDER = "j.okafor@northshire.gov.uk"
CLEAN_TO = "s.mills@millsandco-solicitors.co.uk"
HELD_TO = "dan.hart77@gmail.com"
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example"
MESSAGE = (
    b"From: Joy Okafor <j.okafor@northshire.gov.uk>\r\n"
    b"Subject: Amelia Hart - strategy meeting notes\r\n"
    b"Message-ID: <metrics-1@northshire.gov.uk>\r\n"
    b"\r\n"
    b"Please find the notes below.\r\n"
    b"NHS number 943 476 5919\r\n"
)
HOLDING_POLICY = """
rules:
  - name: hold-webmail
    description: case material to a personal webmail address
    when: {recipient: {class: webmail}}
    action: quarantine
    severity: high
"""
METRICS = {"metrics": {"listen": "127.0.0.1:0"}}


@pytest.fixture(autouse=True)
def _quick_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gauges follow the store every 0.1 s here, not every few seconds."""
    monkeypatch.setattr(smtpguard.relay, "_PRESSURE_REFRESH", 0.1)
    monkeypatch.setattr(smtpguard.metrics, "HOLDS_REFRESH_SECONDS", 0.1)


async def _send(port: int, recipients: list[str]) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    try:
        _, reply = await client.sendmail(SENDER, recipients, MESSAGE)
    finally:
        await client.quit()
    return reply


async def _get(address: tuple[str, int] | None, path: str, method: str = "GET") -> tuple[int, str]:
    """One HTTP request over a real socket; the server closes after answering."""
    assert address is not None
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


def _sample(body: str, name: str, **labels: str) -> float | None:
    """The value of one sample in the text format, or None when it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        found = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?", series)
        if found is None or found.group(1) != name:
            continue
        parts = sorted((found.group(2) or "").split(",")) if found.group(2) else []
        if ",".join(parts) == wanted:
            return float(value)
    return None


async def _metrics_until(
    service: RelayService, ready: dict[tuple[str, tuple[tuple[str, str], ...]], float]
) -> str:
    """Scrape until every named sample has at least its value (gauges lag a refresh)."""
    async with asyncio.timeout(10):
        while True:
            status, body = await _get(service.metrics_address, "/metrics")
            assert status == 200
            if all(
                (_sample(body, name, **dict(labels)) or 0) >= value
                for (name, labels), value in ready.items()
            ):
                return body
            await asyncio.sleep(0.1)


def _holding_config(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "policy.yaml").write_text(HOLDING_POLICY, encoding="utf-8")
    return {
        **METRICS,
        "council": {"domains": str(EXAMPLE / "domains.csv")},
        "policy": {"file": "policy.yaml"},
    }


async def test_metrics_count_messages_verdicts_rules_findings_deliveries_and_holds(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start(_holding_config(relays.tmp_path))
    assert service.metrics_address is not None and service.metrics_address[1] > 0
    assert service.address is not None
    await _send(service.address[1], [CLEAN_TO])
    await _send(service.address[1], [HELD_TO])
    # The clean message, and the notice telling the sender theirs is held.
    await sink.handler.wait_for(2, timeout=10)
    body = await _metrics_until(
        service,
        {
            ("smtpguard_holds_awaiting_review", ()): 1,
            ("smtpguard_deliveries_total", (("outcome", "delivered"), ("route", "upstream"))): 2,
        },
    )
    assert _sample(body, "smtpguard_messages_received_total", mode="after-queue") == 2
    assert _sample(body, "smtpguard_verdicts_total", action="pass") == 1
    assert _sample(body, "smtpguard_verdicts_total", action="quarantine") == 1
    assert _sample(body, "smtpguard_rules_fired_total", rule="hold-webmail") == 1
    assert _sample(body, "smtpguard_findings_total", detector="nhs_number") == 2
    assert _sample(body, "smtpguard_scan_seconds_count") == 2
    assert (_sample(body, "smtpguard_delivery_seconds_count", route="upstream") or 0) >= 2
    assert _sample(body, "smtpguard_holds_awaiting_review") == 1
    assert (_sample(body, "smtpguard_oldest_hold_age_seconds") or 0) > 0
    assert _sample(body, "smtpguard_queue_messages", state="held") == 1
    assert _sample(body, "smtpguard_queue_messages", state="deferred") == 0
    assert (_sample(body, "smtpguard_store_free_disk_bytes") or 0) > 0
    assert (_sample(body, "smtpguard_smtp_replies_total", **{"class": "2xx"}) or 0) >= 10
    assert _sample(body, "smtpguard_smtp_replies_total", **{"class": "5xx"}) == 0
    assert _sample(body, "smtpguard_smtp_sessions_open") is not None
    # Names of things the council configured, never anything from a message.
    for secret in ("@", "northshire", "gmail", "millsandco", "Amelia", "strategy", "943 476"):
        assert secret not in body, secret

    # `smtpguard stats` reads the same store from another process, relay running.
    stats = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "smtpguard.cli",
            "stats",
            "--json",
            "--config",
            str(relays.tmp_path / "smtpguard.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(stats.stdout)
    assert result["messages"]["held"] == 1
    assert result["holds"]["awaiting_review"] == 1
    assert result["holds"]["oldest_age_seconds"] >= 0
    for window in ("last_hour", "last_24h"):
        assert result["recent"][window]["delivered"] == 1  # relayed mail only, not notices
        assert result["recent"][window]["held"] == 1
        assert result["recent"][window]["bounced"] == 0
    assert "@" not in stats.stdout


async def test_a_client_refused_at_connect_is_counted_as_a_5xx_reply(
    relays: RelayRunner,
) -> None:
    service = await relays.start({**METRICS, "server": {"allowed_clients": ["10.0.0.0/8"]}})
    assert service.address is not None
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await _send(service.address[1], ["gone@example.org"])
    body = await _metrics_until(service, {("smtpguard_smtp_replies_total", (("class", "5xx"),)): 1})
    assert _sample(body, "smtpguard_messages_received_total", mode="after-queue") is None


async def test_an_upstream_5xx_counts_as_bounced(relays: RelayRunner, sink: CaptureSink) -> None:
    sink.handler.rcpt_reply = lambda a: "550 5.1.1 unknown" if "gone" in a else None
    service = await relays.start(METRICS)
    assert service.address is not None
    await _send(service.address[1], ["gone@example.org", CLEAN_TO])
    await _metrics_until(
        service,
        {
            ("smtpguard_deliveries_total", (("outcome", "bounced"), ("route", "upstream"))): 1,
            ("smtpguard_deliveries_total", (("outcome", "delivered"), ("route", "upstream"))): 1,
        },
    )


async def test_healthz_is_ok_when_store_and_upstream_answer(
    relays: RelayRunner, sink: CaptureSink
) -> None:
    service = await relays.start(METRICS)
    assert await _get(service.metrics_address, "/healthz") == (200, "ok\n")
    assert await _get(service.metrics_address, "/healthz", "HEAD") == (200, "")
    assert (await _get(service.metrics_address, "/nothing"))[0] == 404
    assert (await _get(service.metrics_address, "/metrics", "POST"))[0] == 405


async def test_healthz_is_503_naming_the_upstream_when_its_port_is_closed(
    relays: RelayRunner,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    service = await relays.start(METRICS, upstream_port=closed)
    status, body = await _get(service.metrics_address, "/healthz")
    assert status == 503
    assert body == f"upstream 127.0.0.1:{closed}: Connection refused\n"


async def test_without_a_metrics_address_nothing_is_served_or_counted(
    relays: RelayRunner,
) -> None:
    service = await relays.start()
    assert service.metrics is None and service.metrics_address is None
    assert service.relay.metrics is None and service.queue.metrics is None


async def test_a_changed_metrics_address_is_reported_as_needing_a_restart(
    relays: RelayRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await relays.start(METRICS)
    write_config(relays.tmp_path, {"metrics": {"listen": "127.0.0.1:9"}})
    # A reload reconfigures logging, which would end the capture before its own line.
    monkeypatch.setattr(smtpguard.relay, "configure_logging", lambda config: None)
    with structlog.testing.capture_logs() as logs:
        assert service.reload()
    [reloaded] = [e for e in logs if e["event"] == "config.reloaded"]
    assert "metrics.listen" in reloaded["restart_needed_for"]
    # Still serving where it started.
    assert (await _get(service.metrics_address, "/healthz"))[0] == 200


def test_a_non_loopback_metrics_address_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"metrics": {"listen": "0.0.0.0:9125"}})
    line = path.read_text(encoding="utf-8").splitlines().index("  listen: 0.0.0.0:9125") + 1
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    [problem] = refused.value.problems
    assert str(problem).startswith(f"{path}:{line}: metrics.listen: 0.0.0.0:9125 is not")
    assert "allow_remote" in str(problem)


def test_a_remote_metrics_address_is_accepted_when_allowed_and_a_port_means_loopback(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, {"metrics": {"listen": "0.0.0.0:9125", "allow_remote": True}})
    assert str(load_config(path).metrics.listen) == "0.0.0.0:9125"
    assert str(MetricsConfig.model_validate({"listen": 9125}).listen) == "127.0.0.1:9125"
    assert str(MetricsConfig.model_validate({"listen": "[::1]:9125"}).listen) == "[::1]:9125"
    assert MetricsConfig().listen is None


def test_the_example_config_shows_metrics_on_loopback_and_leaves_them_off() -> None:
    # Off: the example (and every test that runs it) opens no fixed port of its own.
    example = Path(__file__).resolve().parent.parent / "config" / "smtpguard.yaml"
    text = example.read_text(encoding="utf-8")
    assert "metrics" not in yaml.safe_load(text)
    assert "# metrics:\n#   listen: 127.0.0.1:9125\n" in text


@pytest.mark.parametrize(
    "verdict, label",
    [
        (RecipientVerdict(), "pass"),
        (RecipientVerdict(tag=True), "tag"),
        (RecipientVerdict(route="secure-gateway", tag=True), "route"),
        (RecipientVerdict(require_tls=True), "require_tls"),
        (RecipientVerdict(action=Action.DELAY, route="secure-gateway"), "delay"),
        (RecipientVerdict(action=Action.QUARANTINE), "quarantine"),
        (RecipientVerdict(action=Action.REJECT), "reject"),
    ],
)
def test_each_recipient_verdict_has_one_action_label(verdict: RecipientVerdict, label: str) -> None:
    assert verdict_label(verdict) == label


def test_stats_prints_a_table_without_a_running_relay(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    started = time.monotonic()
    shown = subprocess.run(
        [sys.executable, "-m", "smtpguard.cli", "stats", "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert time.monotonic() - started < 30
    assert "Messages by state" in shown.stdout
    assert "Holds awaiting review: 0" in shown.stdout
    assert "last 24 h" in shown.stdout
