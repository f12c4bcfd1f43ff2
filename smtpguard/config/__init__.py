"""Loading and validating smtpguard.yaml.

An administrator who gets the config wrong must be told where: every problem
is reported as `file:line: reason`, and the relay refuses to start (or, on
SIGHUP, keeps the config it has).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from smtpguard.config.model import (
    Config,
    DeliveryConfig,
    HostPort,
    ListenerTLS,
    LoggingConfig,
    ServerConfig,
    StoreConfig,
    UpstreamConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "DeliveryConfig",
    "HostPort",
    "ListenerTLS",
    "LoggingConfig",
    "Overrides",
    "ServerConfig",
    "StoreConfig",
    "UpstreamConfig",
    "default_config_path",
    "load_config",
]

SYSTEM_CONFIG = Path("/etc/smtpguard/smtpguard.yaml")
PROJECT_CONFIG = Path("config/smtpguard.yaml")


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class ConfigError(Exception):
    """The configuration cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Overrides:
    """Command-line flags that take precedence over the file."""

    listen: str | None = None
    upstream: str | None = None
    data_dir: Path | None = None
    mode: str | None = None


def default_config_path() -> Path:
    """`SMTPGUARD_CONFIG`, then the system path, then the project's example."""
    env = os.environ.get("SMTPGUARD_CONFIG")
    if env:
        return Path(env)
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return PROJECT_CONFIG


class _LineLoader(yaml.SafeLoader):
    """Safe YAML loading; the node tree is kept to map errors back to lines."""


def _compose(path: Path) -> yaml.Node | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(path, 0, f"cannot read config: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(path, 0, "config is not UTF-8 text")]) from None
    try:
        return yaml.compose(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError([Problem(path, line, f"YAML syntax: {exc.problem}")]) from None


def _duplicate_keys(
    node: yaml.Node | None, path: Path, visited: set[int] | None = None
) -> list[Problem]:
    """YAML lets a later key silently replace an earlier one; in a config that hides mistakes.

    An alias is the same node object again: each node is walked once, so an alias
    that contains itself cannot recurse forever.
    """
    visited = set() if visited is None else visited
    if node is None or id(node) in visited:
        return []
    visited.add(id(node))
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                reason = "a key must be a plain name, not a list or map"
                problems.append(Problem(path, line, reason))
                continue
            if key_node.value in seen:
                line = key_node.start_mark.line + 1
                problems.append(Problem(path, line, f"{key_node.value}: key given twice"))
            seen.add(key_node.value)
            problems += _duplicate_keys(value_node, path, visited)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            problems += _duplicate_keys(item, path, visited)
    return problems


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """Line of the deepest node along a pydantic error location."""
    line = node.start_mark.line + 1 if node is not None else 0
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == key:
                    node = value_node
                    line = key_node.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return line
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (not a smtpguard setting; check the spelling)"
    if error["type"] == "missing":
        message = "required setting is missing"
    return f"{where}: {message}" if where else message


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path)


# Settings that name a file the relay must be able to read.
U = TypeVar("U", bound=UpstreamConfig)

_FILE_SETTINGS = (
    ("upstream", "ca_file"),
    ("upstream", "password_file"),
    ("server", "tls", "certificate"),
    ("server", "tls", "key"),
    ("detect", "edm", "key_file"),
    ("store", "encryption", "key_file"),
    ("store", "dsn_file"),
    ("council", "domains"),
    ("council", "staff"),
    ("policy", "file"),
)


def _check_files(data: dict[str, Any], node: yaml.Node | None, source: Path) -> list[Problem]:
    """Files the config names must be readable now, not at first use.

    Read from the raw YAML, so a missing file is reported together with any
    other problem in the same file.
    """
    problems = []
    for loc in _FILE_SETTINGS:
        value: Any = data
        for key in loc:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str):
            continue  # absent, or the wrong type: validation reports that
        path = _resolve(source.parent.absolute(), Path(value))
        if path.is_file() and os.access(path, os.R_OK):
            continue
        if not path.exists():
            reason = "no such file"
        elif not path.is_file():
            reason = "not a file"
        else:
            reason = "file is not readable"
        problems.append(Problem(source, _line_of(node, loc), f"{'.'.join(loc)}: {reason}: {path}"))
    return problems


def _resolved_upstream(upstream: U, base: Path) -> U:
    return upstream.model_copy(
        update={
            "ca_file": upstream.ca_file and _resolve(base, upstream.ca_file),
            "password_file": upstream.password_file and _resolve(base, upstream.password_file),
        }
    )


