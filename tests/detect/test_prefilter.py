"""The prefilter must find exactly what every detector finds reading the whole text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.detect import prefilter
from smtpguard.detect.base import Detector, Hit
from smtpguard.detect.detectors import case_reference
from smtpguard.detect.prefilter import scan_detectors
from smtpguard.detect.registry import default_detectors

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from detect_bench import case_notes

DETECTORS = default_detectors()

# Identifiers in the forms people write them, and near misses, with the
# context words that change confidence.
FRAGMENTS = [
    "NHS number 943 476 5919",
    "NHS no:\n943 476\n5919",
    "943-476-5919",
    "9434765919",
    "ref 943 476 5919",
    "CHI 1503151234",
    "CHI: 150315 1234",
    "NI number AB 12 34 56 C",
    "nino ab123456c",
    "QQ 12 34 56 C",
    "NS4 7QJ",
    "ns47qj",
    "GIR 0AA",
    "card 4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "378282246310005",
    "sort code 12-34-56 account 12345678",
    "account 12345678 sort code 12 34 56",
    "123456 12345678",
    "01632 960123",
    "+44 (0)1632 960123",
    "(01632) 960123",
    "07700 900123",
    "DOB 14/03/2015",
    "D.O.B: 14.03.2015",
    "born on 14th March 2015",
    "date of birth 2015-03-14",
    "karen.hart84@hotmail.co.uk",
    "a.very.long.local.part@sub.domain.example.northshire.gov.uk",
    "[OFFICIAL-SENSITIVE: PERSONAL]",
    "OFFICIAL   SENSITIVE",
    "OFFICIAL_SENSITIVE",
    "TOP SECRET",
    "RESTRICTED - MEDICAL",
    "PROTECT",
    "CS-204817",
    "cs 204817",
    "AS/123456",
    "strategy   meeting",
    "section-47 enquiry",
    "MARAC",
    "refuge",
    "allegations",
    "refugee",
]
NOISE = ["the", "family", "Mum", "2015", "14", "0", "12345", "invoice", "@", "-", "NHS", "é"]
JOINERS = [" ", "", "\n", ", ", " \u2013 ", "\u2019", "é ", "\t"]


def _canonical(found: list[tuple[Detector, Hit]]) -> list[tuple[str, str, int, int, int]]:
    return sorted((d.name, h.value, h.start, h.end, int(h.confidence)) for d, h in found)


def _whole(text: str, detectors: tuple[Detector, ...]) -> list[tuple[str, str, int, int, int]]:
    return _canonical([(d, hit) for d in detectors for hit in d.scan(text)])


def test_prefilter_is_in_use() -> None:
    assert prefilter.available(), "hyperscan is a dependency; without it the relay is 5x slower"


@pytest.mark.parametrize("seed", range(4))
def test_same_hits_as_whole_text_on_case_notes(seed: int) -> None:
    text = case_notes(200_000, seed=seed)
    expected = _whole(text, DETECTORS)
    assert len(expected) > 250
    assert _canonical(scan_detectors(text, DETECTORS)) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(FRAGMENTS + NOISE), st.sampled_from(JOINERS)),
        min_size=1,
        max_size=40,
    )
)
def test_same_hits_as_whole_text_on_generated_text(pieces: list[tuple[str, str]]) -> None:
    text = "".join(fragment + joiner for fragment, joiner in pieces)
    assert _canonical(scan_detectors(text, DETECTORS)) == _whole(text, DETECTORS)


def test_offsets_are_characters_in_non_ascii_text() -> None:
    text = "Café\u2019s note \u2013 «NHS number 943 476 5919» résumé DOB 14/03/2015 ✓ CS-204817"
    found = scan_detectors(text, DETECTORS)
    assert _canonical(found) == _whole(text, DETECTORS)
    spans = {d.name: text[h.start : h.end] for d, h in found}
    assert spans["nhs_number"] == "943 476 5919"
    assert spans["case_reference"] == "CS-204817"


def test_hits_far_apart_in_a_long_text() -> None:
    filler = "the family attended the review meeting " * 2000
    text = f"NHS number 943 476 5919 {filler} sort code 12-34-56 account 12345678 {filler} MARAC"
    names = {d.name for d, _ in scan_detectors(text, DETECTORS)}
    assert {"nhs_number", "bank_account", "keywords"} <= names
    assert _canonical(scan_detectors(text, DETECTORS)) == _whole(text, DETECTORS)


def test_a_configured_pattern_with_lookarounds_is_matched_approximately() -> None:
    detector = case_reference.build([r"(?<![A-Z])(?P<prefix>LA)[ /]?(?P<number>\d{5})(?!\d)"])
    text = ("filler text " * 50) + "see la/12345 and LA 54321, not XLA12345 nor LA123456"
    found = scan_detectors(text, (detector,))
    assert sorted(h.value for _, h in found) == ["LA-12345", "LA-54321"]


def test_a_pattern_hyperscan_cannot_read_leaves_its_detector_reading_everything() -> None:
    # The (?u) flag: redundant but valid for Python, refused by Hyperscan in every mode.
    pattern = r"(?u)(?P<prefix>LA)-?(?P<number>\d{5})(?!\d)"
    detector = case_reference.build([pattern])
    assert prefilter._triggers_of(detector) is None
    text = ("filler " * 100) + "LA-12345 and la12345"
    found = scan_detectors(text, (detector, *DETECTORS))
    assert sorted(h.value for d, h in found if d is detector) == ["LA-12345", "LA-12345"]


def test_a_detector_without_triggers_reads_the_whole_text() -> None:
    class Everything:
        name = "everything"

        def scan(self, text: str) -> list[Hit]:
            return [Hit("all", 0, len(text), 1)]  # type: ignore[arg-type]

        def redact(self, value: str) -> str:
            return value

    found = scan_detectors("x" * 1000 + " NS4 7QJ", (Everything(), *DETECTORS))
    assert ("everything", "all", 0, 1008, 1) in _canonical(found)


def test_without_hyperscan_every_detector_reads_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = case_notes(20_000, seed=11)
    expected = _canonical(scan_detectors(text, DETECTORS))
    monkeypatch.setattr(prefilter, "hyperscan", None)
    prefilter._compile.cache_clear()
    try:
        assert _canonical(scan_detectors(text, DETECTORS)) == expected
    finally:
        prefilter._compile.cache_clear()
