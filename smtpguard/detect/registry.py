"""The detectors, registered explicitly: one line each, in one place.

`default_detectors()` is the shipped set with the example council's case
reference formats, for `scan` without a config, tests and benchmarks.
`configured_detectors(settings)` builds the set a config asks for: its
keyword dictionaries, case reference formats, exact-data-match registers,
minus the detectors it disables. Worker processes build it once per
settings (and again when a register or dictionary file changes on disk).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from smtpguard.config.model import DetectConfig
from smtpguard.detect.base import Detector
from smtpguard.detect.detectors import (
    bank_account,
    case_reference,
    chi_number,
    date_of_birth,
    email_addresses,
    encryption_request,
    keywords,
    nhs_number,
    ni_number,
    payment_card,
    phone_number,
    postcode,
    protective_marking,
)

# Only meaningful where a sender writes an instruction: the subject line.
SUBJECT_ONLY = frozenset({encryption_request.DETECTOR.name})
# Identifiers: a proximity-only keyword counts when one of these is near it.
IDENTIFIERS = frozenset(
    {
        nhs_number.DETECTOR.name,
        chi_number.DETECTOR.name,
        ni_number.DETECTOR.name,
        date_of_birth.DETECTOR.name,
        payment_card.DETECTOR.name,
        bank_account.DETECTOR.name,
        case_reference.DETECTOR.name,
        "edm_person",
        "edm_protected_address",
    }
)
BULK = "bulk_identifiers"
# What counts toward bulk, in the words a reviewer reads. Strong kinds (at
# medium confidence or more) can make a caseload on their own; weak ones
# (a staff phone list) only add to it.
BULK_STRONG = {
    nhs_number.DETECTOR.name: "NHS numbers",
    chi_number.DETECTOR.name: "CHI numbers",
    ni_number.DETECTOR.name: "National Insurance numbers",
    payment_card.DETECTOR.name: "card numbers",
    bank_account.DETECTOR.name: "bank accounts",
    date_of_birth.DETECTOR.name: "dates of birth",
    case_reference.DETECTOR.name: "case references",
    "edm_person": "people on the case register",
    "edm_protected_address": "protected addresses",
}
BULK_WEAK = {
    postcode.DETECTOR.name: "postcodes",
    phone_number.DETECTOR.name: "phone numbers",
    email_addresses.DETECTOR.name: "email addresses",
}
DEFAULT_BULK_MIN_DISTINCT = DetectConfig().bulk.min_distinct


@dataclass(frozen=True)
class DetectorSet:
    detectors: tuple[Detector, ...]
    bulk_min_distinct: int | None  # None: bulk_identifiers is disabled


def _identifiers_and_markings() -> tuple[Detector, ...]:
    return (
        nhs_number.DETECTOR,
        chi_number.DETECTOR,
        ni_number.DETECTOR,
        postcode.DETECTOR,
        payment_card.DETECTOR,
        bank_account.DETECTOR,
        phone_number.DETECTOR,
        date_of_birth.DETECTOR,
        date_of_birth.COLUMN_DETECTOR,
        email_addresses.DETECTOR,
        protective_marking.DETECTOR,
        encryption_request.DETECTOR,
    )


@functools.cache
def default_detectors() -> tuple[Detector, ...]:
    """Built once per process: the keyword dictionaries are read from disk."""
    return (*_identifiers_and_markings(), case_reference.DETECTOR, keywords.load_default())


# How long a built set is used before its files are looked at again: a changed
# dictionary or register is picked up within this time, without a stat() of every
# file for every message.
_RECHECK_SECONDS = 1.0
# id(settings) -> (settings, when its files were last looked at, the set): the
# settings object is kept so that its id is not reused while it is cached.
_recent: dict[int, tuple[DetectConfig, float, DetectorSet]] = {}


def configured_detectors(settings: DetectConfig) -> DetectorSet:
    """The set `settings` asks for, rebuilt only when it or one of its files changed."""
    now = time.monotonic()
    cached = _recent.get(id(settings))
    if cached is not None and cached[0] is settings and now - cached[1] < _RECHECK_SECONDS:
        return cached[2]
    built = _build(settings.model_dump_json(), _stamps(_files_of(settings)))
    if len(_recent) > 8:
        _recent.clear()  # configs come and go on reload; a few are live at a time
    _recent[id(settings)] = (settings, now, built)
    return built


def _files_of(settings: DetectConfig) -> list[Path]:
    files = list(settings.keywords or ())
    if settings.edm is not None:
        edm = settings.edm
        files += [*([edm.key_file] if edm.key_file else []), *edm.registers]
        files += [path for paths in edm.exports.values() for path in paths]
    return files


def _stamps(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    stamps = []
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            stamps.append((str(path), -1, -1))  # _build reports the file
        else:
            stamps.append((str(path), status.st_mtime_ns, status.st_size))
    return tuple(stamps)


@functools.lru_cache(maxsize=4)
def _build(settings_json: str, stamps: tuple[tuple[str, int, int], ...]) -> DetectorSet:
    """Raises ValueError naming the file and the problem (a config error).

    Keyed by the settings' JSON (hashable where the model, with its label
    mapping, is not) and the files' stamps.
    """
    settings = DetectConfig.model_validate_json(settings_json)
    disabled = frozenset(settings.disabled)
    built: list[Detector] = [
        protective_marking.build(settings.markings.extra, settings.markings.labels)
        if d is protective_marking.DETECTOR
        else d
        for d in _identifiers_and_markings()
    ]
    built.append(
        case_reference.build(settings.case_references)
        if settings.case_references is not None
        else case_reference.DETECTOR
    )
    built.append(
        keywords.build(list(settings.keywords))
        if settings.keywords is not None
        else keywords.load_default()
    )
    if settings.edm is not None:
        from smtpguard.detect.edm import load_edm_detectors

        built += load_edm_detectors(
            settings.edm.key_file, settings.edm.registers, settings.edm.exports
        )
    return DetectorSet(
        tuple(d for d in built if d.name not in disabled),
        None if BULK in disabled else settings.bulk.min_distinct,
    )
