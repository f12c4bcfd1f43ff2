"""The deploy/ files: the systemd unit, the container image and the Postfix snippets' folder.

The Postfix snippets are run for real by tests/test_postfix.py; here: that the
folder holds exactly what those tests run, that the systemd unit is valid
(`systemd-analyze verify`) and carries its hardening, that `smtpguard serve`
speaks systemd's notify protocol (READY=1, STOPPING=1) as `Type=notify`
needs, and that the Containerfile runs smtpguard as a non-root user with its
data on a volume (built for real only where a container engine can build it
without pulling from a registry).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_config
from tests.postfix import DEPLOY as POSTFIX_DEPLOY
from tests.postfix import REINJECTION_PORT, SMTPGUARD_PORT
from tests.processes import RelayLauncher, ReservedSink, wait_until
from tests.test_postfix import SNIPPETS

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "smtpguard.service"
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
DATA_DIR = "/var/lib/smtpguard"


# ---- systemd ------------------------------------------------------------------------


def unit_directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value the unit gives it, in order (systemd's syntax)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_is_notify_type_with_a_dedicated_user_and_its_hardening() -> None:
    service = unit_directives(UNIT)["Service"]

    def one(key: str) -> str:
        assert key in service, f"{UNIT.name} has no {key}="
        return service[key][-1]

    assert one("User") not in ("", "root", "0")
    assert one("Group") not in ("", "root", "0")
    assert "DynamicUser" not in service  # the reviewers sudo to a fixed user
    assert one("Type") == "notify"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ReadWritePaths").split() == [DATA_DIR]
    assert one("PrivateTmp") == "yes"
    assert one("ProtectHome") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert one("AmbientCapabilities") == ""
    assert one("RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert "@system-service" in service["SystemCallFilter"][0].split()
    # Lines merge in order: the parse workers' setpriority is allowed back after the
    # @resources it belongs to is denied (else SIGSYS kills every worker at birth).
    filters = service["SystemCallFilter"]
    denied_at = next(
        i for i, line in enumerate(filters) if line.startswith("~") and "@resources" in line.split()
    )
    assert any("setpriority" in line.split() for line in filters[denied_at + 1 :])
    assert one("UMask") == "0077"
    # The unit's command line reads the config whose data folder is the writable one.
    assert "--config /etc/smtpguard/smtpguard.yaml" in one("ExecStart")
    example = yaml.safe_load((ROOT / "config" / "smtpguard.yaml").read_text(encoding="utf-8"))
    assert example["store"]["data_dir"] == DATA_DIR


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` with the unit's /opt/smtpguard paths pointed at an
    executable that exists here (it checks them); nothing else is changed."""
    beside = Path(sys.executable).with_name("smtpguard")
    smtpguard = str(beside) if os.access(beside, os.X_OK) else shutil.which("smtpguard")
    if smtpguard is None:
        pytest.skip("the smtpguard command is not installed in this environment")
    text = UNIT.read_text(encoding="utf-8")
    assert "/opt/smtpguard/bin/smtpguard " in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/smtpguard/bin/smtpguard ", f"{smtpguard} "), "utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


async def test_serve_tells_systemd_ready_then_stopping(tmp_path: Path) -> None:
    """What `Type=notify` relies on: READY=1 once listening, STOPPING=1 on SIGTERM.

    (tests/test_process.py's SIGHUP-on-readiness test only looks for READY=1.)
    """
    upstream = ReservedSink()
    launcher = RelayLauncher(tmp_path)
    address = str(tmp_path / "notify.sock")
    received: list[bytes] = []

    def drain(sock: socket.socket) -> list[bytes]:
        """Everything that has arrived so far."""
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append(sock.recv(4096))
        return received

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.setblocking(False)
        try:
            relay = await launcher.start(
                write_config(tmp_path),
                tmp_path / "data",
                upstream.port,
                env={"NOTIFY_SOCKET": address},
            )
            await wait_until(lambda: b"READY=1" in drain(notify), timeout=10, what="READY=1")
            assert received == [b"READY=1"]
            relay.send_signal(signal.SIGTERM)
            assert await relay.wait_exit(timeout=15) == 0
            drain(notify)
        finally:
            await launcher.kill_all()
            await upstream.stop()
    assert received == [b"READY=1", b"STOPPING=1"]


# ---- the container image ------------------------------------------------------------


def containerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        word, _, arguments = line.partition(" ")
        instructions.append((word.upper(), arguments.strip()))
    assert pending == "", f"{path}: ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD (shell form refused)."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def test_the_containerfile_runs_smtpguard_unprivileged_with_its_data_on_a_volume() -> None:
    instructions = containerfile_instructions(CONTAINERFILE)
    by_name: dict[str, list[str]] = {}
    for name, arguments in instructions:
        by_name.setdefault(name, []).append(arguments)

    assert by_name["FROM"] == ["python:3.11-slim"]
    assert any(re.search(r"\buseradd\b.*\bsmtpguard$", run) for run in by_name["RUN"])
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in by_name["RUN"])
    # Everything after the last USER runs as smtpguard, and CMD comes after it.
    names = [name for name, _ in instructions]
    last_user = len(names) - 1 - names[::-1].index("USER")
    assert by_name["USER"][-1] == "smtpguard"
    assert "CMD" in names[last_user:]
    assert "RUN" not in names[last_user:]
    volumes = [v for arguments in by_name["VOLUME"] for v in exec_form(arguments)]
    assert DATA_DIR in volumes
    assert by_name["EXPOSE"] == [str(SMTPGUARD_PORT)]
    assert exec_form(by_name["CMD"][-1]) == [
        "smtpguard",
        "serve",
        "--config",
        "/etc/smtpguard/smtpguard.yaml",
    ]

    [healthcheck] = by_name["HEALTHCHECK"]
    options, _, command = healthcheck.partition(" CMD ")
    assert all(option.startswith("--") for option in shlex.split(options)), healthcheck
    probe = exec_form(command)
    assert probe[:2] == ["python", "-c"] and "curl" not in healthcheck
    ast.parse(probe[2])  # valid Python, run by the image's own interpreter
    assert f", {SMTPGUARD_PORT})" in probe[2]


