"""Exact data match: building registers from the council's exports, and matching texts.

Built from the project's copies of Northshire's exports (config/example),
with real key files and registers in tmp_path, and the command line run as
an administrator runs it. Every check that a value does not leak looks for
every value of the exports (see edm_helpers.forbidden).
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.cli import main
from smtpguard.config import ConfigError, load_config
from smtpguard.config.model import DetectConfig, EdmConfig
from smtpguard.detect import detect_findings, detect_message, registry
from smtpguard.detect.base import Confidence, Hit
from smtpguard.detect.edm import (
    KINDS,
    EdmError,
    Kind,
    PersonDetector,
    ProtectedAddressDetector,
    build_register,
    create_key,
    load_edm_detectors,
    read_key,
)
from smtpguard.detect.edm.key import Keyed
from smtpguard.detect.edm.match import _CHUNK_CACHE, _TOKEN_CACHE, _gap_ok, _Token
from smtpguard.detect.edm.normalise import (
    ADDRESS_WORDS,
    TOKEN,
    address_tokens,
    dates_in,
    dates_in_chunks,
    fold,
    name_key,
    name_tokens,
    parse_date,
    postcode_key,
)
from smtpguard.detect.engine import Text, group, scan_texts
from smtpguard.detect.registry import configured_detectors
from smtpguard.parse import Document, Part
from tests.conftest import write_config
from tests.detect.edm_helpers import (
    COUNCIL,
    all_forbidden,
    copy_exports,
    forbidden,
    leaked,
    make_registers,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Kind, Path]]:
    return make_registers(tmp_path_factory.mktemp("edm"))


@pytest.fixture(scope="module")
def person(built: tuple[Path, dict[Kind, Path]]) -> PersonDetector:
    key_file, registers = built
    found = load_edm_detectors(key_file, [registers["cases"], registers["case_parties"]])
    assert len(found) == 1 and isinstance(found[0], PersonDetector)
    return found[0]


@pytest.fixture(scope="module")
def address(built: tuple[Path, dict[Kind, Path]]) -> ProtectedAddressDetector:
    key_file, registers = built
    found = load_edm_detectors(key_file, [registers["protected_addresses"]])
    assert len(found) == 1 and isinstance(found[0], ProtectedAddressDetector)
    return found[0]


def best(hits: list[Hit]) -> Confidence | None:
    return max((hit.confidence for hit in hits), default=None)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- building registers through the command line ------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_when_building_each_example_export_then_register_loads_and_is_0600(
    tmp_path: Path, kind: Kind, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = copy_exports(tmp_path)[kind]
    key_file = tmp_path / "edm.key"

    assert main(["edm", "build", str(csv_path), "--kind", kind, "--key", str(key_file)]) == 0

    out = capsys.readouterr().out
    register = csv_path.with_suffix(".edm")
    assert f"created key file {key_file}" in out
    assert str(register) in out
    assert _mode(key_file) == 0o600 and key_file.stat().st_size == 32
    assert _mode(register) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    detectors = load_edm_detectors(key_file, [register])
    expected = "edm_protected_address" if kind == "protected_addresses" else "edm_person"
    assert [d.name for d in detectors] == [expected]


@pytest.mark.parametrize("kind", KINDS)
def test_when_register_built_then_no_value_of_any_export_is_in_it(
    built: tuple[Path, dict[Kind, Path]], kind: Kind
) -> None:
    data = built[1][kind].read_bytes().decode()
    values = forbidden(kind)
    assert len(values) > 20  # the check is not vacuous: names, dates, lines, postcodes...
    assert leaked(data, strict=True) == []
    # What is in clear is what the format allows: kinds, case references, access.
    parsed = json.loads(data)
    assert parsed["kind"] == kind
    for person in parsed["people"]:
        assert person["access"] in (None, "allowed", "restricted")


def test_when_register_built_then_case_references_are_kept_to_tie_matches_to_cases(
    built: tuple[Path, dict[Kind, Path]],
) -> None:
    parsed = json.loads(built[1]["case_parties"].read_text())
    assert {p["case"] for p in parsed["people"]} == {
        "CS-204817",
        "CS-311092",
        "CS-275530",
        "AS-118204",
        "AS-120977",
    }


def test_when_parties_include_organisations_then_they_are_reported_and_only_emails_hashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = copy_exports(tmp_path)["case_parties"]
    key = tmp_path / "edm.key"
    create_key(key)

    assert main(["edm", "build", str(csv_path), "--kind", "case_parties", "--key", str(key)]) == 0

    err = capsys.readouterr().err
    # Northshire Family Court, Children's Guardian, Oakfield Primary School (twice the court).
    for line in (6, 7, 11, 15):
        assert f"{csv_path}:{line}: name: not hashed as a person" in err
    # "Dr A Okonjo" is one usable word: not a name to look for either.
    assert f"{csv_path}:18: name: not hashed as a person" in err
    assert leaked(err) == []


def test_when_built_from_a_real_subprocess_then_exit_0_and_register_written(
    tmp_path: Path,
) -> None:
    csv_path = copy_exports(tmp_path)["protected_addresses"]
    key = tmp_path / "keys" / "edm.key"
    key.parent.mkdir()
    out = tmp_path / "out" / "places.edm"
    out.parent.mkdir()
    command = [sys.executable, "-m", "smtpguard.cli", "edm", "build", str(csv_path)]
    command += ["--kind", "protected_addresses", "--key", str(key), "--out", str(out)]

    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )

    assert result.returncode == 0, result.stderr
    assert "4 addresses" in result.stdout
    assert leaked(result.stdout + result.stderr) == []
    assert _mode(key) == 0o600 and _mode(out) == 0o600
    assert [d.name for d in load_edm_detectors(key, [out])] == ["edm_protected_address"]


def test_when_key_missing_then_keygen_creates_it_0600_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "edm.key"
    old_umask = os.umask(0)  # the file's mode must not depend on the caller's umask
    try:
        assert main(["edm", "keygen", str(key)]) == 0
    finally:
        os.umask(old_umask)
    assert _mode(key) == 0o600
    first = key.read_bytes()
    capsys.readouterr()

    assert main(["edm", "keygen", str(key)]) == 2

    assert f"{key}: key file exists already" in capsys.readouterr().err
    assert key.read_bytes() == first


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602], ids=oct)
def test_when_key_readable_or_writable_by_others_then_refused_naming_file_and_fix(
    tmp_path: Path, mode: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # The mode is read with fstat, so this holds for root too (os.access would not).
    csv_path = copy_exports(tmp_path)["cases"]
    key = tmp_path / "edm.key"
    create_key(key)
    key.chmod(mode)

    code = main(["edm", "build", str(csv_path), "--kind", "cases", "--key", str(key)])

    err = capsys.readouterr().err
    assert code == 2
    assert str(key) in err and f"chmod 600 {key}" in err
    assert not csv_path.with_suffix(".edm").exists()
    with pytest.raises(EdmError, match="readable or writable by group or others"):
        read_key(key)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_when_key_owned_by_another_user_then_refused(tmp_path: Path) -> None:
    key = tmp_path / "edm.key"
    create_key(key)
    os.chown(key, 65534, 65534)

    with pytest.raises(EdmError) as caught:
        read_key(key)

    assert str(key) in str(caught.value) and "owned by uid 65534" in str(caught.value)


def test_when_key_has_wrong_length_then_refused(tmp_path: Path) -> None:
    key = tmp_path / "edm.key"
    key.write_bytes(b"x" * 16)
    key.chmod(0o600)

    with pytest.raises(EdmError, match="exactly 32 bytes"):
        read_key(key)


def test_when_no_key_given_and_config_has_no_edm_then_error_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = copy_exports(tmp_path)["cases"]
    config = write_config(tmp_path)

    code = main(["edm", "build", str(csv_path), "--kind", "cases", "--config", str(config)])

    assert code == 2
    assert f"give --key FILE, or set detect.edm.key_file in {config}" in capsys.readouterr().err


def test_when_no_key_given_then_config_key_used_and_relay_can_load_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The nightly refresh: registers exist and are configured (the loader checks them);
    # the new export is hashed under the configured key, with no --key to get wrong.
    csv_path = copy_exports(tmp_path)["cases"]
    key = tmp_path / "edm.key"
    assert main(["edm", "build", str(csv_path), "--kind", "cases", "--key", str(key)]) == 0
    config = write_config(
        tmp_path, {"detect": {"edm": {"key_file": "edm.key", "registers": ["cases.edm"]}}}
    )
    capsys.readouterr()
    csv_path.write_text(csv_path.read_text() + "CS-100001,children,Ella Stone,2019-02-03,no\n")

    assert main(["edm", "build", str(csv_path), "--kind", "cases", "--config", str(config)]) == 0

    assert "created key file" not in capsys.readouterr().out
    settings_edm = yaml.safe_load(config.read_text())["detect"]["edm"]
    assert tmp_path / settings_edm["key_file"] == key
    (detector,) = load_edm_detectors(key, [tmp_path / "cases.edm"])
    assert isinstance(detector, PersonDetector)
    (hit,) = detector.scan("Ella Stone, 03/02/2019")
    assert hit.confidence is Confidence.HIGH and detector.case_of(hit.value) == "CS-100001"


def test_when_rebuild_fails_then_previous_register_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = copy_exports(tmp_path)["cases"]
    key = tmp_path / "edm.key"
    assert main(["edm", "build", str(csv_path), "--kind", "cases", "--key", str(key)]) == 0
    register = csv_path.with_suffix(".edm")
    before = register.read_bytes()
    csv_path.write_text(csv_path.read_text() + "CS-999999,children,Ella Stone,2019-02-30,no\n")

    assert main(["edm", "build", str(csv_path), "--kind", "cases", "--key", str(key)]) == 2

    assert register.read_bytes() == before
    assert f"{csv_path}:8: subject_dob: not a date" in capsys.readouterr().err


# --- malformed exports ---------------------------------------------------------------

CASES_HEADER = "case_ref,team,subject_name,subject_dob,court_proceedings\n"
PARTIES_HEADER = "case_ref,name,email,role,access\n"
PLACES_HEADER = "label,address_line_1,address_line_2,town,postcode\n"
MALFORMED: list[tuple[Kind, str, str]] = [
    ("cases", "case_ref,team,subject_name,court_proceedings\n", ":1: missing column subject_dob"),
    ("cases", "", ":1: empty file"),
    ("cases", CASES_HEADER + "CS-100001,children,Ella Stone,2019-02-30,no\n", ":2: subject_dob"),
    ("cases", CASES_HEADER + "CS-100001,children,Ella Stone,next week,no\n", ":2: subject_dob"),
    ("cases", CASES_HEADER + "CS-100001,children,Ella Stone,2099-01-01,no\n", "in the future"),
    ("cases", CASES_HEADER + "CS-100001,children,Ella Stone,,no\n", ":2: subject_dob: empty"),
    ("cases", CASES_HEADER + "CS-100001,children,,2019-02-03,no\n", ":2: subject_name: empty"),
    ("cases", CASES_HEADER + "CS-100001,children,Ella,2019-02-03,no\n", ":2: subject_name: needs"),
    ("cases", CASES_HEADER + "CS:100001,children,Ella Stone,2019-02-03,no\n", ":2: case_ref: not"),
    ("cases", CASES_HEADER + ",children,Ella Stone,2019-02-03,no\n", ":2: case_ref: empty"),
    (
        "cases",
        CASES_HEADER + "CS-100001,children,Ella Stone,2019-02-03,no,surplus\n",
        ":2: more fields than the header has",
    ),
    (
        "cases",
        CASES_HEADER + "CS-100001,children,Ella Stone,2019-02-03,no\n" * 2,
        ":3: the same entry as line 2",
    ),
    ("case_parties", "case_ref,name,email,role\n", ":1: missing column access"),
    (
        "case_parties",
        PARTIES_HEADER + "CS-100001,Ella Stone,ella@example.org,mother,sometimes\n",
        ":2: access: must be allowed or restricted",
    ),
    (
        "case_parties",
        PARTIES_HEADER + "CS-100001,Ella Stone,ella at example,mother,allowed\n",
        ":2: email: not an email address",
    ),
    (
        "case_parties",
        PARTIES_HEADER + "CS-100001,,ella@example.org,mother,allowed\n",
        ":2: name: empty",
    ),
    (
        "protected_addresses",
        "label,address_line_1,town,postcode\n",
        "missing column address_line_2",
    ),
    (
        "protected_addresses",
        PLACES_HEADER + "refuge,9 Larch Way,,Northtown,NS4 7Q\n",
        ":2: postcode: not a UK postcode",
    ),
    (
        "protected_addresses",
        PLACES_HEADER + "refuge,,,Northtown,NS4 7QJ\n",
        ":2: address_line_1: empty",
    ),
]


@pytest.mark.parametrize(("kind", "content", "expected"), MALFORMED)
def test_when_export_malformed_then_refused_with_file_line_reason_and_no_values(
    tmp_path: Path,
    kind: Kind,
    content: str,
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    csv_path = tmp_path / f"{kind}.csv"
    csv_path.write_text(content, encoding="utf-8")
    key = tmp_path / "edm.key"

    code = main(["edm", "build", str(csv_path), "--kind", kind, "--key", str(key)])

    err = capsys.readouterr().err
    assert code == 2
    assert f"{csv_path}{expected}" in err or (expected in err and str(csv_path) in err)
    assert not csv_path.with_suffix(".edm").exists()
    cells = {cell for line in content.splitlines()[1:] for cell in line.split(",")}
    shown = {cell for cell in cells if len(cell) >= 3 and cell.lower() in err.lower()}
    assert shown <= {"CS-100001"}  # a case reference may be named; no other cell


def test_when_several_rows_bad_then_every_one_is_reported(tmp_path: Path) -> None:
    csv_path = tmp_path / "cases.csv"
    csv_path.write_text(
        CASES_HEADER
        + "CS-100001,children,Ella Stone,2019-02-03,no\n"
        + "CS-100002,children,,2019-02-03,no\n"
        + "CS-100003,children,Finn Stone,31/02/2018,no\n",
        encoding="utf-8",
    )

    with pytest.raises(EdmError) as caught:
        build_register(csv_path, "cases", b"k" * 32)

    message = str(caught.value)
    assert f"{csv_path}:3: subject_name: empty" in message
    assert f"{csv_path}:4: subject_dob: not a date" in message
    assert "Finn" not in message and "Stone" not in message and "31/02" not in message


def test_when_export_is_not_utf8_then_refused(tmp_path: Path) -> None:
    csv_path = tmp_path / "cases.csv"
    csv_path.write_bytes(
        CASES_HEADER.encode() + "CS-100001,children,Zo\xeb Stone,2019-02-03,no\n".encode("latin-1")
    )

    with pytest.raises(EdmError, match="not UTF-8"):
        build_register(csv_path, "cases", b"k" * 32)


def test_when_dates_written_in_uk_forms_then_export_accepts_them_as_the_same_day() -> None:
    expected = parse_date("2015-03-14")
    assert expected is not None
    for written in ("14/03/2015", "14.03.2015", "14-03-2015", "14 March 2015", "14th Mar 2015"):
        assert parse_date(written) == expected, written
    assert parse_date("31/02/2015") is None
    assert parse_date("14/03/2015 and more") is None


# --- loading: keys and registers the relay must refuse --------------------------------


def test_when_register_hashed_with_another_key_then_refused_naming_it(
    tmp_path: Path, built: tuple[Path, dict[Kind, Path]]
) -> None:
    other_key = tmp_path / "other.key"
    create_key(other_key)
    register = built[1]["cases"]

    with pytest.raises(EdmError) as caught:
        load_edm_detectors(other_key, [register])

    assert str(register) in str(caught.value)
    assert "different key" in str(caught.value)
    assert leaked(str(caught.value)) == []


def _corruptions(original: bytes) -> Iterator[tuple[str, bytes]]:
    data = json.loads(original)
    yield "truncated", original[: len(original) // 2]
    yield "not JSON", b"\x00\x01 not json at all"
    yield "a JSON list", b"[1, 2, 3]"
    yield "no version", json.dumps({k: v for k, v in data.items() if k != "smtpguard_edm"}).encode()
    yield "future version", json.dumps({**data, "smtpguard_edm": 2}).encode()
    yield "version true", json.dumps({**data, "smtpguard_edm": True}).encode()
    yield "unknown kind", json.dumps({**data, "kind": "pets"}).encode()
    people = [dict(data["people"][0], names=["not-hex"]), *data["people"][1:]]
    yield "bad hash", json.dumps({**data, "people": people}).encode()
    yield "extra field", json.dumps({**data, "comment": "hand edited"}).encode()
    yield "places in a cases register", json.dumps({**data, "places": [{"x": 1}]}).encode()


def test_when_register_corrupt_or_unknown_version_then_refused_naming_it(
    tmp_path: Path, built: tuple[Path, dict[Kind, Path]]
) -> None:
    key_file, registers = built
    original = registers["cases"].read_bytes()
    for label, data in _corruptions(original):
        damaged = tmp_path / "damaged.edm"
        damaged.write_bytes(data)
        with pytest.raises(EdmError) as caught:
            load_edm_detectors(key_file, [damaged])
        assert str(damaged) in str(caught.value), label
        assert leaked(str(caught.value)) == [], label


def test_when_key_or_register_missing_then_refused_naming_it(
    tmp_path: Path, built: tuple[Path, dict[Kind, Path]]
) -> None:
    key_file, registers = built
    with pytest.raises(EdmError, match=str(tmp_path / "none.key")):
        load_edm_detectors(tmp_path / "none.key", [registers["cases"]])
    with pytest.raises(EdmError, match=str(tmp_path / "none.edm")):
        load_edm_detectors(key_file, [tmp_path / "none.edm"])


def test_when_registers_given_then_only_detectors_they_support(
    built: tuple[Path, dict[Kind, Path]],
) -> None:
    key_file, registers = built
    assert load_edm_detectors(key_file, []) == ()
    names = [d.name for d in load_edm_detectors(key_file, list(registers.values()))]
    assert names == ["edm_person", "edm_protected_address"]


# --- matching people -------------------------------------------------------------------

AMELIA_WITH_DOB = [
    "Amelia Hart (DOB 14/03/2015) attends Oakfield.",
    "Re: Hart, Amelia - born 14.03.2015",
    "HART Amelia 14-03-2015",
    "amelia hart, date of birth 14 March 2015",
    "Amelia Hart d.o.b. 14th Mar 2015",
    "Name: Amelia Hart\nDate of birth: 2015-03-14",
    "hart amelia 14/03/15",
    "Amélia HART, 14th of March, 2015",
    "Mrs A. Hart wrote about Amelia Hart's school (dob 14/03/2015)",
]


@pytest.mark.parametrize("text", AMELIA_WITH_DOB)
def test_when_name_with_own_date_of_birth_then_high_record_match(
    person: PersonDetector, text: str
) -> None:
    hits = person.scan(text)

    assert best(hits) is Confidence.HIGH
    values = {hit.value for hit in hits if hit.confidence is Confidence.HIGH}
    assert len(values) == 1
    (value,) = values
    assert person.case_of(value) == "CS-204817"
    assert person.access_of(value) is None
    assert person.redact(value) == "case subject of CS-2***17 (name and date of birth)"


def test_when_date_of_birth_far_from_the_name_in_the_same_text_then_still_high(
    person: PersonDetector,
) -> None:
    filler = "The family attended the review meeting and agreed the plan. " * 200
    assert best(person.scan("Child: Amelia Hart\n" + filler + "DOB 14/03/2015")) is Confidence.HIGH


@pytest.mark.parametrize(
    ("text", "expected", "case"),
    [
        ("Amelia Hart was seen at school today.", Confidence.MEDIUM, "CS-204817"),
        ("Saw HART, Amelia and her brother.", Confidence.MEDIUM, "CS-204817"),
        ("Leo Brennan's attendance has improved.", Confidence.MEDIUM, "CS-311092"),
        ("Gwendolyn Price, 83, lives alone.", Confidence.MEDIUM, "AS-118204"),
        ("Daniel Hart rang the office.", Confidence.LOW, "CS-204817"),
        ("Spoke to DC Ian Royce.", Confidence.LOW, "CS-204817"),
    ],
)
def test_when_name_alone_then_medium_for_subject_low_for_party(
    person: PersonDetector, text: str, expected: Confidence, case: str
) -> None:
    hits = person.scan(text)

    assert best(hits) is expected
    assert {person.case_of(hit.value) for hit in hits} == {case}


def test_when_subject_named_with_another_childs_date_of_birth_then_not_high(
    person: PersonDetector,
) -> None:
    # Noah Hart's date of birth beside Amelia's name: a sibling, not Amelia's record.
    hits = person.scan("Amelia Hart, DOB 02/11/2018")
    assert best(hits) is Confidence.MEDIUM


def test_when_both_children_with_their_dates_then_two_distinct_people(
    person: PersonDetector,
) -> None:
    hits = person.scan("Amelia Hart (14/03/2015) and Noah Hart (2 November 2018)")

    assert {hit.confidence for hit in hits} == {Confidence.HIGH}
    assert len({hit.value for hit in hits}) == 2


@pytest.mark.parametrize(
    "text",
    [
        "DOB 14/03/2015",
        "Amelia said she was happy.",
        "Mrs Hart attended.",
        "Spoke to Mrs Hart. Amelia said hello. DOB 14/03/2015",
        "Amelia Harte and Amelia Hartley",
        "hart amelia",  # lower case, another order, and no date of birth
        "the price will rise and gwendolyn knows",
        "Northshire Family Court listed the hearing.",
        "Children's Guardian report attached.",
        "Dr A Okonjo, GP",
        "Karen.Hart84",
    ],
)
def test_when_no_registered_name_then_no_person_hit(person: PersonDetector, text: str) -> None:
    assert person.scan(text) == []


def test_when_name_in_two_cases_then_one_hit_per_case(person: PersonDetector) -> None:
    hits = person.scan("Copy to Sarah Mills, solicitor.")

    assert {hit.confidence for hit in hits} == {Confidence.LOW}
    assert {person.case_of(hit.value) for hit in hits} == {"CS-204817", "CS-275530"}
    assert all(person.redact(hit.value).startswith("party of CS-2***") for hit in hits)


def test_when_restricted_party_then_value_says_so_and_recipient_is_recognised(
    person: PersonDetector,
) -> None:
    (hit,) = person.scan("Letter to Daniel Hart")

    assert person.access_of(hit.value) == "restricted"
    assert person.redact(hit.value) == "restricted party of CS-2***17 (name)"
    assert person.recipient_parties(" Dan.Hart77@GMAIL.com") == (hit.value,)
    (karen,) = person.recipient_parties("karen.hart84@hotmail.co.uk")
    assert person.access_of(karen) == "allowed"
    assert person.recipient_parties("someone.else@gmail.com") == ()


def test_when_same_person_mentioned_often_then_one_value_and_person_identity_is_stable(
    person: PersonDetector,
) -> None:
    text = "Amelia Hart. Later Amelia Hart again; HART, Amelia. DOB 14/03/2015"
    hits = person.scan(text)

    assert len(hits) == 3 and len({hit.value for hit in hits}) == 1
    without_dob = person.scan("Amelia Hart")[0].value
    assert person.person_of(hits[0].value) == person.person_of(without_dob)
    for hit in hits:
        assert text[hit.start : hit.end].lower().replace(",", "").split() in (
            ["amelia", "hart"],
            ["hart", "amelia"],
        )


def test_when_engine_groups_person_hits_then_count_is_distinct_people(
    person: PersonDetector,
) -> None:
    text = "Amelia Hart, Noah Hart and Amelia Hart again; Daniel Hart must not see this."
    (finding,) = group(scan_texts([Text("body", text)], [person]))

    assert finding.detector == "edm_person" and finding.location == "body"
    assert finding.count == 3 and finding.confidence is Confidence.MEDIUM
    assert leaked(finding.excerpt, excerpt=True) == []


def test_when_values_made_then_they_never_contain_a_name(person: PersonDetector) -> None:
    texts = [*AMELIA_WITH_DOB, "Sarah Mills", "Daniel Hart", "Leo Brennan", "Kofi Mensah"]
    values = {hit.value for text in texts for hit in person.scan(text)}

    assert len(values) >= 6
    for value in values:
        assert leaked(value) == [], value


# --- matching protected addresses ----------------------------------------------------

REFUGE_WRITTEN = [
    "Flat 2, 14 Elmwood Rd",
    "14 Elmwood Road, Flat 2, NS4 7QJ",
    "14 elmwood road northtown",
    "FLAT 2\n14 ELMWOOD ROAD\nNORTHTOWN",
    "She is staying at 14, Elmwood Rd., Northtown.",
    "flt 2 14 Elmwood Rd NS47QJ",
]
OTHER_ADDRESSES_WRITTEN = [
    ("Apartment 11, Riverside Court", "relocated victim"),
    ("Apt 11 Riverside Ct, Hollinbridge", "relocated victim"),
    ("Flat 11, Riverside Court", "relocated victim"),
    ("The Lodge, 3 Station Approach", "refuge"),
    ("3 Station Approach, Ashby Vale NS9 2LX", "refuge"),
    ("The Lodge, Station Approach", "refuge"),
    ("27 Kestrel Cl.", "safe house"),
    ("27 Kestrel Close\nNorthtown\nNS4 1BW", "safe house"),
]


@pytest.mark.parametrize("text", REFUGE_WRITTEN)
def test_when_refuge_address_written_any_way_then_high(
    address: ProtectedAddressDetector, text: str
) -> None:
    hits = address.scan(text)

    assert best(hits) is Confidence.HIGH
    (value,) = {hit.value for hit in hits}
    assert address.redact(value) == "protected address (refuge), street line matched"


@pytest.mark.parametrize(("text", "label"), OTHER_ADDRESSES_WRITTEN)
def test_when_other_protected_addresses_written_then_high_with_their_label(
    address: ProtectedAddressDetector, text: str, label: str
) -> None:
    hits = address.scan(text)

    assert best(hits) is Confidence.HIGH
    (value,) = {hit.value for hit in hits}
    assert address.redact(value).startswith(f"protected address ({label}),")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16 Elmwood Road", None),
        ("4 Elmwood Road", None),
        ("14 Elmwood Avenue", None),
        ("14 Elmwood", None),
        ("Elmwood Road", None),
        ("Flat 12, Riverside Court", None),
        ("Riverside Court, Hollinbridge", None),
        ("2 Station Approach", None),
        ("NS4 7QX", None),
        ("Elmwood Road. The meeting on 14 May was at the school.", None),
        ("NS4 7QJ", Confidence.LOW),
        ("NS4 7QJ, that is NS4 7QJ", Confidence.LOW),  # one part twice is still one part
        ("ns47qj", Confidence.LOW),
        ("Elmwood Road, NS4 7QJ", Confidence.MEDIUM),
        ("16 Elmwood Road, Northtown NS4 7QJ", Confidence.MEDIUM),
        ("Riverside Court, NS12 8TD", Confidence.MEDIUM),
    ],
)
def test_when_near_miss_then_no_high_hit(
    address: ProtectedAddressDetector, text: str, expected: Confidence | None
) -> None:
    assert best(address.scan(text)) is expected


def test_when_postcode_alone_then_excerpt_says_postcode_only(
    address: ProtectedAddressDetector,
) -> None:
    (hit,) = address.scan("Postcode NS4 7QJ")
    assert address.redact(hit.value) == "protected address (refuge), postcode only"


def test_when_two_addresses_in_one_text_then_two_distinct_values(
    address: ProtectedAddressDetector,
) -> None:
    text = "From 27 Kestrel Close to Flat 2, 14 Elmwood Road; back to 27 Kestrel Cl."
    (finding,) = group(scan_texts([Text("attachment:move.pdf", text)], [address]))

    assert finding.count == 2 and finding.confidence is Confidence.HIGH
    assert leaked(finding.excerpt, excerpt=True) == []


# --- nothing leaks: excerpts, exceptions, logs ------------------------------------------


def test_when_redacting_every_hit_then_no_value_in_any_excerpt(
    person: PersonDetector, address: ProtectedAddressDetector
) -> None:
    texts = AMELIA_WITH_DOB + REFUGE_WRITTEN + [t for t, _ in OTHER_ADDRESSES_WRITTEN]
    texts += ["Daniel Hart", "Sarah Mills", "Elmwood Road, NS4 7QJ", "NS4 7QJ"]
    excerpts = {
        detector.redact(hit.value)
        for detector in (person, address)
        for text in texts
        for hit in detector.scan(text)
    }

    assert len(excerpts) >= 8
    for excerpt in excerpts:
        assert leaked(excerpt, excerpt=True) == [], excerpt
        assert "204817" not in excerpt and "118204" not in excerpt


def test_when_loading_and_scanning_then_logs_hold_no_value(
    built: tuple[Path, dict[Kind, Path]],
) -> None:
    key_file, registers = built
    with structlog.testing.capture_logs() as logs:
        detectors = load_edm_detectors(key_file, list(registers.values()))
        for detector in detectors:
            for text in AMELIA_WITH_DOB + REFUGE_WRITTEN:
                detector.scan(text)

    assert any(entry["event"] == "edm_registers_loaded" for entry in logs)
    assert leaked(repr(logs)) == []


def test_when_every_value_is_forbidden_then_the_list_covers_the_exports() -> None:
    values = all_forbidden()
    for expected in ("amelia", "hart", "2015-03-14", "14/03/2015", "ns47qj", "ns4 7qj", "elmwood"):
        assert expected in values
    assert "cs-204817" not in values  # case references are allowed in clear


# --- normalisation -----------------------------------------------------------------


def test_when_normalising_then_case_accents_punctuation_and_abbreviations_fold() -> None:
    assert fold("ZOË") == fold("Zoë") == "zoe"
    full_width = "".join(chr(ord(char) + 0xFEE0) for char in "Amelia")  # as some PDFs have
    assert fold(full_width) == "amelia"
    assert address_tokens("Flat 2, 14 Elmwood Rd.") == ("flat", "2", "14", "elmwood", "road")
    assert address_tokens("Apt 2") == address_tokens("Apartment 2") == address_tokens("FLAT 2")
    assert address_tokens("St Mary's Rd") == address_tokens("Saint Mary's Road")
    assert address_tokens("5 Oak Ave") == address_tokens("5 oak avenue")
    assert name_key(name_tokens("Hart, Amelia")) == name_key(name_tokens("AMELIA HART"))
    assert name_tokens("DC Ian Royce") == ("ian", "royce")
    assert name_tokens("Siobhan O'Brien") == ("siobhan", "brien")
    assert postcode_key("ns4 7qj") == postcode_key("NS47QJ") == "ns47qj"
    assert postcode_key("NS4 7Q") is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "14/03/2015", "2015-03-14", "14.03.15", "14", "March", "Mar.,", "of", "14th",
                "2015", "may", "May", "1/2/2003", "31/02/2015", "x", "-", "/", ".", ",", "(",
                "3 June 2001", "12-12-2012", "2016-01-09", "9th", "sept", "2012)", "07/21/2012",
            ]
        ),
        max_size=30,
    ),
    st.lists(st.sampled_from([" ", "  ", "\n", "\t", ""]), min_size=30, max_size=30),
)  # fmt: skip
def test_when_dates_read_per_chunk_then_same_as_reading_the_whole_text(
    pieces: list[str], gaps: list[str]
) -> None:
    text = "".join(piece + gap for piece, gap in zip(pieces, gaps, strict=False))
    assert dates_in_chunks(text, set(text.split())) == dates_in(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60), st.sampled_from(AMELIA_WITH_DOB[:5]))
def test_when_record_match_surrounded_by_any_text_then_still_found(
    person: PersonDetector, before: str, after: str, text: str
) -> None:
    hits = person.scan(f"{before}\n{text}\n{after}")
    assert any(hit.confidence is Confidence.HIGH for hit in hits)
    whole = f"{before}\n{text}\n{after}"
    for hit in hits:
        assert 0 <= hit.start < hit.end <= len(whole)


# --- the fast path loses nothing ---------------------------------------------------


def _every_window(
    text: str, reader: Any, dotted: frozenset[str], lengths: Sequence[int]
) -> list[list[_Token]]:
    """Every window of every length anywhere in the text, from reading all of it: no
    anchors, no token filter, no caches of chunks. What the fast path must agree with."""
    segments: list[list[_Token]] = [[]]
    left: re.Match[str] | None = None
    for match in TOKEN.finditer(text):
        forms = reader[match.group()]
        if forms == ():
            continue  # an initial or title: part of the gap
        if forms is None:
            segments.append([])
            left = None
            continue
        if left is not None and not _gap_ok(text[left.end() : match.start()], left.group(), dotted):
            segments.append([])
        segments[-1] += [_Token(f, match.group(), match.start(), match.end()) for f in forms]
        left = match
    return [
        segment[first : first + length]
        for segment in segments
        for length in lengths
        for first in range(len(segment) - length + 1)
    ]


def _sorted(hits: list[Hit]) -> list[tuple[int, int, str, int]]:
    return sorted((hit.start, hit.end, hit.value, hit.confidence) for hit in hits)


_PIECES = [
    "Amelia", "AMELIA", "amelia", "Hart", "HART", "hart", "Hart,", "Noah", "Daniel", "Karen",
    "Sarah", "Mills", "Leo", "Brennan", "Gwendolyn", "Price", "price", "will", "Mrs", "A.", "J",
    "Elmwood", "elmwood", "Rd", "Rd.", "Road", "14", "16", "2", "Flat", "flat", "Apt", "11",
    "Riverside", "Ct", "Court", "The", "the", "Lodge", "Station", "Approach", "3", "27",
    "Kestrel", "Close", "Cl.", "NS4", "7QJ", "NS47QJ", "ns4", "1BW", "NS12", "8TD", "DOB",
    "14/03/2015", "2015-03-14", "2/11/2018", "said", "and", "Northtown", "Amélia", "Zoë",
]  # fmt: skip
_SEPARATORS = [" ", " ", " ", ", ", ". ", "\n", "\n\n", "-", "'s ", "  ", "; ", " (", ") "]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=60),
    st.lists(st.sampled_from(_SEPARATORS), min_size=60, max_size=60),
)
def test_when_fast_path_compared_with_reading_every_window_then_same_hits(
    person: PersonDetector, address: ProtectedAddressDetector, words: list[str], gaps: list[str]
) -> None:
    text = "".join(word + gap for word, gap in zip(words, gaps, strict=False))
    # Internals on purpose: the reference feeds every window to the same matching step.
    everyone = _every_window(text, person._reader, frozenset(), person._lengths)
    assert _sorted(person.scan(text)) == _sorted(person._match(text, everyone, None))
    dotted = frozenset(ADDRESS_WORDS)
    windows = [
        (Keyed.ADDRESS, w) for w in _every_window(text, address._reader, dotted, address._lengths)
    ]
    windows += [(Keyed.POSTCODE, w) for w in _every_window(text, address._reader, dotted, (1, 2))]
    assert _sorted(address.scan(text)) == _sorted(address._match(windows))


# --- speed and bounded cost ----------------------------------------------------------


def test_when_text_is_nothing_but_anchor_words_then_bounded_time(
    person: PersonDetector, address: ProtectedAddressDetector
) -> None:
    texts = ["Amelia Hart, " * 20_000, "Elmwood " * 30_000, "Flat 2, 14 Elmwood Rd, " * 10_000]
    started = time.perf_counter()
    for text in texts:
        person.scan(text)
        address.scan(text)
    # Generous for slow CI; quadratic work would take minutes.
    assert time.perf_counter() - started < 10.0


def test_when_long_run_of_register_words_then_matches_past_its_cut_still_found(
    person: PersonDetector,
) -> None:
    # 6,000 name words in a row are read in parts; a name across a cut must not be lost.
    text = "Amelia Hart " * 3_000 + "Leo Brennan"
    hits = person.scan(text)
    assert sum(1 for hit in hits if person.case_of(hit.value) == "CS-311092") == 1
    amelia = [hit for hit in hits if person.case_of(hit.value) == "CS-204817"]
    assert len({(hit.start, hit.end) for hit in amelia}) == 2 * 3_000 - 1


def test_when_many_different_texts_then_caches_stay_bounded_and_results_unchanged(
    person: PersonDetector,
) -> None:
    rng = random.Random(5)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(25):  # 250,000 new words: more than the caches hold
        words = ["".join(rng.choice(letters) for _ in range(8)) for _ in range(10_000)]
        person.scan(" ".join(words))
    # Internals on purpose: the bound is the point.
    assert len(person._tokens._clean_chunks) <= _CHUNK_CACHE
    assert len(person._tokens._clean_words) <= _TOKEN_CACHE
    assert best(person.scan("Amelia Hart, DOB 14/03/2015")) is Confidence.HIGH


def test_when_shipped_exports_compared_then_unchanged_from_the_example_council() -> None:
    shared = ROOT.parent / "shared" / "example-council"
    if not shared.is_dir():
        pytest.skip("the shared example council is not next to this checkout")
    for name in ("cases", "case_parties", "protected_addresses", "domains", "staff"):
        assert (COUNCIL / f"{name}.csv").read_bytes() == (shared / f"{name}.csv").read_bytes()


def _message(*parts: tuple[str, str]) -> Document:
    return Document(
        subject="", headers=(), parts=tuple(Part(where, "text", text) for where, text in parts)
    )


def test_when_name_in_body_and_date_of_birth_in_attachment_then_one_high_record_match(
    person: PersonDetector,
) -> None:
    document = _message(
        ("body", "Please see the referral for Amelia Hart attached."),
        ("attachment:referral.docx", "Child's date of birth: 14/03/2015. School: Northtown."),
    )
    findings = {f.detector: f for f in detect_findings(document, [person])}
    finding = findings["edm_person"]
    assert (finding.location, finding.confidence, finding.count) == ("body", Confidence.HIGH, 1)
    assert "name and date of birth" in finding.excerpt


def test_when_another_childs_date_of_birth_is_elsewhere_in_the_message_then_not_high(
    person: PersonDetector,
) -> None:
    document = _message(
        ("body", "Please see the referral for Amelia Hart attached."),
        ("attachment:referral.docx", "Date of birth: 02/11/2018."),
    )
    [finding] = [f for f in detect_findings(document, [person]) if f.detector == "edm_person"]
    assert finding.confidence is Confidence.MEDIUM


def test_when_a_case_subject_is_named_then_the_message_refers_to_their_case(
    person: PersonDetector,
) -> None:
    subject = detect_message(_message(("body", "Notes on Amelia Hart's school visit.")), [person])
    assert subject.cases == ("CS-204817",)
    # A solicitor acting in two cases names neither of them.
    party = detect_message(_message(("body", "Call Sarah Mills about it.")), [person])
    assert party.cases == ()


# ---- exports hashed at start (the example council's shipped config) ----------------


def test_when_exports_configured_then_they_match_like_registers_and_log_no_value(
    tmp_path: Path,
) -> None:
    exports = copy_exports(tmp_path)
    with structlog.testing.capture_logs() as logs:
        person, address = load_edm_detectors(
            None, [], {kind: [path] for kind, path in exports.items()}
        )
    assert isinstance(person, PersonDetector) and isinstance(address, ProtectedAddressDetector)
    (hit,) = person.scan("Amelia Hart, born 14/03/2015")
    assert hit.confidence is Confidence.HIGH and person.case_of(hit.value) == "CS-204817"
    assert {h.confidence for h in address.scan(REFUGE_WRITTEN[0])} == {Confidence.HIGH}
    hashed = [entry for entry in logs if entry["event"] == "edm_export_hashed"]
    assert sorted(Path(entry["file"]).name for entry in hashed) == sorted(
        f"{kind}.csv" for kind in KINDS
    )
    assert all(entry["skipped"] == 0 for entry in hashed)
    assert leaked(repr(logs)) == []


def test_when_same_exports_read_in_two_processes_then_they_hash_alike(tmp_path: Path) -> None:
    # The decider (relay process) and the scanning workers must agree on every hash.
    exports = copy_exports(tmp_path)
    script = (
        "import sys; from pathlib import Path;"
        "from smtpguard.detect.edm import load_edm_detectors;"
        "(p,) = load_edm_detectors(None, [], {'case_parties': [Path(sys.argv[1])]});"
        "print(sorted(h.value for h in p.scan('Daniel Hart and Karen Hart')))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", script, str(exports["case_parties"])],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[-1]  # after structlog's own lines
        for _ in range(2)
    }
    assert len(runs) == 1 and runs != {"[]"}


def test_when_an_export_has_a_bad_row_then_config_is_refused_naming_file_and_line(
    tmp_path: Path,
) -> None:
    exports = copy_exports(tmp_path)
    cases = exports["cases"]
    cases.write_text(cases.read_text() + "CS-100002,children,Ella Stone,31/31/2019,no\n")
    config = write_config(tmp_path, {"detect": {"edm": {"exports": {"cases": str(cases)}}}})

    with pytest.raises(ConfigError) as caught:
        load_config(config)

    text = str(caught.value)
    assert f"{cases}:" in text and "subject_dob" in text
    assert "Ella" not in text and "31/31/2019" not in text


@pytest.mark.parametrize(
    ("edm", "reason"),
    [
        ({}, "give registers (with key_file) or exports"),
        ({"registers": ["cases.edm"]}, "registers need the key_file"),
        ({"exports": {"cases": []}}, "needs at least one CSV file"),
        ({"exports": {"people": ["cases.csv"]}}, "people"),
    ],
)
def test_when_edm_section_incomplete_then_config_says_what_is_missing(
    tmp_path: Path, edm: dict[str, Any], reason: str
) -> None:
    config = write_config(tmp_path, {"detect": {"edm": edm}})
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert reason in str(caught.value)


def test_when_an_export_changes_then_the_detectors_are_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_RECHECK_SECONDS", 0.0)
    exports = copy_exports(tmp_path)
    settings = DetectConfig(edm=EdmConfig(exports={"cases": (exports["cases"],)}))
    before = configured_detectors(settings)
    assert before is configured_detectors(settings)
    cases = exports["cases"]
    cases.write_text(cases.read_text() + "CS-100001,children,Ella Stone,2019-02-03,no\n")

    after = configured_detectors(settings)

    assert after is not before
    (person,) = [d for d in after.detectors if isinstance(d, PersonDetector)]
    assert [h.confidence for h in person.scan("Ella Stone, 03/02/2019")] == [Confidence.HIGH]
