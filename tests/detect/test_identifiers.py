"""Identifier detectors: the forms people write, the near misses, and redaction.

All values are Northshire example data: NHS test-range numbers, Ofcom drama
phone numbers, test card numbers. Never real people's data.
"""

from __future__ import annotations

import random
import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.detect.base import Confidence, Detector
from smtpguard.detect.detectors import (
    bank_account,
    chi_number,
    date_of_birth,
    email_addresses,
    ni_number,
    payment_card,
    phone_number,
    postcode,
)
from smtpguard.detect.detectors import nhs_number as nhs
from smtpguard.detect.registry import default_detectors

DETECTORS: dict[str, Detector] = {
    "nhs_number": nhs.DETECTOR,
    "chi_number": chi_number.DETECTOR,
    "ni_number": ni_number.DETECTOR,
    "postcode": postcode.DETECTOR,
    "date_of_birth": date_of_birth.DETECTOR,
    "payment_card": payment_card.DETECTOR,
    "bank_account": bank_account.DETECTOR,
    "phone_number": phone_number.DETECTOR,
    "email_addresses": email_addresses.DETECTOR,
}


def values(detector: Detector, text: str) -> list[str]:
    return [hit.value for hit in detector.scan(text)]


def confidences(detector: Detector, text: str) -> list[Confidence]:
    return [hit.confidence for hit in detector.scan(text)]


def test_when_detectors_loaded_then_names_match_design() -> None:
    for name, detector in DETECTORS.items():
        assert detector.name == name


# --- NHS number -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("943 476 5919", ["9434765919"]),
        ("NHS no 943-476-5919.", ["9434765919"]),
        ("9434765919", ["9434765919"]),
        ("patient 943 476\n5919 seen", ["9434765919"]),
        ("943 476\r\n  5919", ["9434765919"]),
        ("(943 476 5919)", ["9434765919"]),
        ("NI H&C 320 476 5911", ["3204765911"]),
        ("two: 943 476 5919 and 9434765919", ["9434765919", "9434765919"]),
    ],
)
def test_when_spaced_nhs_number_then_found(text: str, expected: list[str]) -> None:
    assert values(nhs.DETECTOR, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Invoice 9434765918",  # checksum fails
        "4444444444",  # ten identical digits pass modulus 11
        "0000000000",
        "1111111111",
        "0123456789",
        "+44 20 7946 0958",  # phone
        "020 7946 0958",
        "4111 1111 1111 1111",  # card
        "4111111111111111",
        "94347659190",  # inside a longer run
        "19434765919",
        "12 943 476 5919",
        "943 476 5919 12",
        "1.9434765919",
        "Order 943-476-5918",
    ],
)
def test_when_not_nhs_number_then_not_found(text: str) -> None:
    assert values(nhs.DETECTOR, text) == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("NHS number: 943 476 5919", Confidence.HIGH),
        ("NHS no. 9434765919", Confidence.HIGH),
        ("CHI 943 476 5919", Confidence.HIGH),
        ("the number is 943 476 5919", Confidence.MEDIUM),
        ("Invoice 9434765919", Confidence.LOW),
    ],
)
def test_when_context_word_before_nhs_number_then_confidence(
    text: str, expected: Confidence
) -> None:
    assert confidences(nhs.DETECTOR, text) == [expected]


def test_when_nhs_context_far_away_then_medium() -> None:
    text = "NHS" + " filler" * 10 + " 943 476 5919"
    assert confidences(nhs.DETECTOR, text) == [Confidence.MEDIUM]


# --- CHI number -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("CHI 1205980016", ["1205980016"]),
        ("CHI: 120598 0016", ["1205980016"]),
        ("CHI number 010 180 1238", ["0101801238"]),
        ("2902007779", ["2902007779"]),  # 29 Feb 00 is a real date
        ("CHI 010126 1238", ["0101261238"]),  # modulus 10 only: issued from 2026
        ("CHI 280226 7894", ["2802267894"]),  # modulus 10 only
        ("CHI 010126 1233", ["0101261233"]),  # modulus 11 only
    ],
)
def test_when_chi_number_then_found(text: str, expected: list[str]) -> None:
    assert values(chi_number.DETECTOR, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1205980017",  # neither modulus 11 nor modulus 10
        "0101261234",  # neither
        "3202980011",  # 32nd day
        "1213980012",  # 13th month
        "0000000000",
        "9434765919",  # an NHS number, not a date
        "12059800161",
    ],
)
def test_when_not_chi_number_then_not_found(text: str) -> None:
    assert values(chi_number.DETECTOR, text) == []


