"""The command line, run as an administrator would run it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_config


def _smtpguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpguard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_when_scan_of_clean_message_then_pass_and_exit_0(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    message = tmp_path / "clean.eml"
    message.write_bytes(b"Subject: lunch\nFrom: j@northshire.gov.uk\n\nSandwiches at one.\n")
    result = _smtpguard(
        "scan",
        str(message),
        "--config",
        str(config),
        "--from",
        "j@northshire.gov.uk",
        "--to",
        "a@example.org",
        "--to",
        "b@example.org",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "pass"
    assert set(report["recipients"]) == {"a@example.org", "b@example.org"}
    assert report["recipients"]["a@example.org"]["action"] == "pass"
    assert report["findings"] == [] and report["errors"] == [] and report["cases"] == []


def test_when_scan_file_missing_then_exit_2_with_reason(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = _smtpguard("scan", str(tmp_path / "nope.eml"), "--config", str(config))
    assert result.returncode == 2
    assert "No such file" in result.stderr


def test_when_config_broken_then_every_command_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "smtpguard.yaml"
    config.write_text("server:\n  allowed_clients: [127.0.0.0/8]\n  bogus: 1\n")
    for args in (["check-config"], ["queue", "list"], ["serve"]):
        result = _smtpguard(*args, "--config", str(config))
        assert result.returncode == 2, args
        assert f"{config}:3: server.bogus: unknown key" in result.stderr, args


def test_when_config_from_environment_then_used(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "smtpguard", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"SMTPGUARD_CONFIG": str(config), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert str(config) in result.stdout


def test_when_scan_of_sensitive_message_then_findings_with_redacted_excerpts(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    message = tmp_path / "sensitive.eml"
    message.write_bytes(
        b"Subject: OFFICIAL-SENSITIVE CS-204817\n\n"
        b"Amelia Hart, DOB 14/03/2015, NHS number 943 476 5919, NI AB 12 34 56 C.\n"
    )
    result = _smtpguard(
        "scan", str(message), "--config", str(config), "--to", "a@example.org", "--json"
    )
    assert result.returncode == 0, result.stderr
    found = {f["detector"]: f for f in json.loads(result.stdout)["findings"]}
    assert {
        "protective_marking",
        "case_reference",
        "nhs_number",
        "date_of_birth",
        "ni_number",
    } <= set(found)
    assert found["nhs_number"]["location"] == "body"
    assert found["nhs_number"]["confidence"] == "high"
    for value in (
        "943 476 5919",
        "9434765919",
        "14/03/2015",
        "AB 12 34 56 C",
        "AB123456C",
    ):
        assert value not in result.stdout, value
        assert value not in result.stderr, value
    # A case reference names a case, not a person: DESIGN's scan --json lists it.
    assert json.loads(result.stdout)["cases"] == ["CS-204817"]
    assert found["case_reference"]["excerpt"] == "CS-2***17"


def test_when_scan_without_envelope_flags_then_envelope_comes_from_headers(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    message = tmp_path / "m.eml"
    message.write_bytes(
        b"From: Joy Okafor <j.okafor@northshire.gov.uk>\n"
        b"To: Sarah Mills <s.mills@millsandco-solicitors.co.uk>, p.ash@brightwaterlaw.co.uk\n"
        b"Cc: guardian.team@cafcass.gov.uk\n"
        b"Bcc: dan.hart77@gmail.com\n"
        b"Subject: hearing\n\nSee you at the hearing.\n"
    )
    result = _smtpguard("scan", str(message), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert list(json.loads(result.stdout)["recipients"]) == [
        "s.mills@millsandco-solicitors.co.uk",
        "p.ash@brightwaterlaw.co.uk",
        "guardian.team@cafcass.gov.uk",
        "dan.hart77@gmail.com",
    ]
    only = _smtpguard(
        "scan", str(message), "--config", str(config), "--json", "--to", "x@example.org"
    )
    assert list(json.loads(only.stdout)["recipients"]) == ["x@example.org"]
