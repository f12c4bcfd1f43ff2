"""One message through parse -> detect -> decide: the whole scan, no side effects.

The relay runs `read_message` (parse and detect) in its worker processes and
decides in its own process; `inspect_message` does all three here, for
`smtpguard scan` and tests.
"""

from __future__ import annotations

from smtpguard.config.model import Config, DetectConfig
from smtpguard.decide import Verdict
from smtpguard.decide.decider import Decider, Reading
from smtpguard.decide.domains import DomainGroups
from smtpguard.decide.facts import Attachment
from smtpguard.detect import Detection, detect_message, detect_with
from smtpguard.envelope import Envelope
from smtpguard.parse import Document, Limits, parse_message
from smtpguard.parse.pool import unreadable_message


def read_message(raw: bytes, limits: Limits, settings: DetectConfig | None = None) -> Reading:
    """Parse and detect; with `settings`, the detectors that config asks for."""
    document = parse_message(raw, limits)
    return _reading(document, _detection(document, settings))


def _detection(document: Document, settings: DetectConfig | None) -> Detection:
    return detect_message(document) if settings is None else detect_with(document, settings)


def _reading(document: Document, detection: Detection) -> Reading:
    return Reading(
        document.subject,
        document.headers,
        attachments_of(document),
        detection.findings,
        detection.cases,
    )


def attachments_of(document: Document) -> tuple[Attachment, ...]:
    """Every part but the body and its alternatives, as policy sees attachments."""
    return tuple(
        Attachment(part.path, part.kind, part.size, frozenset(part.flags))
        for part in document.parts
        if part.path.startswith("attachment:") or part.kind == "uninspectable"
    )


def unreadable_reading(reason: str, size: int) -> Reading:
    """A message no worker could read: one uninspectable part, and its finding."""
    document = unreadable_message(reason, size)
    return _reading(document, detect_message(document, ()))


def inspect_message(
    raw: bytes,
    envelope: Envelope,
    config: Config | None = None,
    correspondents: frozenset[str] = frozenset(),
) -> Verdict:
    """The whole scan in this process: the config's limits, detectors, registers and policy
    (without a config: default limits and detectors, no policy, everyone passes)."""
    if config is None:
        reading = read_message(raw, Limits())
        decider = Decider(DomainGroups({}, {}), None, None, None)
    else:
        reading = read_message(raw, config.parse.limits(), config.detect)
        decider = Decider.from_config(config)
    return decider.decide(envelope, reading, correspondents)