@pytest.mark.parametrize(
    "text, expected",
    [("CHI 1205980016", Confidence.HIGH), ("ref 1205980016", Confidence.LOW)],
)
def test_when_chi_context_then_high_else_low(text: str, expected: Confidence) -> None:
    assert confidences(chi_number.DETECTOR, text) == [expected]


# --- NI number --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("AB123456C", ["AB123456C"]),
        ("AB 12 34 56 C", ["AB123456C"]),
        ("ab 123456 c", ["AB123456C"]),
        ("NINO: JG103759A.", ["JG103759A"]),
        ("NI number AB123456", ["AB123456"]),
        ("AB 12 34 56, thanks", ["AB123456"]),
        ("ce123456d", ["CE123456D"]),
    ],
)
def test_when_ni_number_then_found(text: str, expected: list[str]) -> None:
    assert values(ni_number.DETECTOR, text) == expected


def test_when_govuk_example_qq_nino_then_not_found() -> None:
    assert values(ni_number.DETECTOR, "QQ 12 34 56 C") == []
    assert values(ni_number.DETECTOR, "QQ123456C") == []


@pytest.mark.parametrize("suffix", ["1", "{", "}", " 1", " {", " }"])
def test_when_nino_suffix_is_presidio_fault_then_rejected(suffix: str) -> None:
    assert values(ni_number.DETECTOR, f"AB123456{suffix}") == []


@pytest.mark.parametrize(
    "text",
    [
        "DA123456A",  # D first
        "FA123456A",
        "IA123456A",
        "UA123456A",
        "VA123456A",
        "AO123456A",  # O second
        "AQ123456A",
        "BG123456A",  # never allocated
        "GB123456A",
        "KN123456A",
        "NK123456A",
        "NT123456A",
        "TN123456A",
        "ZZ123456A",
        "AB123456E",  # suffix outside A-D
        "XAB123456A",  # inside a longer code
        "AB12345A",  # five digits
        "AB1234567",
    ],
)
def test_when_nino_breaks_hmrc_rules_then_not_found(text: str) -> None:
    assert values(ni_number.DETECTOR, text) == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("NI: AB123456C", Confidence.HIGH),
        ("NINO AB123456C", Confidence.HIGH),
        ("national insurance number AB123456C", Confidence.HIGH),
        ("reference AB123456C", Confidence.MEDIUM),
    ],
)
def test_when_ni_context_then_high_else_medium(text: str, expected: Confidence) -> None:
    assert confidences(ni_number.DETECTOR, text) == [expected]


# --- Postcode ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("NS4 7QJ", ["NS4 7QJ"]),
        ("London SW1A 1AA.", ["SW1A 1AA"]),
        ("M1 1AE", ["M1 1AE"]),
        ("B33 8TH", ["B33 8TH"]),
        ("CR2 6XH", ["CR2 6XH"]),
        ("DN55 1PT", ["DN55 1PT"]),
        ("GIR 0AA", ["GIR 0AA"]),
        ("W1A 0AX", ["W1A 0AX"]),
        ("EC1A 1BB", ["EC1A 1BB"]),
        ("sw1a1aa", ["SW1A 1AA"]),
        ("ns47qj", ["NS4 7QJ"]),
        ("ns4 7qj, cr2 6xh", ["NS4 7QJ", "CR2 6XH"]),
    ],
)
def test_when_postcode_then_found_normalised(text: str, expected: list[str]) -> None:
    assert values(postcode.DETECTOR, text) == expected
    assert confidences(postcode.DETECTOR, text) == [Confidence.MEDIUM] * len(expected)


