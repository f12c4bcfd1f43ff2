"""Loading smtpguard.yaml: every problem reported as `file:line: reason`.

Config texts are written by hand (not generated) so that line numbers are
visible in the test: the line a problem must be reported on carries the
comment `# <-`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import textwrap
from pathlib import Path

import pytest

from smtpguard.config import ConfigError, HostPort, Overrides, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "smtpguard.yaml"
MARK = "# <-"
MINIMAL = "server:\n  allowed_clients: [127.0.0.0/8]\n"


def write(tmp_path: Path, text: str, name: str = "smtpguard.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def marked_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(textwrap.dedent(text).splitlines(), 1) if MARK in line]


def problems_of(path: Path, overrides: Overrides | None = None) -> list[tuple[int, str]]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    for problem in caught.value.problems:
        assert problem.file == path
        assert str(problem) == f"{path}:{problem.line}: {problem.reason}"
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [(p.line, p.reason) for p in caught.value.problems]


# -- the shipped example --------------------------------------------------------------


def test_when_shipped_example_then_it_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.server.hostname == "smtpguard.northshire.gov.uk"
    assert config.server.listen == HostPort(host="127.0.0.1", port=10025)
    assert config.server.mode == "after-queue"
    assert config.server.allowed_clients == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.server.max_message_size == 50 * 1024**2
    assert config.server.command_timeout == 300.0
    assert config.server.data_timeout == 600.0
    assert config.server.tls is None
    assert (config.upstream.host, config.upstream.port) == ("127.0.0.1", 10026)
    assert config.delivery.retry_initial == 60.0
    assert config.delivery.lifetime == 5 * 86400.0
    assert config.store.data_dir == Path("/var/lib/smtpguard")
    assert config.store.min_free_disk == 512 * 1024**2


def test_when_minimal_config_then_defaults_fill_the_rest(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.server.allowed_clients == (ipaddress.ip_network("127.0.0.0/8"),)
    assert config.server.listen == HostPort(host="127.0.0.1", port=10025)
    assert config.server.max_message_size == 50 * 1024**2
    assert config.upstream.username is None


# -- bad input: the right line and a clear reason ------------------------------------------


BAD_INPUTS = [
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
        parse:
          worker_nice: 20  # <-
        """,
        r"^parse\.worker_nice: .*19",
        id="worker-nice-past-19",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
        detectorz: {}  # <-
        """,
        r"^detectorz: unknown key \(not a smtpguard setting; check the spelling\)$",
        id="unknown-top-level-key",
    ),
    pytest.param(
        """\
        # a comment first, so the line is not simply 1
        server: {allowed_clients: [127.0.0.0/8], max_sesions: 5}  # <-
        """,
        r"^server\.max_sesions: unknown key",
        id="misspelt-nested-key-flow-style",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          max_sesions: 5  # <-
        """,
        r"^server\.max_sesions: unknown key",
        id="misspelt-nested-key-block-style",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          tls:
            certificate: smtpguard.yaml  # any readable file will do here
            key: smtpguard.yaml
            requre: true  # <-
        """,
        r"^server\.tls\.requre: unknown key",
        id="misspelt-key-two-deep",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          max_recipients: many  # <-
        """,
        r"^server\.max_recipients: Input should be a valid integer",
        id="wrong-type-int",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          max_recipients: 1.5  # <-
        """,
        r"^server\.max_recipients: Input should be a valid integer",
        id="wrong-type-fraction",
    ),
    pytest.param(
        """\
        server: 5  # <-
        """,
        r"^server: Input should be a valid dictionary",
        id="section-not-a-mapping",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: 127.0.0.0/8  # <-
        """,
        r"^server\.allowed_clients: Input should be a valid tuple",
        id="allowlist-not-a-list",
    ),
    pytest.param(
        """\
        server:
          allowed_clients:
            - 127.0.0.0/8
            - 10.0.0.300/8  # <-
        """,
        r"^server\.allowed_clients\.1: not a CIDR network: '10\.0\.0\.300/8'",
        id="bad-cidr",
    ),
    pytest.param(
        """\
        server:
          allowed_clients:
            - 10.0.0.1/8  # <-
            - ::1/128
        """,
        r"^server\.allowed_clients\.0: not a CIDR network: '10\.0\.0\.1/8' .*host bits set",
        id="cidr-with-host-bits",
    ),
    pytest.param(
        """\
        server:
          allowed_clients:
            - ::1/128
            - 2001:db8::1/32  # <-
        """,
        r"^server\.allowed_clients\.1: not a CIDR network: .*host bits set",
        id="v6-cidr-with-host-bits",
    ),
    pytest.param(
        """\
        server:
          allowed_clients:
            - ::1/128
            - 127.0.0.0/33  # <-
        """,
        r"^server\.allowed_clients\.1: not a CIDR network",
        id="prefix-too-long",
    ),
    pytest.param(
        """\
        server:
          allowed_clients:
            - ::1/128
            - localhost  # <-
        """,
        r"^server\.allowed_clients\.1: not a CIDR network: 'localhost'",
        id="host-name-not-cidr",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          max_message_size: 50 parsecs  # <-
        """,
        r"^server\.max_message_size: not a size: '50 parsecs' \(write e\.g\. 50MB",
        id="bad-size",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
        store:
          min_free_disk: 0  # <-
        """,
        r"^store\.min_free_disk: Input should be greater than 0",
        id="zero-size",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          command_timeout: 5 fortnights  # <-
        """,
        r"^server\.command_timeout: not a duration: '5 fortnights' \(write e\.g\. 30s",
        id="bad-duration",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
        delivery:
          retry_initial: 0s  # <-
        """,
        r"^delivery\.retry_initial: Input should be greater than 0",
        id="zero-duration",
    ),
    pytest.param(
        """\
        server:  # <-
          hostname: relay.example
        """,
        r"^server\.allowed_clients: required setting is missing$",
        id="missing-allowlist",
    ),
    pytest.param(
        """\
        logging:  # <-
          level: info
        """,
        r"^server: required setting is missing$",
        id="missing-server-section",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: []  # <-
        """,
        r"^server\.allowed_clients: .*at least 1 item",
        id="empty-allowlist",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          mode: sideways  # <-
        """,
        r"^server\.mode: Input should be 'after-queue' or 'before-queue'$",
        id="unknown-mode",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          listen: localhost  # <-
        """,
        r"^server\.listen: not HOST:PORT: 'localhost'$",
        id="listen-without-port",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
        upstream:
          port: 70000  # <-
        """,
        r"^upstream\.port: Input should be less than or equal to 65535$",
        id="port-out-of-range",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
        upstream:  # <-
          host: mail.council.example
          username: smtpguard
        """,
        r"^upstream: AUTH needs both username and password_file, or neither$",
        id="username-without-password-file",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
        logging:
          level: verbose  # <-
        """,
        r"^logging\.level: Input should be 'debug', 'info', 'warning' or 'error'$",
        id="unknown-log-level",
    ),
]


