"""`smtpguard demo`: the example council's scenarios through a real relay, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpguard.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_demo_catches_b1_to_b8_passes_ordinary_mail_and_leaves_real_holds(tmp_path: Path) -> None:
    demo = run(
        "demo",
        "--config",
        str(ROOT / "config" / "smtpguard.yaml"),
        "--data-dir",
        str(tmp_path / "demo"),
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr
    rows: dict[str, str] = {}
    name = ""
    for line in demo.stdout.splitlines():
        if not line.startswith("│"):
            continue
        first = line.split("│")[1].strip()
        name = first if first else name  # a row's wrapped lines have an empty first cell
        if name:
            rows[name] = rows.get(name, "") + line
    assert "delivered via verified-tls" in rows["B1"]  # case material: verified TLS only
    for held in ("B2", "B3", "B4", "B5", "B6", "B7", "B8"):
        assert "│ held" in rows[held], rows[held]
    assert "case-material-to-restricted-party" in rows["B3"]
    assert "protected-address-outside-council" in rows["B6"]
    assert "bulk-identifiers-outside-council" in rows["B8"]
    ok_rows = [line for line in demo.stdout.splitlines() if line.startswith("│ ok")]
    assert len(ok_rows) == 2 and all("delivered via upstream" in line for line in ok_rows)
    assert "│ held" not in rows["ok"]
    assert "Traceback" not in demo.stderr

    config = tmp_path / "demo" / "smtpguard-demo.yaml"
    listed = run("quarantine", "list", "--json", "--config", str(config), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    holds = json.loads(listed.stdout)
    assert len(holds) == 7
    rules = {rule for hold in holds for rule in hold["rules"]}
    assert {"case-material-to-restricted-party", "protected-address-outside-council"} <= rules
    verify = run("audit", "verify", "--config", str(config), cwd=tmp_path)
    assert verify.returncode == 0 and "audit log intact" in verify.stdout