@pytest.mark.parametrize(
    "text",
    [
        "NS4 7CJ",  # C in the inward code
        "NS4 7QI",
        "NS4 7KA",
        "NS4 7MA",
        "NS4 7OA",
        "NS4 7VA",
        "QA1 1AA",  # Q never first
        "AJ1 1AA",  # J never second
        "XSW1A 1AA",  # inside a longer code
        "NS4 7QJX",
        "NS 7QJ",
        "A1B2C3",
        "version 2.1.1 AB",
    ],
)
def test_when_not_a_postcode_then_not_found(text: str) -> None:
    assert values(postcode.DETECTOR, text) == []


# --- Date of birth ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("DOB: 14/03/2015", ["2015-03-14"]),
        ("D.O.B 14-03-2015", ["2015-03-14"]),
        ("dob 14.03.15", ["2015-03-14"]),
        ("Date of birth: 2015-03-14", ["2015-03-14"]),
        ("born on 14 March 2015", ["2015-03-14"]),
        ("Born 14th Mar 2015", ["2015-03-14"]),
        ("birth date 14th of March, 2015", ["2015-03-14"]),
        ("born 1/3/2015", ["2015-03-01"]),
        ("DOB 01.01.60", ["1960-01-01"]),
        ("DOB 14/03/2015; sibling DOB 2/9/2018", ["2015-03-14", "2018-09-02"]),
    ],
)
def test_when_date_after_birth_cue_then_found_iso(text: str, expected: list[str]) -> None:
    assert values(date_of_birth.DETECTOR, text) == expected
    assert confidences(date_of_birth.DETECTOR, text) == [Confidence.HIGH] * len(expected)


@pytest.mark.parametrize(
    "text",
    [
        "Meeting on 14/03/2015",  # no cue
        "Review date 2015-03-14",
        "14/03/2015 DOB",  # cue after the date
        "DOB 31/02/2015",  # not a calendar date
        "DOB 14/13/2015",
        "DOB 14/03/2999",  # future
        "DOB 14/03/1880",  # more than 120 years ago
        "born in the winter of that hard year, on 14/03/2015",  # too far after
        "DOB 14/03/20151",
        "DOB 2015-03-14-2",
        "Doboz 14/03/2015",
    ],
)
def test_when_date_is_not_a_birth_then_not_found(text: str) -> None:
    assert values(date_of_birth.DETECTOR, text) == []


# --- Payment card -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4111 1111 1111 1111", ["4111111111111111"]),
        ("4111-1111-1111-1111", ["4111111111111111"]),
        ("4111111111111111", ["4111111111111111"]),
        ("5555 5555 5555 4444", ["5555555555554444"]),
        ("2223 0000 4840 0011", ["2223000048400011"]),
        ("3782 822463 10005", ["378282246310005"]),
        ("371449635398431", ["371449635398431"]),
        ("6011 1111 1111 1117", ["6011111111111117"]),
        ("6759 6498 2643 8453", ["6759649826438453"]),
    ],
)
def test_when_card_number_then_found(text: str, expected: list[str]) -> None:
    assert values(payment_card.DETECTOR, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn
        "4444444444444444",
        "0000 0000 0000 0000",
        "1234 5678 9012 3452",  # no issuer
        "9434765919",  # NHS number
        "41111111111111111111",  # 20 digits
        "4111 1111 1111 1111 2",
        "41111 1111 1111 111",  # odd grouping
    ],
)
def test_when_not_a_card_number_then_not_found(text: str) -> None:
    assert values(payment_card.DETECTOR, text) == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Visa card 4111 1111 1111 1111", Confidence.HIGH),
        ("expiry 12/27, 5555555555554444", Confidence.HIGH),
        ("ref 4111111111111111", Confidence.MEDIUM),
    ],
)
def test_when_card_context_then_high_else_medium(text: str, expected: Confidence) -> None:
    assert confidences(payment_card.DETECTOR, text) == [expected]