@pytest.mark.parametrize("text, expected", BAD_INPUTS)
def test_when_bad_input_then_one_problem_on_the_right_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    [(line, reason)] = problems_of(write(tmp_path, text))
    assert [line] == marked_lines(text)
    assert re.search(expected, reason), reason


def test_when_only_allowlist_entry_is_bad_then_only_that_entry_is_reported(
    tmp_path: Path,
) -> None:
    text = """\
        server:
          allowed_clients:
            - 10.0.0.300/8  # <-
        """
    [(line, reason)] = problems_of(write(tmp_path, text))
    assert [line] == marked_lines(text)
    assert "not a CIDR network" in reason


WRONG_TYPES_ACCEPTED = [
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          max_recipients: true  # <-
        """,
        id="bool-as-count",
    ),
    pytest.param(
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          max_sessions: yes  # <-
        """,
        id="yaml-yes-as-count",
    ),
    pytest.param(
        """\
        server:
          allowed_clients:
            - 10  # <-
        """,
        id="integer-as-network",
    ),
]


@pytest.mark.parametrize("text", WRONG_TYPES_ACCEPTED)
def test_when_wrong_type_that_coerces_then_refused(tmp_path: Path, text: str) -> None:
    [(line, _)] = problems_of(write(tmp_path, text))
    assert [line] == marked_lines(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("server:\n  allowed_clients: [127.0.0.0/8]\n  hostname: a: b\n", id="colon"),
        pytest.param("server:\n  allowed_clients: [127.0.0.0/8]\n\thostname: x\n", id="tab"),
        pytest.param(
            "server:\n  allowed_clients:\n    - 127.0.0.0/8\n   hostname: x\n", id="indent"
        ),
        pytest.param("server:\n  allowed_clients:\n    - 127.0.0.0/8\n  - 10.0.0.0/8\n", id="dash"),
    ],
)
def test_when_yaml_syntax_error_then_line_of_the_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "smtpguard.yaml"
    path.write_text(text, encoding="utf-8")
    [(line, reason)] = problems_of(path)
    assert line == len(text.splitlines())  # every case breaks on its last line
    assert reason.startswith("YAML syntax: ")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- server\n- upstream\n", id="list"),
        pytest.param("just some text\n", id="scalar"),
        pytest.param("", id="empty-file"),
        pytest.param("# nothing but a comment\n", id="only-comment"),
        pytest.param("42\n", id="number"),
    ],
)
def test_when_file_is_not_a_mapping_then_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "smtpguard.yaml"
    path.write_text(text, encoding="utf-8")
    assert problems_of(path) == [(1, "config must be a mapping of sections (server:, ...)")]