def test_the_healthcheck_probe_passes_when_the_port_listens_and_fails_when_not() -> None:
    [healthcheck] = [a for n, a in containerfile_instructions(CONTAINERFILE) if n == "HEALTHCHECK"]
    probe = exec_form(healthcheck.partition(" CMD ")[2])[2]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        here = probe.replace(str(SMTPGUARD_PORT), str(port))
        up = subprocess.run([sys.executable, "-c", here], timeout=10, check=False)
        assert up.returncode == 0
    down = subprocess.run(
        [sys.executable, "-c", here], capture_output=True, timeout=10, check=False
    )
    assert down.returncode != 0


def container_engine() -> tuple[str, str | None]:
    """(engine, None) if docker or podman can build FROM a local python:3.11-slim, else
    ("", why not): the build must not depend on pulling from a registry."""
    reasons = []
    for name in ("podman", "docker"):
        engine = shutil.which(name)
        if engine is None:
            continue
        try:
            info = subprocess.run([engine, "info"], capture_output=True, timeout=20, check=False)
            if info.returncode != 0:
                reasons.append(f"{name} cannot reach its engine")
                continue
            image = subprocess.run(
                [engine, "image", "inspect", "python:3.11-slim"],
                capture_output=True,
                timeout=20,
                check=False,
            )
        except subprocess.TimeoutExpired:
            reasons.append(f"{name} does not answer")
            continue
        if image.returncode != 0:
            reasons.append(f"{name} has no local python:3.11-slim image")
            continue
        return engine, None
    return "", "; ".join(reasons) or "neither podman nor docker is installed"


def test_the_container_image_builds(tmp_path: Path) -> None:
    engine, why_not = container_engine()
    if why_not is not None:
        pytest.skip(f"no offline container build: {why_not}")
    tag = f"smtpguard-test:{os.getpid()}"
    pull = ["--pull=never"] if Path(engine).name == "podman" else []
    extra = ["--format", "docker"] if Path(engine).name == "podman" else []
    build = subprocess.run(
        [engine, "build", *pull, *extra, "-t", tag, "-f", str(CONTAINERFILE), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    try:
        assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
        inspect = subprocess.run(
            [engine, "image", "inspect", tag], capture_output=True, text=True, check=True
        )
        [image] = json.loads(inspect.stdout)
        config = image.get("Config") or image.get("config") or {}
        assert config.get("User") == "smtpguard"
        assert DATA_DIR in (config.get("Volumes") or {})
        assert config.get("Cmd") == [
            "smtpguard",
            "serve",
            "--config",
            "/etc/smtpguard/smtpguard.yaml",
        ]
        checked = subprocess.run(
            [
                engine,
                "run",
                "--rm",
                "--network=none",
                tag,
                "smtpguard",
                "check-config",
                "--config",
                "/etc/smtpguard/smtpguard.yaml",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        subprocess.run([engine, "image", "rm", "-f", tag], capture_output=True, check=False)


# ---- the Postfix snippets -------------------------------------------------------------


def test_deploy_postfix_holds_exactly_the_snippets_the_postfix_tests_run() -> None:
    tested = {name for main, master in SNIPPETS.values() for name in (*main, *master)}
    shipped = {p.name for p in POSTFIX_DEPLOY.iterdir() if p.name != "README.md"}
    assert shipped == tested
    readme = (POSTFIX_DEPLOY / "README.md").read_text(encoding="utf-8")
    for name in shipped:
        assert f"`{name}`" in readme, f"deploy/postfix/README.md does not mention {name}"


def test_the_example_config_uses_the_ports_the_postfix_snippets_document() -> None:
    example = yaml.safe_load((ROOT / "config" / "smtpguard.yaml").read_text(encoding="utf-8"))
    assert example["server"]["listen"] == f"127.0.0.1:{SMTPGUARD_PORT}"
    assert (example["upstream"]["host"], example["upstream"]["port"]) == (
        "127.0.0.1",
        REINJECTION_PORT,
    )
    snippets = "".join(p.read_text(encoding="utf-8") for p in POSTFIX_DEPLOY.glob("*.cf.*"))
    assert f"127.0.0.1]:{SMTPGUARD_PORT}" in snippets
    assert f"smtpd_proxy_filter=127.0.0.1:{SMTPGUARD_PORT}" in snippets
    assert f"127.0.0.1:{REINJECTION_PORT} inet" in snippets