def _with_resolved_paths(config: Config, base: Path) -> Config:
    upstream = _resolved_upstream(config.upstream, base)
    tls = config.server.tls
    if tls is not None:
        tls = tls.model_copy(
            update={
                "certificate": _resolve(base, tls.certificate),
                "key": _resolve(base, tls.key),
            }
        )
    server = config.server.model_copy(update={"tls": tls})
    encryption = config.store.encryption
    if encryption is not None:
        encryption = encryption.model_copy(
            update={
                "key_file": _resolve(base, encryption.key_file),
                "old_key_files": tuple(_resolve(base, p) for p in encryption.old_key_files),
            }
        )
    store = config.store.model_copy(
        update={
            "data_dir": _resolve(base, config.store.data_dir),
            "encryption": encryption,
            "dsn_file": config.store.dsn_file and _resolve(base, config.store.dsn_file),
        }
    )
    detect = config.detect
    detect = detect.model_copy(
        update={
            "keywords": detect.keywords and tuple(_resolve(base, p) for p in detect.keywords),
            "edm": detect.edm
            and detect.edm.model_copy(
                update={
                    "key_file": detect.edm.key_file and _resolve(base, detect.edm.key_file),
                    "registers": tuple(_resolve(base, p) for p in detect.edm.registers),
                    "exports": {
                        kind: tuple(_resolve(base, p) for p in paths)
                        for kind, paths in detect.edm.exports.items()
                    },
                }
            ),
        }
    )
    council = config.council.model_copy(
        update={
            "domains": config.council.domains and _resolve(base, config.council.domains),
            "staff": config.council.staff and _resolve(base, config.council.staff),
        }
    )
    policy = config.policy.model_copy(
        update={
            "file": config.policy.file and _resolve(base, config.policy.file),
            "routes": {
                name: _resolved_upstream(route, base)
                for name, route in config.policy.routes.items()
            },
        }
    )
    return config.model_copy(
        update={
            "server": server,
            "upstream": upstream,
            "store": store,
            "detect": detect,
            "council": council,
            "policy": policy,
        }
    )


def _apply(config: Config, overrides: Overrides, source: Path) -> Config:
    server_update: dict[str, Any] = {}
    upstream_update: dict[str, Any] = {}
    store_update: dict[str, Any] = {}
    try:
        if overrides.listen:
            server_update["listen"] = HostPort.parse(overrides.listen)
        if overrides.upstream:
            target = HostPort.parse(overrides.upstream)
            upstream_update = {"host": target.host, "port": target.port}
    except ValueError as exc:
        raise ConfigError([Problem(source, 0, f"command line: {exc}")]) from None
    if overrides.mode:
        if overrides.mode not in ("after-queue", "before-queue"):
            raise ConfigError(
                [Problem(source, 0, f"command line: unknown mode {overrides.mode!r}")]
            )
        server_update["mode"] = overrides.mode
    if overrides.data_dir:
        store_update["data_dir"] = overrides.data_dir.absolute()
    data = config.model_dump()
    data["server"].update(server_update)
    data["upstream"].update(upstream_update)
    data["store"].update(store_update)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [Problem(source, 0, f"command line: {_describe(e)}") for e in exc.errors()]
        raise ConfigError(problems) from None


def load_config(path: Path, overrides: Overrides | None = None) -> Config:
    """Read, validate and resolve a config file; raise ConfigError with every problem."""
    node = _compose(path)
    duplicates = _duplicate_keys(node, path)
    if duplicates:
        raise ConfigError(duplicates)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if node else None
    if not isinstance(data, dict):
        raise ConfigError([Problem(path, 1, "config must be a mapping of sections (server:, ...)")])
    file_problems = _check_files(data, node, path)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # An invalid entry also leaves a list too short; the entry's own error says it all.
        item_errors = {
            tuple(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)
        }
        problems = [
            Problem(path, _line_of(node, tuple(err["loc"])), _describe(err))
            for err in errors
            if not (err["type"] == "too_short" and tuple(err["loc"]) in item_errors)
        ]
        raise ConfigError(sorted(problems + file_problems, key=lambda p: p.line)) from None
    if file_problems:
        raise ConfigError(file_problems)
    config = _with_resolved_paths(config, path.parent.absolute())
    _check_spool_keys(config, node, path)
    _check_detectors(config, node, path)
    return _apply(config, overrides or Overrides(), path)


def _check_spool_keys(config: Config, node: yaml.Node | None, source: Path) -> None:
    """Spool keys are checked now: a key others can read is refused before any mail is written."""
    from smtpguard.spool.cipher import SpoolKeyError, read_spool_key

    encryption = config.store.encryption
    if encryption is None:
        return
    settings: list[tuple[tuple[str | int, ...], Path]] = [(("key_file",), encryption.key_file)]
    settings += [(("old_key_files", i), p) for i, p in enumerate(encryption.old_key_files)]
    problems = []
    for loc, key_path in settings:
        try:
            read_spool_key(key_path)
        except SpoolKeyError as exc:
            line = _line_of(node, ("store", "encryption", *loc))
            problems.append(Problem(source, line, f"store.encryption.{loc[0]}: {exc}"))
    if problems:
        raise ConfigError(problems)


def _check_detectors(config: Config, node: yaml.Node | None, source: Path) -> None:
    """Dictionaries, registers and the policy are read now, not at the first mail."""
    from smtpguard.decide.decider import Decider
    from smtpguard.decide.policy import PolicyError
    from smtpguard.detect.registry import configured_detectors

    try:
        configured_detectors(config.detect)
    except ValueError as exc:
        line = _line_of(node, ("detect",))
        raise ConfigError([Problem(source, line, f"detect: {exc}")]) from None
    try:
        Decider.from_config(config)
    except PolicyError as exc:
        raise ConfigError(list(exc.problems)) from None
    except ValueError as exc:
        line = _line_of(node, ("council",))
        raise ConfigError([Problem(source, line, f"council: {exc}")]) from None
