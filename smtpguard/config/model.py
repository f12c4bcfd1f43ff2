"""The shape of smtpguard.yaml.

Every section forbids unknown keys so that a misspelt option is an error at
start, not a silently ignored setting. Values an administrator writes by hand
(sizes, durations, CIDRs, host:port) accept the human spellings.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from smtpguard.parse.model import Limits

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1024,
    "M": 1024**2,
    "MB": 1024**2,
    "G": 1024**3,
    "GB": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_size(value: object) -> object:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]?B?)\s*", value.upper())
        if not match:
            raise ValueError(f"not a size: {value!r} (write e.g. 50MB, 512KB or a byte count)")
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    return value


def _parse_duration(value: object) -> object:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 5m, 2h or 5d)")
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return value


def _parse_network(value: object) -> object:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a CIDR network: {value!r} (write it as text, e.g. 10.0.0.0/8)")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"not a CIDR network: {value!r} ({exc})") from None


# Strict: YAML's `true` or `yes` must not become the count 1.
Count = Annotated[int, Field(strict=True)]
Size = Annotated[int, BeforeValidator(_parse_size), Field(gt=0, strict=True)]
Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]
SecondsOrOff = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_parse_network)]


class HostPort(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    port: int = Field(ge=0, le=65535)

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Read `host:port`, `[v6]:port`."""
        match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
        if not match:
            raise ValueError(f"not HOST:PORT: {text!r}")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        return cls(host=host, port=port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_hostport(value: object) -> object:
    if isinstance(value, str):
        return HostPort.parse(value)
    return value


Endpoint = Annotated[HostPort, BeforeValidator(_parse_hostport)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenerTLS(_Section):
    """STARTTLS on the listener: offered when a certificate is set."""

    certificate: Path
    key: Path
    require: bool = False


class ServerConfig(_Section):
    hostname: str = "smtpguard.localdomain"
    listen: Endpoint = HostPort(host="127.0.0.1", port=10025)
    mode: Literal["after-queue", "before-queue"] = "after-queue"
    allowed_clients: tuple[Network, ...] = Field(min_length=1)
    max_message_size: Size = 50 * 1024**2
    max_recipients: Count = Field(default=100, ge=1)
    max_sessions: Count = Field(default=100, ge=1)
    command_timeout: Seconds = 300.0
    data_timeout: Seconds = 600.0
    drain_timeout: Seconds = 30.0
    tls: ListenerTLS | None = None
    # Relay processes sharing the listening socket (one event loop uses one core): for
    # machines with cores to spare; on a 2-core machine two were no faster (README).
    processes: Count = Field(default=1, ge=1, le=64)
    # A process of its own reads, decides and delivers what the `processes` above
    # store: they only write each message durably and answer 250, so a burst is taken
    # at the rate the disk allows while reading uses another core (README "Using every
    # core"). After-queue mode and the SQLite store only.
    reading_process: bool = False
    # Received mail waiting to be read, and read mail waiting for a delivery task, is
    # kept in memory up to this many bytes (each); past it, it waits in the store and is
    # read back in turn, so a long burst of large mail cannot exhaust the memory.
    max_waiting_memory: Size = 256 * 1024**2
    # Flow control, as Postfix's in_flow_delay: while reading is behind (the oldest
    # unread message has waited more than `max_unread_wait`, or more than
    # `max_unscanned` messages are unread), each new MAIL waits up to `flow_delay` for a
    # message to be read, so a relay that keeps accepting faster than it reads slows the
    # sender instead of piling up mail; a burst shorter than `max_unread_wait` is taken
    # at full speed (flow_delay 0 turns it off; `store.max_queue` remains the hard stop).
    max_unread_wait: Seconds = 30.0
    max_unscanned: Count = Field(default=10_000, ge=1)
    flow_delay: SecondsOrOff = 1.0


class UpstreamConfig(_Section):
    host: str = "127.0.0.1"
    port: Count = Field(default=10026, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    verify_certificate: bool = True
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    timeout: Seconds = 60.0
    max_connections: Count = Field(default=10, ge=1, le=1000)
    reuse_connections: bool = True
    idle_timeout: Seconds = 30.0
    helo_name: str | None = None

    @model_validator(mode="after")
    def _auth_needs_both(self) -> UpstreamConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("AUTH needs both username and password_file, or neither")
        return self


class DeliveryConfig(_Section):
    retry_initial: Seconds = 60.0
    retry_max: Seconds = 3600.0
    lifetime: Seconds = 5 * 86400.0
    postmaster: str = "postmaster@localhost"
    poll_interval: Seconds = 5.0


class SpoolEncryptionConfig(_Section):
    """Encryption at rest of spool files (held mail can sit on the relay for weeks).

    New files are encrypted under `key_file`; `old_key_files` are only read,
    so files written under a previous key stay readable until
    `smtpguard spool rekey` has rewritten them. Read at start: a new key
    takes effect at restart, not on SIGHUP.
    """

    key_file: Path
    old_key_files: tuple[Path, ...] = ()


class StoreConfig(_Section):
    """Where messages are kept: SQLite beside a spool folder (one relay), or PostgreSQL
    (several relays sharing one database; message bytes in the database too)."""

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    data_dir: Path = Path("/var/lib/smtpguard")
    # PostgreSQL: a libpq URL (postgresql://user@host:5432/db), or a file holding one, so
    # that a password stays out of the config. repr=False: never printed with the config.
    dsn: str | None = Field(default=None, repr=False)
    dsn_file: Path | None = None
    min_free_disk: Size = 512 * 1024**2
    max_queue: Count = Field(default=50_000, ge=1)
    encryption: SpoolEncryptionConfig | None = None

    @model_validator(mode="after")
    def _postgresql_needs_a_dsn(self) -> StoreConfig:
        if self.dsn is not None and self.dsn_file is not None:
            raise ValueError("give dsn or dsn_file, not both")
        if self.backend == "postgresql" and self.dsn is None and self.dsn_file is None:
            raise ValueError("backend postgresql needs dsn (a libpq URL) or dsn_file")
        return self


class ParseConfig(_Section):
    """How much work one message may cause, and how many processes do it."""

    workers: Count = Field(default=2, ge=1, le=64)
    worker_memory: Size = 2 * 1024**3
    # Added to the workers' nice value: where parsing and the relay's event loop share
    # a core, taking and delivering mail goes first and reading takes the rest. After-queue
    # mode only: before-queue, each reply waits for its own message to be read.
    worker_nice: int = Field(default=10, ge=0, le=19)
    max_depth: Count = Field(default=8, ge=1, le=50)
    max_archive_members: Count = Field(default=1000, ge=1)
    max_extracted_bytes: Size = 200 * 1024**2
    max_part_bytes: Size = 64 * 1024**2
    max_ratio: float = Field(default=100.0, gt=1)
    part_timeout: Seconds = 20.0
    message_timeout: Seconds = 60.0

    def limits(self) -> Limits:
        return Limits(
            max_depth=self.max_depth,
            max_archive_members=self.max_archive_members,
            max_extracted_bytes=self.max_extracted_bytes,
            max_part_bytes=self.max_part_bytes,
            max_ratio=self.max_ratio,
            part_seconds=self.part_timeout,
            message_seconds=self.message_timeout,
        )


DETECTOR_NAMES = frozenset(
    {
        "nhs_number",
        "chi_number",
        "ni_number",
        "postcode",
        "payment_card",
        "bank_account",
        "phone_number",
        "date_of_birth",
        "email_addresses",
        "protective_marking",
        "encryption_request",
        "keywords",
        "case_reference",
        "edm_person",
        "edm_protected_address",
        "bulk_identifiers",
    }
)


def _detector_name(value: object) -> object:
    if isinstance(value, str) and value not in DETECTOR_NAMES:
        known = ", ".join(sorted(DETECTOR_NAMES))
        raise ValueError(f"no detector named {value!r} (known: {known})")
    return value


DetectorName = Annotated[str, BeforeValidator(_detector_name)]


def _regex(value: object) -> object:
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {value!r} ({exc})") from None
    return value


Pattern = Annotated[str, BeforeValidator(_regex)]


EdmKind = Literal["cases", "case_parties", "protected_addresses"]


def _one_or_more(value: object) -> object:
    return (value,) if isinstance(value, str) else value


Files = Annotated[tuple[Path, ...], BeforeValidator(_one_or_more)]


class EdmConfig(_Section):
    """Exact data match against the council's registers.

    `registers` (hashed by `smtpguard edm build`, read with `key_file`) keep the
    council's people and addresses off the relay: the production form.
    `exports` (the CSVs themselves, hashed in memory at start and whenever a
    file changes) suit a relay that may hold the export anyway, and the example
    council, whose fictional registers ship with the config.
    """

    key_file: Path | None = None
    registers: tuple[Path, ...] = ()
    exports: dict[EdmKind, Files] = {}

    @model_validator(mode="after")
    def _something_to_match(self) -> EdmConfig:
        if not self.registers and not self.exports:
            raise ValueError("give registers (with key_file) or exports")
        if self.registers and self.key_file is None:
            raise ValueError("registers need the key_file they were hashed under")
        if any(not paths for paths in self.exports.values()):
            raise ValueError("every export kind needs at least one CSV file")
        return self


class BulkConfig(_Section):
    # This many distinct personal identifiers in one message is a caseload, not a letter.
    min_distinct: Count = Field(default=20, ge=2)


class MarkingsConfig(_Section):
    """The council's own protective markings and Microsoft 365 sensitivity labels."""

    # Marking words of the council's own, found like OFFICIAL-SENSITIVE.
    extra: tuple[str, ...] = ()
    # Label name (as in msip_labels' _Name) or label GUID -> the marking it means.
    labels: dict[str, str] = {}


class DetectConfig(_Section):
    """Which detectors run and the council's own data for them."""

    disabled: tuple[DetectorName, ...] = ()
    # Keyword dictionaries; unset: the ones shipped in config/keywords.
    keywords: tuple[Path, ...] | None = None
    # Case reference formats, each with named groups `prefix` and `number`; unset: CS-/AS-nnnnnn.
    case_references: tuple[Pattern, ...] | None = Field(default=None, min_length=1)
    markings: MarkingsConfig = MarkingsConfig()
    bulk: BulkConfig = BulkConfig()
    edm: EdmConfig | None = None


class CouncilConfig(_Section):
    """The council's own registers, in the example council's CSV formats."""

    # domain,group: internal, secure, partner, webmail, obsolete, ... (`*.` for subdomains)
    domains: Path | None = None
    # email,name,team,review_role,login: who sends as which team, who reviews.
    staff: Path | None = None


_ROUTE_NAME = re.compile(r"[a-z][a-z0-9-]*")


class RouteConfig(UpstreamConfig):
    """A named next hop. `secure: true` says the hop is itself the secure channel (an
    encryption gateway, a listener that delivers only over verified TLS), so copies
    that must go by verified TLS may go through it."""

    secure: bool = False


class PolicyConfig(_Section):
    """The rules, and the named next hops a `route` rule may send mail through."""

    file: Path | None = None
    routes: dict[str, RouteConfig] = {}
    # A route whose next hop enforces verified TLS onward (a Postfix listener with
    # smtp_tls_security_level=verify): `require_tls` copies go there when the
    # upstream itself does not verify TLS. Without it, such copies are held.
    tls_route: str | None = None
    # Where rules that `notify: [reviewers]` send their notice (a shared mailbox).
    reviewers: str | None = None

    @model_validator(mode="after")
    def _route_names(self) -> PolicyConfig:
        for name in self.routes:
            if not _ROUTE_NAME.fullmatch(name):
                raise ValueError(f"route name {name!r}: lower-case letters, digits and hyphens")
        if self.tls_route is not None and self.tls_route not in self.routes:
            raise ValueError(f"tls_route {self.tls_route!r} is not one of the routes")
        if self.tls_route is not None and not self.routes[self.tls_route].secure:
            raise ValueError(f"tls_route {self.tls_route!r} must be a route marked secure: true")
        return self


class ReviewConfig(_Section):
    """How long held mail waits for reviewers, and how they are told about it."""

    # A quarantined copy nobody reviews is refused (with a notice to its sender)
    # after this long: two weeks, so that a weekend or a bank holiday never lapses one.
    retention: Seconds = 14 * 86400.0
    # Reviewers are reminded of holds this close to expiry (once per message).
    remind_before: Seconds = 2 * 86400.0
    # "each": a notice per hold (rules with notify: [reviewers]); "digest": one
    # notice listing the holds of each digest_interval.
    reviewer_notices: Literal["each", "digest"] = "each"
    digest_interval: Seconds = 3600.0
    # How often the relay looks for holds to expire and reminders to send.
    check_interval: Seconds = 60.0
    # `quarantine release` waits this long to say whether the upstream took the message.
    release_wait: Seconds = 60.0

    @model_validator(mode="after")
    def _remind_before_expiry(self) -> ReviewConfig:
        if self.remind_before >= self.retention:
            raise ValueError("remind_before must be shorter than retention")
        return self


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _loopback_port(value: object) -> object:
    """A bare port (`9125`, `":9125"`) means that port on loopback."""
    if isinstance(value, int) and not isinstance(value, bool):
        return HostPort(host="127.0.0.1", port=value)
    if isinstance(value, str) and re.fullmatch(r"\s*:?\d+\s*", value):
        return HostPort(host="127.0.0.1", port=int(value.strip().lstrip(":")))
    return value


class MetricsConfig(_Section):
    """Prometheus `/metrics` and a `/healthz` check over HTTP, off unless `listen` is set.

    The page has no authentication and tells anyone who can read it how much
    sensitive mail the council sends, so it listens on loopback unless
    `allow_remote` says otherwise (put a scraper or a TLS proxy beside it).
    """

    # Declared first: the check on `listen` reads it.
    allow_remote: bool = False
    listen: Endpoint | None = None

    @field_validator("listen", mode="before")
    @classmethod
    def _bare_port(cls, value: object) -> object:
        return _loopback_port(value)

    @field_validator("listen")
    @classmethod
    def _loopback_unless_allowed(cls, value: HostPort | None, info: ValidationInfo) -> object:
        if value is not None and not info.data.get("allow_remote") and not _is_loopback(value.host):
            raise ValueError(
                f"{value} is not a loopback address: metrics have no authentication;"
                " set allow_remote: true to listen there anyway"
            )
        return value


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section):
    server: ServerConfig
    upstream: UpstreamConfig = UpstreamConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    store: StoreConfig = StoreConfig()
    parse: ParseConfig = ParseConfig()
    detect: DetectConfig = DetectConfig()
    council: CouncilConfig = CouncilConfig()
    policy: PolicyConfig = PolicyConfig()
    review: ReviewConfig = ReviewConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _metrics_need_one_process(self) -> Config:
        server = self.server
        if self.metrics.listen is not None and server.processes > 1 and not server.reading_process:
            raise ValueError(
                "metrics.listen needs server.processes: 1, or server.reading_process (each"
                " process would count only the mail it relayed itself)"
            )
        return self

    @model_validator(mode="after")
    def _reading_process_after_queue_on_sqlite(self) -> Config:
        if self.server.reading_process and self.server.mode != "after-queue":
            raise ValueError(
                "server.reading_process needs server.mode: after-queue (before-queue, each"
                " reply waits for its own message to be read)"
            )
        if self.server.reading_process and self.store.backend != "sqlite":
            raise ValueError("server.reading_process needs store.backend: sqlite")
        return self