def test_when_config_path_does_not_exist_then_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "smtpguard.yaml"
    assert problems_of(path) == [(0, "cannot read config: No such file or directory")]


def test_when_config_path_is_a_folder_then_refused(tmp_path: Path) -> None:
    [(_, reason)] = problems_of(tmp_path)
    assert reason.startswith("cannot read config: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file whatever its mode")
def test_when_config_unreadable_then_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    assert problems_of(path) == [(0, "cannot read config: Permission denied")]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"server:\n  hostname: caf\xe9\n", id="latin-1"),
        pytest.param(b"\xff\xfe s\x00e\x00", id="utf-16-bom"),
        pytest.param(b"server:\n  allowed_clients: [127.0.0.0/8]\n\x80\n", id="stray-byte"),
    ],
)
def test_when_not_utf8_then_refused(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "smtpguard.yaml"
    path.write_bytes(raw)
    assert problems_of(path) == [(0, "config is not UTF-8 text")]


def test_when_several_problems_then_all_reported_each_on_its_line(tmp_path: Path) -> None:
    text = """\
        server:
          allowed_clients:
            - 127.0.0.0/8
            - 10.0.0.300/8  # <-
          max_recipients: many  # <-
          max_message_size: 50 parsecs  # <-
          colour: blue  # <-
        upstream:
          timeout: 5 fortnights  # <-
        store:
          max_queue: -1  # <-
        """
    problems = problems_of(write(tmp_path, text))
    assert sorted(line for line, _ in problems) == marked_lines(text)
    reasons = " | ".join(reason for _, reason in sorted(problems))
    for fragment in (
        "server.allowed_clients.1: not a CIDR network",
        "server.max_recipients: Input should be a valid integer",
        "server.max_message_size: not a size",
        "server.colour: unknown key",
        "upstream.timeout: not a duration",
        "store.max_queue: Input should be greater than or equal to 1",
    ):
        assert fragment in reasons


# -- files the config names ------------------------------------------------------------


TLS_CONFIG = """\
    server:
      allowed_clients: [127.0.0.0/8]
      tls:
        certificate: {certificate}  # <-certificate
        key: {key}  # <-key
    """


@pytest.mark.parametrize(
    "present, missing",
    [
        pytest.param(["key"], ["certificate"], id="certificate"),
        pytest.param(["certificate"], ["key"], id="key"),
        pytest.param([], ["certificate", "key"], id="both"),
    ],
)
def test_when_tls_file_missing_then_refused_with_its_line(
    tmp_path: Path, present: list[str], missing: list[str]
) -> None:
    names = {"certificate": "tls/relay.crt", "key": "tls/relay.key"}
    for name in present:
        (tmp_path / names[name]).parent.mkdir(exist_ok=True)
        (tmp_path / names[name]).write_text("-----BEGIN-----\n")
    text = TLS_CONFIG.format(**names)
    problems = problems_of(write(tmp_path, text))
    lines = textwrap.dedent(text).splitlines()
    assert problems == [
        (
            next(n for n, line in enumerate(lines, 1) if f"{MARK}{name}" in line),
            f"server.tls.{name}: no such file: {tmp_path / names[name]}",
        )
        for name in missing
    ]


@pytest.mark.parametrize(
    "setting",
    [
        pytest.param("ca_file: council-ca.pem", id="ca-file"),
        pytest.param("username: smtpguard\n  password_file: secret", id="password-file"),
    ],
)
def test_when_upstream_file_missing_then_refused(tmp_path: Path, setting: str) -> None:
    path = write(tmp_path, MINIMAL + "upstream:\n  " + setting + "\n")
    [(line, reason)] = problems_of(path)
    name, _, value = setting.splitlines()[-1].strip().partition(": ")
    assert line == len(path.read_text().splitlines())
    assert reason == f"upstream.{name}: no such file: {tmp_path / value}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file whatever its mode")
