"""The default detectors, registered explicitly: one line each, in one place."""

from __future__ import annotations

import functools

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
    }
)


@functools.cache
def default_detectors() -> tuple[Detector, ...]:
    """Built once per process: the keyword dictionaries are read from config/keywords."""
    return (
        nhs_number.DETECTOR,
        chi_number.DETECTOR,
        ni_number.DETECTOR,
        postcode.DETECTOR,
        payment_card.DETECTOR,
        bank_account.DETECTOR,
        phone_number.DETECTOR,
        date_of_birth.DETECTOR,
        email_addresses.DETECTOR,
        protective_marking.DETECTOR,
        encryption_request.DETECTOR,
        case_reference.DETECTOR,
        keywords.load_default(),
    )