# --- Bank account -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Sort code 12-34-56 account 12345678", ["123456:12345678"]),
        ("12 34 56 / 12345678", ["123456:12345678"]),
        ("123456 87654321", ["123456:87654321"]),
        ("account no 87654321, sort code 20-00-00", ["200000:87654321"]),
        ("a/c 1234 5678 s/c 20-00-00", ["200000:12345678"]),
    ],
)
def test_when_sort_code_near_account_then_found(text: str, expected: list[str]) -> None:
    assert values(bank_account.DETECTOR, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "sort code 12-34-56",  # alone
        "account 12345678",
        "12-34-56" + " filler" * 12 + " 12345678",  # too far apart
        "12-34-567 12345678",
        "12-34-56 123456789",
        "14/03/2015 12345678",
    ],
)
def test_when_sort_code_or_account_alone_then_not_found(text: str) -> None:
    assert values(bank_account.DETECTOR, text) == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Sort code 12-34-56 account 12345678", Confidence.HIGH),
        ("12-34-56 12345678", Confidence.MEDIUM),
    ],
)
def test_when_bank_context_then_high_else_medium(text: str, expected: Confidence) -> None:
    assert confidences(bank_account.DETECTOR, text) == [expected]


# --- Phone number -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("01632 960 123", ["01632960123"]),
        ("+44 1632 960123", ["01632960123"]),
        ("07700 900123", ["07700900123"]),
        ("(020) 7946 0958", ["02079460958"]),
        ("+44 (0)20 7946 0958", ["02079460958"]),
        ("020-7946-0958", ["02079460958"]),
        ("0800 123 4567", ["08001234567"]),
        ("0161 496 0000", ["01614960000"]),
        ("0044 7700 900123", ["07700900123"]),
        ("tel:01632960123", ["01632960123"]),
    ],
)
def test_when_uk_phone_number_then_found(text: str, expected: list[str]) -> None:
    assert values(phone_number.DETECTOR, text) == expected
    assert confidences(phone_number.DETECTOR, text) == [Confidence.LOW] * len(expected)


@pytest.mark.parametrize(
    "text",
    [
        "943 476 5919",  # NHS number: no leading 0
        "9434765919",
        "01-02-2015",  # dates
        "01/02/2015",
        "2015-03-14",
        "04111 1111 1111 1111",
        "0012 345",
        "+33 1 23 45 67 89",
    ],
)
def test_when_not_a_phone_number_then_not_found(text: str) -> None:
    assert values(phone_number.DETECTOR, text) == []


# --- Email addresses --------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("j.smith@northshire.gov.uk", ["j.smith@northshire.gov.uk"]),
        ("To: <A.B+care@Example.ORG>", ["a.b+care@example.org"]),
        ("a@x.io, b@y.co.uk", ["a@x.io", "b@y.co.uk"]),
    ],
)
def test_when_email_address_then_found_lowercased(text: str, expected: list[str]) -> None:
    assert values(email_addresses.DETECTOR, text) == expected


@pytest.mark.parametrize("text", ["x@y", "a..b@c.com", "foo@bar.c0m", "@example.org", "a @ b.com"])
def test_when_not_an_email_address_then_not_found(text: str) -> None:
    assert values(email_addresses.DETECTOR, text) == []


# --- Redaction --------------------------------------------------------------

VALID: list[tuple[str, str]] = [
    ("nhs_number", "943 476 5919"),
    ("nhs_number", "9434765919"),
    ("chi_number", "CHI 120598 0016"),
    ("ni_number", "AB 12 34 56 C"),
    ("ni_number", "AB123456"),
    ("postcode", "NS4 7QJ"),
    ("postcode", "sw1a1aa"),
    ("date_of_birth", "DOB 14/03/2015"),
    ("date_of_birth", "born 14 March 2015"),
    ("payment_card", "4111 1111 1111 1111"),
    ("payment_card", "378282246310005"),
    ("bank_account", "sort code 12-34-56 account 12345678"),
    ("phone_number", "01632 960 123"),
    ("phone_number", "+44 (0)20 7946 0958"),
    ("email_addresses", "j.smith@northshire.gov.uk"),
]


@pytest.mark.parametrize("name, text", VALID)
def test_when_redacted_then_value_not_disclosed(name: str, text: str) -> None:
    detector = DETECTORS[name]
    hits = detector.scan(text)
    assert hits, "example must be found"
    for hit in hits:
        excerpt = detector.redact(hit.value)
        assert excerpt
        assert hit.value not in excerpt
        assert text[hit.start : hit.end] not in excerpt
        assert text[hit.start : hit.end].upper() not in excerpt.upper()


# --- Robustness and speed ---------------------------------------------------