def test_when_tls_key_unreadable_then_refused(tmp_path: Path) -> None:
    (tmp_path / "relay.crt").write_text("cert\n")
    (tmp_path / "relay.key").write_text("key\n")
    (tmp_path / "relay.key").chmod(0)
    text = TLS_CONFIG.format(certificate="relay.crt", key="relay.key")
    [(line, reason)] = problems_of(write(tmp_path, text))
    assert line == 5
    assert reason == f"server.tls.key: file is not readable: {tmp_path / 'relay.key'}"


@pytest.mark.parametrize("certificate", ["tls", '""'])
def test_when_tls_certificate_is_a_folder_then_refused(tmp_path: Path, certificate: str) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "relay.key").write_text("key\n")
    text = TLS_CONFIG.format(certificate=certificate, key="relay.key")
    [(line, _)] = problems_of(write(tmp_path, text))
    assert line == 4


def test_when_missing_file_and_other_problems_then_all_reported(tmp_path: Path) -> None:
    text = """\
        server:
          allowed_clients: [127.0.0.0/8]
          max_recipients: many  # <-
          tls:
            certificate: missing.crt  # <-
            key: missing.key  # <-
        """
    problems = problems_of(write(tmp_path, text))
    assert sorted(line for line, _ in problems) == marked_lines(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            """\
            server:
              allowed_clients: [127.0.0.0/8]
            server:  # <-
              allowed_clients: [0.0.0.0/0]
            """,
            id="section",
        ),
        pytest.param(
            """\
            server:
              allowed_clients: [127.0.0.0/8]
              max_sessions: 5
              allowed_clients: [0.0.0.0/0]  # <-
            """,
            id="key",
        ),
    ],
)
def test_when_key_repeated_then_refused_on_the_repeat(tmp_path: Path, text: str) -> None:
    [(line, _)] = problems_of(write(tmp_path, text))
    assert [line] == marked_lines(text)


# -- sizes and durations -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("512KB", 512 * 1024),
        ("50MB", 50 * 1024**2),
        ("2GB", 2 * 1024**3),
        ("100B", 100),
        ("10 MB", 10 * 1024**2),
        ("50mb", 50 * 1024**2),
        ("1kb", 1024),
        ('"4096"', 4096),
        ("4096", 4096),
        ("1", 1),
    ],
)
def test_when_size_then_bytes(tmp_path: Path, text: str, expected: int) -> None:
    config = load_config(write(tmp_path, MINIMAL + f"  max_message_size: {text}\n"))
    assert config.server.max_message_size == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1.5MB", "not a size: '1.5MB'"),
        ("-5MB", "not a size: '-5MB'"),
        ("MB", "not a size: 'MB'"),
        ('""', "not a size: ''"),
        ("5 TB", "not a size: '5 TB'"),
        ("5MiB", "not a size: '5MiB'"),
        ("0", "Input should be greater than 0"),
        ("0MB", "Input should be greater than 0"),
    ],
)
def test_when_bad_size_then_refused(tmp_path: Path, text: str, expected: str) -> None:
    [(line, reason)] = problems_of(write(tmp_path, MINIMAL + f"  max_message_size: {text}\n"))
    assert line == 3
    assert reason.startswith(f"server.max_message_size: {expected}")


