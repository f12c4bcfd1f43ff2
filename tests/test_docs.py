"""What the documentation tells an administrator to type is what smtpguard accepts.

Every `smtpguard ...` command in a shell block of the README, docs/ and
deploy/ must parse with the real command line (a renamed flag breaks this
test, not a council's runbook); the README's serve command starts a relay on
the example config; the backup procedure in docs/operations.md gives a
database the store opens.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpguard.cli import build_parser
from smtpguard.spool import open_store

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "deploy").rglob("*.md")),
]
_BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.DOTALL)


def shell_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


def smtpguard_commands(block: str) -> list[list[str]]:
    """Each `smtpguard` invocation in a block, as its arguments (after the program)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part.split(">", 1)[0], comments=True)
            if words[:1] == ["sudo"]:  # sudo [-u USER] [-n] ... smtpguard ...
                words = words[1:]
                while words and words[0].startswith("-"):
                    if words.pop(0) in ("-u", "-g") and words:
                        words.pop(0)
            if words and Path(words[0]).name == "smtpguard":
                found.append(words[1:])
    return found


ALL = [
    (path.relative_to(ROOT).as_posix(), args)
    for path in DOCS
    for block in shell_blocks(path)
    for args in smtpguard_commands(block)
]


def test_the_documents_show_the_public_commands() -> None:
    shown = {args[0] for _, args in ALL if args}
    assert {"serve", "check-config", "scan", "quarantine", "audit", "spool", "demo"} <= shown


@pytest.mark.parametrize(("doc", "args"), ALL, ids=[f"{d}:{' '.join(a)}" for d, a in ALL])
def test_every_documented_command_parses(doc: str, args: list[str]) -> None:
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `smtpguard {' '.join(args)}` is refused ({exc.code})")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_readme_serve_command_runs_the_relay_on_the_example_config(tmp_path: Path) -> None:
    first = shell_blocks(ROOT / "README.md")[0]
    [serve] = [args for args in smtpguard_commands(first) if args[0] == "serve"]
    assert serve[:3] == ["serve", "--config", "config/smtpguard.yaml"]
    # As written, from the project root, except the data folder and a free port.
    args = [a if a != "./data" else str(tmp_path / "data") for a in serve]
    port = _free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "smtpguard.cli", *args, "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        banner = b""
        while time.monotonic() < deadline and not banner:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
                    banner = client.recv(200)
            except OSError:
                time.sleep(0.2)
        assert banner.startswith(b"220 "), banner
    finally:
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=30)
    assert relay.returncode == 0, err.decode()


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 shell is not installed")
def test_the_documented_backup_gives_a_store_that_opens(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    block = next(b for b in shell_blocks(ROOT / "docs" / "operations.md") if ".backup" in b)
    assert "Backups" in text
    data, backup = tmp_path / "data", tmp_path / "backup"
    backup.mkdir()

    async def fill() -> None:
        store = open_store("sqlite", data)
        await store.open()
        await store.append_audit("smtpguard", "verdict", "m1", {"rules": []})
        await store.close()

    asyncio.run(fill())
    for line in block.strip().splitlines():
        command = line.replace("/var/lib/smtpguard", str(data)).replace("/backup", str(backup))
        subprocess.run(shlex.split(command), check=True, env={**os.environ})

    async def read() -> int:
        store = open_store("sqlite", backup)
        await store.open()
        try:
            return (await store.audit_head())[0]
        finally:
            await store.close()

    assert (backup / "spool").is_dir()
    assert asyncio.run(read()) == 1