_TEXTY = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + " -./:@+(){}\n\t&,"),
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(_TEXTY, st.text(max_size=200)))
def test_when_random_text_then_no_error_and_spans_inside(text: str) -> None:
    for detector in DETECTORS.values():
        for hit in detector.scan(text):
            assert 0 <= hit.start < hit.end <= len(text)
            detector.redact(hit.value)


def _random_ish_text(size: int, seed: int) -> str:
    rng = random.Random(seed)
    pieces = [
        "the", "child", "visit", "DOB", "born", "NHS", "card", "sort code", "NI",
        "01632", "960", "123", "943", "476", "5919", "12-34-56", "4111", "@",
        "x.y", "SW1A", "1AA", "14/03/2015", "AB", "123456", "C", "\n", "((", "--",
    ]  # fmt: skip
    out: list[str] = []
    length = 0
    while length < size:
        piece = rng.choice(pieces) if rng.random() < 0.7 else str(rng.randrange(10**12))
        out.append(piece)
        out.append(rng.choice(" \n-/."))
        length += len(piece) + 1
    return "".join(out)[:size]


def test_when_scanning_one_megabyte_of_noise_then_bounded_time() -> None:
    text = _random_ish_text(1_000_000, seed=47)
    started = time.perf_counter()
    for detector in DETECTORS.values():
        for hit in detector.scan(text):
            assert 0 <= hit.start < hit.end <= len(text)
    # Generous bound for slow CI; catastrophic backtracking would take minutes.
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_when_long_digit_run_then_linear_time(name: str) -> None:
    text = ("1" * 5000 + " ") * 40 + "9" * 100_000 + "a@" * 20_000
    started = time.perf_counter()
    DETECTORS[name].scan(text)
    assert time.perf_counter() - started < 2.0


# --- date of birth in a table column ------------------------------------------


def test_when_table_column_is_headed_date_of_birth_then_every_row_is_a_date_of_birth() -> None:
    from smtpguard.detect.detectors.date_of_birth import COLUMN_DETECTOR

    table = (
        "Caseload\n"
        "Child\tNHS number\tDate of birth (dd/mm/yyyy)\tReferred\n"
        "Amelia Hart\t999 000 0018\t14/03/2015\t01/02/2024\n"
        "Noah Hart\t999 000 0026\t2018-11-02\t01/02/2024\n"
        "Leo Brennan\t\t21.07.2012 00:00:00\t03/03/2024\n"
        "Maisie Whitlock\t\tnot known\t03/03/2024\n"
        "Totals: 4 children\n"
        "Later\tline\t09/01/2016\n"
    )
    hits = COLUMN_DETECTOR.scan(table)
    assert [h.value for h in hits] == ["2015-03-14", "2018-11-02", "2012-07-21"]
    assert [table[h.start : h.end] for h in hits] == ["14/03/2015", "2018-11-02", "21.07.2012"]
    assert all(h.confidence is Confidence.HIGH for h in hits)


@pytest.mark.parametrize(
    "table",
    [
        "Child\tDate of referral\nAmelia\t14/03/2015\n",  # not a birth cue
        "Child, DOB\nAmelia, 14/03/2015\n",  # no tab-separated cells
        "Child\tDOB\nAmelia\t14/03/2099\n",  # in the future
        "The child (DOB below) was seen\tok\nAmelia\t14/03/2015\n",  # cue inside prose
    ],
)
def test_when_not_a_date_of_birth_column_then_nothing(table: str) -> None:
    from smtpguard.detect.detectors.date_of_birth import COLUMN_DETECTOR

    assert COLUMN_DETECTOR.scan(table) == []


@pytest.mark.parametrize(
    ("detector", "row"),
    [
        ("nhs_number", "Amelia Hart,14/03/2015,943 476 5919,NS4 7QJ"),
        ("nhs_number", "12,943 476 5919,2015"),
        ("chi_number", "Leo Brennan,CHI,1205980016,Glasgow"),
    ],
)
def test_an_identifier_between_commas_in_a_csv_row_is_found(detector: str, row: str) -> None:
    # Caseload exports are CSV: a field before or after the number is not part of it.
    [found] = [d for d in default_detectors() if d.name == detector]
    assert len(found.scan(row)) == 1