@pytest.mark.parametrize("text", ["5M", "512K", "1G", "5m"])
def test_when_size_unit_without_b_then_understood_or_refused_cleanly(
    tmp_path: Path, text: str
) -> None:
    path = write(tmp_path, MINIMAL + f"  max_message_size: {text}\n")
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert [p.line for p in exc.problems] == [3]
        return
    unit = {"K": 1024, "M": 1024**2, "G": 1024**3}[text[-1].upper()]
    assert config.server.max_message_size == int(text[:-1]) * unit


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("5d", 432_000.0),
        ("200ms", 0.2),
        ("1.5h", 5400.0),
        ("10 s", 10.0),
        ("45", 45.0),
        ("2.5", 2.5),
    ],
)
def test_when_duration_then_seconds(tmp_path: Path, text: str, expected: float) -> None:
    config = load_config(write(tmp_path, MINIMAL + f"  data_timeout: {text}\n"))
    assert config.server.data_timeout == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5 fortnights", "not a duration: '5 fortnights'"),
        ('"45"', "not a duration: '45'"),
        ("1h30m", "not a duration: '1h30m'"),
        ("-5s", "not a duration: '-5s'"),
        ("5w", "not a duration: '5w'"),
        ("s", "not a duration: 's'"),
        ("0s", "Input should be greater than 0"),
        ("0", "Input should be greater than 0"),
    ],
)
def test_when_bad_duration_then_refused(tmp_path: Path, text: str, expected: str) -> None:
    [(line, reason)] = problems_of(write(tmp_path, MINIMAL + f"  data_timeout: {text}\n"))
    assert line == 3
    assert reason.startswith(f"server.data_timeout: {expected}")


# -- relative paths -------------------------------------------------------------------------


def test_when_relative_paths_then_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc" / "smtpguard"
    (etc / "tls").mkdir(parents=True)
    for name in ("tls/relay.crt", "tls/relay.key", "ca.pem", "upstream-password"):
        (etc / name).write_text("x\n")
    write(
        etc,
        """\
        server:
          allowed_clients: [127.0.0.0/8]
          tls:
            certificate: tls/relay.crt
            key: ./tls/relay.key
        upstream:
          ca_file: ca.pem
          username: smtpguard
          password_file: upstream-password
        store:
          data_dir: ../../var/data
        """,
    )
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    for path in (etc / "smtpguard.yaml", Path("../../etc/smtpguard/smtpguard.yaml")):
        config = load_config(path)
        assert config.server.tls is not None
        assert config.server.tls.certificate.resolve() == (etc / "tls" / "relay.crt").resolve()
        assert config.server.tls.key.resolve() == (etc / "tls" / "relay.key").resolve()
        assert config.upstream.ca_file is not None
        assert config.upstream.ca_file.resolve() == (etc / "ca.pem").resolve()
        assert config.upstream.password_file is not None
        assert config.upstream.password_file.resolve() == (etc / "upstream-password").resolve()
        assert config.store.data_dir.is_absolute()
        assert config.store.data_dir.resolve() == (tmp_path / "var" / "data").resolve()


def test_when_absolute_paths_then_kept(tmp_path: Path) -> None:
    data = tmp_path / "abs-data"
    config = load_config(write(tmp_path / "conf", MINIMAL + f"store:\n  data_dir: {data}\n"))
    assert config.store.data_dir == data


# -- command-line overrides --------------------------------------------------------------

FULL = """\
server:
  allowed_clients: [127.0.0.0/8]
  listen: 127.0.0.1:10025
  mode: after-queue
upstream:
  host: mail.council.example
  port: 10026
store:
  data_dir: data
"""


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (Overrides(), ("127.0.0.1", 10025, "mail.council.example", 10026, "after-queue")),
        (
            Overrides(listen="127.0.0.1:0"),
            ("127.0.0.1", 0, "mail.council.example", 10026, "after-queue"),
        ),
        (
            Overrides(listen="[::1]:2525"),
            ("::1", 2525, "mail.council.example", 10026, "after-queue"),
        ),
        (
            Overrides(listen=" 0.0.0.0:25 "),
            ("0.0.0.0", 25, "mail.council.example", 10026, "after-queue"),
        ),
        (
            Overrides(upstream="127.0.0.1:2526"),
            ("127.0.0.1", 10025, "127.0.0.1", 2526, "after-queue"),
        ),
        (
            Overrides(upstream="[2001:db8::25]:587"),
            ("127.0.0.1", 10025, "2001:db8::25", 587, "after-queue"),
        ),
        (
            Overrides(mode="before-queue"),
            ("127.0.0.1", 10025, "mail.council.example", 10026, "before-queue"),
        ),
        (
            Overrides(listen="[::]:10025", upstream="relay.example:25", mode="before-queue"),
            ("::", 10025, "relay.example", 25, "before-queue"),
        ),
    ],
)
def test_when_overrides_then_they_take_precedence(
    tmp_path: Path, overrides: Overrides, expected: tuple[str, int, str, int, str]
) -> None:
    config = load_config(write(tmp_path, FULL), overrides)
    assert (
        config.server.listen.host,
        config.server.listen.port,
        config.upstream.host,
        config.upstream.port,
        config.server.mode,
    ) == expected
    assert config.server.allowed_clients == (ipaddress.ip_network("127.0.0.0/8"),)


