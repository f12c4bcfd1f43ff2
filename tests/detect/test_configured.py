"""The detectors a config asks for, and the bulk count over a whole message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard.config import ConfigError, load_config
from smtpguard.config.model import DetectConfig
from smtpguard.detect import Confidence, detect_findings, detect_message, findings_with, registry
from smtpguard.detect.detectors.nhs_number import nhs_check_digit_ok
from smtpguard.detect.registry import configured_detectors
from smtpguard.parse import Document, Part
from tests.conftest import write_config


def _document(text: str, subject: str = "") -> Document:
    return Document(subject=subject, headers=(), parts=(Part("body", "text", text),))


def _nhs_numbers(count: int) -> list[str]:
    numbers = []
    candidate = 999_000_000
    while len(numbers) < count:
        candidate += 1
        for check in range(10):
            digits = f"{candidate}{check}"
            if nhs_check_digit_ok(digits):
                numbers.append(digits)
                break
    return numbers


def _caseload(rows: int) -> str:
    lines = ["Name, NHS number, DOB, Postcode"]
    for index, number in enumerate(_nhs_numbers(rows)):
        day = index % 28 + 1
        lines.append(
            f"Child {index}, {number[:3]} {number[3:6]} {number[6:]}, "
            f"DOB {day:02d}/03/2014, NS{index % 9 + 1} {index % 10}QJ"
        )
    return "\n".join(lines)


def test_a_caseload_is_a_high_bulk_finding_counting_distinct_identifiers() -> None:
    findings = detect_findings(_document(_caseload(12)), bulk_min_distinct=20)
    [bulk] = [f for f in findings if f.detector == "bulk_identifiers"]
    assert bulk.confidence is Confidence.HIGH
    assert bulk.location == "body"
    assert bulk.count == 12 + 12 + 12
    assert bulk.excerpt == (
        "36 distinct identifiers: 12 NHS numbers, 12 dates of birth, 12 postcodes"
    )
    for number in _nhs_numbers(12):
        assert number not in bulk.excerpt


def test_a_letter_about_one_family_is_not_bulk() -> None:
    text = (
        "Amelia Hart (DOB 14/03/2015, NHS number 943 476 5919) and Noah Hart "
        "(DOB 02/11/2018) live at 14 Elmwood Road NS4 7QJ; call 01632 960123."
    )
    findings = detect_findings(_document(text), bulk_min_distinct=10)
    assert "bulk_identifiers" not in {f.detector for f in findings}


def test_a_staff_phone_list_is_only_low_bulk() -> None:
    text = "\n".join(
        f"Officer {i}: 01632 960{i:03d}, officer{i}@northshire.gov.uk" for i in range(15)
    )
    [bulk] = [
        f
        for f in detect_findings(_document(text), bulk_min_distinct=20)
        if f.detector == "bulk_identifiers"
    ]
    assert bulk.confidence is Confidence.LOW
    assert bulk.count == 30


def test_identifiers_in_several_places_are_bulk_for_the_message() -> None:
    numbers = _nhs_numbers(6)
    document = Document(
        subject="",
        headers=(),
        parts=(
            Part("body", "text", " ".join(f"NHS {n}" for n in numbers[:3])),
            Part("attachment:list.csv", "text", " ".join(f"NHS {n}" for n in numbers[3:])),
        ),
    )
    [bulk] = [
        f
        for f in detect_findings(document, bulk_min_distinct=6)
        if f.detector == "bulk_identifiers"
    ]
    assert (bulk.location, bulk.count, bulk.confidence) == ("message", 6, Confidence.HIGH)


def test_disabled_detectors_do_not_run() -> None:
    settings = DetectConfig(disabled=("nhs_number", "bulk_identifiers"))
    text = _caseload(30)
    found = {f.detector for f in findings_with(_document(text), settings)}
    assert "nhs_number" not in found
    assert "bulk_identifiers" not in found
    assert "date_of_birth" in found


def test_configured_case_reference_formats_replace_the_example_council() -> None:
    settings = DetectConfig(case_references=(r"\b(?P<prefix>LA)(?P<number>\d{5})\b",))
    found = {f.detector: f for f in findings_with(_document("see LA12345 and CS-204817"), settings)}
    assert found["case_reference"].count == 1
    assert found["case_reference"].excerpt == "LA-1**45"


def test_configured_keyword_dictionary(tmp_path: Path) -> None:
    dictionary = tmp_path / "housing.yaml"
    dictionary.write_text(
        "theme: housing\nterms:\n  - term: eviction notice\n    standalone: true\n",
        encoding="utf-8",
    )
    settings = DetectConfig(keywords=(dictionary,))
    [finding] = [
        f
        for f in findings_with(_document("An Eviction   Notice was served. MARAC"), settings)
        if f.detector == "keywords"
    ]
    assert finding.excerpt == "keyword (housing): eviction notice"


def test_a_changed_dictionary_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dictionary = tmp_path / "housing.yaml"
    dictionary.write_text("theme: housing\nterms:\n  - {term: eviction, standalone: true}\n")
    settings = DetectConfig(keywords=(dictionary,))
    first = configured_detectors(settings)
    assert configured_detectors(settings) is first
    dictionary.write_text("theme: housing\nterms:\n  - {term: arrears, standalone: true}\n")
    # Within a second the built set is used as it is; after it, the file is looked at.
    assert configured_detectors(settings) is first
    monkeypatch.setattr(registry, "_RECHECK_SECONDS", 0.0)
    found = findings_with(_document("rent arrears"), settings)
    assert [f.excerpt for f in found] == ["keyword (housing): arrears"]


def test_config_with_unknown_detector_is_refused_with_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"detect": {"disabled": ["nhs_numbers"]}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "no detector named 'nhs_numbers'" in str(caught.value)
    assert f"{path}:" in str(caught.value)


def test_config_with_broken_case_pattern_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"detect": {"case_references": ["(?P<prefix>CS"]}})
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_config(path)


def test_config_with_pattern_lacking_groups_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"detect": {"case_references": [r"CS-\d{6}"]}})
    with pytest.raises(ConfigError, match="lacks named group"):
        load_config(path)


def test_check_config_reports_a_broken_dictionary_with_its_file(tmp_path: Path) -> None:
    dictionary = tmp_path / "bad.yaml"
    dictionary.write_text("theme: Bad Theme\nterms: [x]\n", encoding="utf-8")
    path = write_config(tmp_path, {"detect": {"keywords": ["bad.yaml"]}})
    result = subprocess.run(
        [sys.executable, "-m", "smtpguard.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert str(dictionary) in result.stderr
    assert "'theme' must be a lower-case name" in result.stderr


def test_scan_uses_the_configured_detectors(tmp_path: Path) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: hi\n\nNHS number 943 476 5919, DOB 14/03/2015\n")
    path = write_config(tmp_path, {"detect": {"disabled": ["nhs_number"]}})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "smtpguard.cli",
            "scan",
            str(message),
            "--config",
            str(path),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    detectors = {f["detector"] for f in json.loads(result.stdout)["findings"]}
    assert detectors == {"date_of_birth"}


def test_a_councils_own_marking_is_found() -> None:
    settings = DetectConfig(markings={"extra": ["Northshire Confidential"]})  # type: ignore[arg-type]
    text = ("minutes " * 50) + "NORTHSHIRE CONFIDENTIAL and later northshire-confidential"
    [finding] = [
        f for f in findings_with(_document(text), settings) if f.detector == "protective_marking"
    ]
    assert (finding.count, finding.confidence) == (1, Confidence.HIGH)
    assert finding.excerpt == "NORTHSHIRE CONFIDENTIAL"


def test_a_councils_sensitivity_labels_map_to_markings() -> None:
    guid = "3c8a1f0e-1111-4222-8333-944455556666"
    other = "9d9d9d9d-1111-4222-8333-944455556666"
    header = (
        f"MSIP_Label_{guid}_Enabled=true; MSIP_Label_{guid}_Name=Social Care Cases; "
        f"MSIP_Label_{other}_Enabled=true; MSIP_Label_{other}_Name=Team Only"
    )
    document = Document(
        subject="", headers=(("msip_labels", header),), parts=(Part("body", "text", "hi"),)
    )
    plain = {f.detector for f in findings_with(document, DetectConfig())}
    assert "protective_marking" not in plain
    settings = DetectConfig(
        markings={  # type: ignore[arg-type]
            "labels": {
                "social care cases": "OFFICIAL-SENSITIVE: PERSONAL",
                other: "OFFICIAL",
            }
        }
    )
    [finding] = [f for f in findings_with(document, settings) if f.detector == "protective_marking"]
    assert (finding.location, finding.count) == ("header:msip_labels", 2)
    detector = configured_detectors(settings).detectors
    [marking] = [d for d in detector if d.name == "protective_marking"]
    hits = marking.label_markings(header)  # type: ignore[attr-defined]
    assert sorted((h.value, h.confidence) for h in hits) == [
        ("OFFICIAL", Confidence.HIGH),
        ("OFFICIAL-SENSITIVE: PERSONAL", Confidence.HIGH),
    ]


def test_an_empty_own_marking_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"detect": {"markings": {"extra": ["--"]}}})
    with pytest.raises(ConfigError, match="empty marking"):
        load_config(path)


def test_the_cases_a_message_refers_to_are_its_case_references() -> None:
    detection = detect_message(_document("Re CS-204817 and cs 311092; see also CS-204817."))
    assert detection.cases == ("CS-204817", "CS-311092")
    assert detect_message(_document("nothing here")).cases == ()
