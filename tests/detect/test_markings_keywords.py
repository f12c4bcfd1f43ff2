"""Protective markings, msip_labels, encryption requests, keywords, case references."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.detect.base import Confidence, Hit
from smtpguard.detect.detectors import case_reference, encryption_request, keywords
from smtpguard.detect.detectors import protective_marking as pm

HIGH, MEDIUM, LOW = Confidence.HIGH, Confidence.MEDIUM, Confidence.LOW
KEYWORDS = keywords.load_default()
SHIPPED = sorted((Path(__file__).parents[2] / "config" / "keywords").glob("*.yaml"))


def found(hits: list[Hit]) -> list[tuple[str, Confidence]]:
    return [(hit.value, hit.confidence) for hit in hits]


# --- case_reference -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Re CS-204817 review", ["CS-204817"]),
        ("CS 204817", ["CS-204817"]),
        ("cs204817", ["CS-204817"]),
        ("CS\u2013204817", ["CS-204817"]),
        ("CS/204817", ["CS-204817"]),
        ("as-311092.", ["AS-311092"]),
        ("(CS-204817, AS-000123)", ["CS-204817", "AS-000123"]),
    ],
)
def test_when_case_reference_variant_then_normalised_high(text: str, expected: list[str]) -> None:
    hits = case_reference.DETECTOR.scan(text)
    assert [hit.value for hit in hits] == expected
    assert all(hit.confidence is HIGH for hit in hits)


@pytest.mark.parametrize(
    "text", ["CS-20481", "XCS-204817", "ABCS-2048171", "CS-2048171", "CS-204817X", "DS-204817"]
)
def test_when_case_reference_near_miss_then_nothing(text: str) -> None:
    assert case_reference.DETECTOR.scan(text) == []


def test_when_case_reference_redacted_then_middle_masked() -> None:
    assert case_reference.DETECTOR.redact("CS-204817") == "CS-2***17"


def test_when_custom_pattern_then_used() -> None:
    detector = case_reference.build([r"\b(?P<prefix>LAC)(?P<number>\d{4})\b"])
    assert [hit.value for hit in detector.scan("see lac1234")] == ["LAC-1234"]


@pytest.mark.parametrize("pattern", [r"(?P<prefix>CS)\d{6}", r"(?P<prefix>CS(?P<number>\d"])
def test_when_pattern_invalid_then_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="case_reference"):
        case_reference.build([pattern])


# --- protective_marking ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("OFFICIAL-SENSITIVE", [("OFFICIAL-SENSITIVE", HIGH)]),
        ("OFFICIAL SENSITIVE\n\nDear colleague", [("OFFICIAL-SENSITIVE", HIGH)]),
        ("OFFICIAL\u2013SENSITIVE", [("OFFICIAL-SENSITIVE", HIGH)]),
        ("OFFICIAL-SENSITIVE: PERSONAL", [("OFFICIAL-SENSITIVE: PERSONAL", HIGH)]),
        ("OFFICIAL-SENSITIVE: COMMERCIAL", [("OFFICIAL-SENSITIVE: COMMERCIAL", HIGH)]),
        ("OFFICIAL-SENSITIVE: LOCSEN", [("OFFICIAL-SENSITIVE: LOCSEN", HIGH)]),
        ("OFFICIAL-SENSITIVE personal data", [("OFFICIAL-SENSITIVE", HIGH)]),
        ("PROTECT", [("PROTECT", HIGH)]),
        ("RESTRICTED", [("RESTRICTED", HIGH)]),
        ("PROTECT - PERSONAL", [("PROTECT - PERSONAL", HIGH)]),
        ("RESTRICTED - MANAGEMENT", [("RESTRICTED - MANAGEMENT", HIGH)]),
        ("SECRET", [("SECRET", HIGH)]),
        ("TOP SECRET", [("TOP SECRET", HIGH)]),
        ("Classification: RESTRICTED", [("RESTRICTED", HIGH)]),
    ],
)
def test_when_marking_upper_case_then_high(
    text: str, expected: list[tuple[str, Confidence]]
) -> None:
    assert found(pm.DETECTOR.scan(text)) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[OFFICIAL-SENSITIVE] Core group minutes", [("OFFICIAL-SENSITIVE", HIGH)]),
        ("[Official Sensitive] minutes", [("OFFICIAL-SENSITIVE", HIGH)]),
        ("RE: [restricted] panel papers", [("RESTRICTED", HIGH)]),
        ("[OFFICIAL-SENSITIVE: PERSONAL] report", [("OFFICIAL-SENSITIVE: PERSONAL", HIGH)]),
    ],
)
def test_when_marking_in_subject_brackets_then_high(
    text: str, expected: list[tuple[str, Confidence]]
) -> None:
    assert found(pm.DETECTOR.scan(text)) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("This report is Official-Sensitive.", [("OFFICIAL-SENSITIVE", MEDIUM)]),
        ("treat as official sensitive please", [("OFFICIAL-SENSITIVE", MEDIUM)]),
        ("Official-Sensitive: Personal", [("OFFICIAL-SENSITIVE: PERSONAL", MEDIUM)]),
        ("Restricted - Management", [("RESTRICTED - MANAGEMENT", MEDIUM)]),
        ("ACCESS IS RESTRICTED", [("RESTRICTED", MEDIUM)]),
    ],
)
def test_when_marking_mixed_case_in_prose_then_medium(
    text: str, expected: list[tuple[str, Confidence]]
) -> None:
    assert found(pm.DETECTOR.scan(text)) == expected


@pytest.mark.parametrize("text", ["OFFICIAL", "[OFFICIAL] newsletter", "OFFICIAL: PERSONAL"])
def test_when_plain_official_then_low(text: str) -> None:
    assert found(pm.DETECTOR.scan(text)) == [("OFFICIAL", LOW)]


@pytest.mark.parametrize(
    "text",
    [
        "access is restricted to the team",
        "Restricted access to the building",
        "we must protect the child",
        "Protect personal data",
        "an official letter from the official receiver",
        "Official business",
        "a top secret recipe",
        "Secret Santa",
        "PROTECTED characteristics",
        "the SECRETARY wrote",
    ],
)
def test_when_marking_word_in_prose_then_nothing(text: str) -> None:
    assert pm.DETECTOR.scan(text) == []


def test_when_marking_found_then_span_and_redaction_are_the_marking() -> None:
    text = "Subject: OFFICIAL-SENSITIVE: PERSONAL\n"
    (hit,) = pm.DETECTOR.scan(text)
    assert text[hit.start : hit.end] == "OFFICIAL-SENSITIVE: PERSONAL"
    assert pm.DETECTOR.redact(hit.value) == "OFFICIAL-SENSITIVE: PERSONAL"


GUID = "3d0e2f5c-1a2b-4c3d-9e8f-0123456789ab"
OTHER = "9f8e7d6c-5b4a-4321-8fed-cba987654321"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def msip(guid: str, name: str, enabled: str = "true") -> str:
    return (
        f"MSIP_Label_{guid}_Enabled={enabled}; MSIP_Label_{guid}_SetDate=2024-05-01T09:12:33Z;"
        f"\r\n MSIP_Label_{guid}_Method=Privileged; MSIP_Label_{guid}_Name={name};"
        f"\r\n MSIP_Label_{guid}_SiteId={TENANT}; MSIP_Label_{guid}_ActionId="
        f"b1c2d3e4-0000-4000-8000-000000000000; MSIP_Label_{guid}_ContentBits=2"
    )


@pytest.mark.parametrize(
    "header, expected",
    [
        (msip(GUID, "Official Sensitive"), [("OFFICIAL-SENSITIVE", HIGH)]),
        (msip(GUID, "OFFICIAL-SENSITIVE Personal"), [("OFFICIAL-SENSITIVE: PERSONAL", HIGH)]),
        (msip(GUID, "Official_Sensitive_Commercial"), [("OFFICIAL-SENSITIVE: COMMERCIAL", HIGH)]),
        (msip(GUID, "OFFICIAL - Personal"), [("OFFICIAL-SENSITIVE: PERSONAL", HIGH)]),
        (msip(GUID, "Restricted"), [("RESTRICTED", HIGH)]),
        (msip(GUID, "OFFICIAL"), [("OFFICIAL", LOW)]),
        (msip(GUID, "General"), []),
        (msip(GUID, "Official Sensitive", enabled="false"), []),
        (
            msip(GUID, "Official") + "; " + msip(OTHER, "Official Sensitive"),
            [("OFFICIAL", LOW), ("OFFICIAL-SENSITIVE", HIGH)],
        ),
        ("", []),
    ],
)
def test_when_msip_labels_header_then_label_names_mapped(
    header: str, expected: list[tuple[str, Confidence]]
) -> None:
    hits = pm.markings_from_msip_labels(header)
    assert found(hits) == expected
    for hit in hits:
        assert "MSIP" not in header[hit.start : hit.end]


# --- encryption_request ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[secure] Assessment for panel", ["secure"]),
        ("[SECURE] Assessment", ["secure"]),
        ("(secure) Assessment", ["secure"]),
        ("[encrypt] Assessment", ["encrypt"]),
        ("Assessment [ Encrypted ]", ["encrypt"]),
        ("encrypt: Assessment", ["encrypt"]),
        ("RE: FW: Secure: Assessment", ["secure"]),
    ],
)
def test_when_subject_tagged_then_encryption_requested(text: str, expected: list[str]) -> None:
    hits = encryption_request.DETECTOR.scan(text)
    assert [hit.value for hit in hits] == expected
    assert all(hit.confidence is HIGH for hit in hits)


@pytest.mark.parametrize(
    "text",
    ["Please keep this secure", "How to encrypt a file", "Report: encrypt: no", "insecure"],
)
def test_when_secure_is_prose_then_no_request(text: str) -> None:
    assert encryption_request.DETECTOR.scan(text) == []


# --- keywords -------------------------------------------------------------------------


def test_when_shipped_dictionaries_loaded_then_every_theme_present() -> None:
    assert {path.stem for path in SHIPPED} >= {
        "child_protection", "adult_safeguarding", "domestic_abuse",
        "criminal_allegations", "health",
    }  # fmt: skip
    for path in SHIPPED:
        assert keywords.build([path]).terms
    assert {term.theme for term in KEYWORDS.terms} == {path.stem for path in SHIPPED}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Referred to MARAC on 3 May", ("domestic_abuse:MARAC", HIGH)),
        ("a Section 47 enquiry was opened", ("child_protection:section 47 enquiry", HIGH)),
        ("the s.47 enquiry", ("child_protection:section 47 enquiry", HIGH)),
        ("S47", ("child_protection:s47", HIGH)),
        ("initial child protection conference", None),
        ("on a child protection plan", ("child_protection:child protection plan", HIGH)),
        ("non-molestation order", ("domestic_abuse:non-molestation order", HIGH)),
        ("non molestation  order", ("domestic_abuse:non-molestation order", HIGH)),
        ("MASH referral", ("child_protection:MASH referral", HIGH)),
        ("DoLS authorisation", ("adult_safeguarding:DoLS", HIGH)),
        ("section 42 enquiry", ("adult_safeguarding:section 42 enquiry", HIGH)),
        ("Prevent referral", ("criminal_allegations:Prevent referral", HIGH)),
        ("risk of FGM", ("domestic_abuse:FGM", HIGH)),
        ("she moved to a refuge", ("domestic_abuse:refuge", LOW)),
        ("two refuges", ("domestic_abuse:refuge", LOW)),
        ("the allegation was", ("criminal_allegations:allegation", LOW)),
        ("Strategy-Meeting held", ("child_protection:strategy meeting", LOW)),
        ("strategy\n  meeting", ("child_protection:strategy meeting", LOW)),
        ("his mental-health", ("health:mental health", LOW)),
        ("an overdose", ("health:overdose", LOW)),
        ("after his arrest", ("criminal_allegations:arrest", LOW)),
        ("a non-accidental injury", ("health:injury", LOW)),
    ],
)
def test_when_keyword_present_then_theme_term_and_confidence(
    text: str, expected: tuple[str, Confidence] | None
) -> None:
    hits = found(KEYWORDS.scan(text))
    if expected is None:
        assert hits and all(conf is HIGH for _, conf in hits)
    else:
        assert expected in hits


@pytest.mark.parametrize(
    "text",
    ["refugees", "the refugee council", "marache", "unarrested", "Preventative", "injuryless"],
)
def test_when_keyword_inside_longer_word_then_nothing(text: str) -> None:
    assert KEYWORDS.scan(text) == []


def test_when_keyword_value_then_term_lookup_and_redaction() -> None:
    entry = KEYWORDS.term("child_protection:strategy meeting")
    assert entry is not None and not entry.standalone
    assert KEYWORDS.redact(entry.value) == "keyword (child protection): strategy meeting"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "custom.yaml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "body, message",
    [
        ("theme: t\nterms:\n  - {term: refuge, sensitive: true}\n", "refuge"),
        ("theme: t\nterms:\n  - {term: refuge}\n  - {term: Refuge}\n", "duplicate.*Refuge"),
        ("theme: t\nterms:\n  - {term: a b, variants: [a-b]}\n", "duplicate.*a-b"),
        ("theme: t\ncolour: red\nterms:\n  - {term: x}\n", "unknown key.*colour"),
        ("theme: t\nterms:\n  - {term: ''}\n", "empty"),
        ("theme: t\nterms: []\n", "non-empty"),
        ("theme: t\nterms:\n  - {term: x, standalone: yes please}\n", "standalone"),
        ("theme: [\n", "YAML"),
    ],
)
def test_when_dictionary_invalid_then_error_names_file_and_term(
    tmp_path: Path, body: str, message: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ValueError, match=message) as info:
        keywords.build([path])
    assert "custom.yaml" in str(info.value)


def test_when_no_dictionaries_then_empty_detector_finds_nothing() -> None:
    assert keywords.build([]).scan("MARAC refuge") == []


# --- properties -----------------------------------------------------------------------

DETECTORS = [pm.DETECTOR, encryption_request.DETECTOR, KEYWORDS, case_reference.DETECTOR]
ALPHABET = st.sampled_from(
    [*"abcsAS-/[]():_ \n\t0123456789\u2013\u2019'.", "OFFICIAL", "SENSITIVE", "MARAC"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(ALPHABET, st.text(max_size=5)), max_size=40).map("".join))
def test_when_random_text_then_no_error_and_hits_in_bounds(text: str) -> None:
    for detector in DETECTORS:
        for hit in detector.scan(text):
            assert 0 <= hit.start < hit.end <= len(text)
            assert isinstance(detector.redact(hit.value), str)
    for hit in pm.markings_from_msip_labels(text):
        assert 0 <= hit.start <= hit.end <= len(text)