def test_when_data_dir_overridden_then_it_wins_and_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "conf", FULL)
    assert load_config(path).store.data_dir == tmp_path / "conf" / "data"
    assert load_config(path, Overrides(data_dir=tmp_path / "x")).store.data_dir == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    # a relative --data-dir is relative to where the command runs, like any CLI path
    assert load_config(path, Overrides(data_dir=Path("rel"))).store.data_dir == tmp_path / "rel"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (Overrides(listen="localhost"), "command line: not HOST:PORT: 'localhost'"),
        (Overrides(listen="127.0.0.1"), "command line: not HOST:PORT: '127.0.0.1'"),
        (Overrides(listen="::1:25"), "command line: not HOST:PORT: '::1:25'"),
        (Overrides(listen="127.0.0.1:port"), "command line: not HOST:PORT"),
        (Overrides(listen="127.0.0.1:70000"), "command line: "),
        (Overrides(upstream="mail.example"), "command line: not HOST:PORT: 'mail.example'"),
        (Overrides(upstream="[::1]"), "command line: not HOST:PORT: '[::1]'"),
        (Overrides(mode="sideways"), "command line: unknown mode 'sideways'"),
        (Overrides(mode="AFTER-QUEUE"), "command line: unknown mode 'AFTER-QUEUE'"),
    ],
)
def test_when_bad_override_then_config_error(
    tmp_path: Path, overrides: Overrides, expected: str
) -> None:
    path = write(tmp_path, FULL)
    [(_, reason)] = problems_of(path, overrides)
    assert reason.startswith(expected)


def test_when_upstream_override_has_port_0_then_refused_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    problems_of(path, Overrides(upstream="127.0.0.1:0"))


def test_when_file_invalid_then_overrides_do_not_hide_it(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  allowed_clients: []\n")
    [(line, _)] = problems_of(path, Overrides(listen="127.0.0.1:0", mode="before-queue"))
    assert line == 2


def test_when_alias_contains_itself_then_refused_not_crashed(tmp_path: Path) -> None:
    path = tmp_path / "smtpguard.yaml"
    path.write_text(
        "server: &loop\n  allowed_clients: [127.0.0.0/8]\n  nested: *loop\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_when_a_key_is_a_list_then_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "smtpguard.yaml"
    path.write_text("server:\n  allowed_clients: [127.0.0.0/8]\n? [a, b]\n: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}:3: a key must be a plain name" in str(caught.value)


def test_when_processes_then_sessions_are_shared_between_them(tmp_path: Path) -> None:
    from smtpguard.listen import listener_settings

    text = "server:\n  allowed_clients: [127.0.0.0/8]\n  processes: 3\n  max_sessions: 100\n"
    config = load_config(write(tmp_path, text))
    assert config.server.processes == 3
    assert listener_settings(config.server).max_sessions == 34  # 3 x 34 >= 100


@pytest.mark.parametrize("count", ["0", "65", "two"])
def test_when_processes_out_of_range_then_refused(tmp_path: Path, count: str) -> None:
    text = f"server:\n  allowed_clients: [127.0.0.0/8]\n  processes: {count}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert "processes" in str(caught.value)


def test_when_metrics_with_several_processes_then_refused(tmp_path: Path) -> None:
    text = (
        "server:\n  allowed_clients: [127.0.0.0/8]\n  processes: 2\n"
        "metrics:\n  listen: 127.0.0.1:0\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert "metrics.listen needs server.processes: 1" in str(caught.value)
