"""Domain groups: the example council's file, wildcards against bare domains, IDN, every mistake."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from smtpguard.decide.domains import (
    DomainGroups,
    load_domain_groups,
    normalise_domain,
    parse_domain_groups,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example" / "domains.csv"


@pytest.fixture(scope="module")
def example() -> DomainGroups:
    return load_domain_groups(EXAMPLE)


@pytest.mark.parametrize(
    "domain, groups",
    [
        ("northshire.gov.uk", ("internal", "secure")),
        ("team.northshire.gov.uk", ("internal", "secure")),
        ("a.b.northshire.gov.uk", ("internal", "secure")),
        ("NorthShire.Gov.UK.", ("internal", "secure")),
        ("nhs.net", ("secure",)),
        ("mail.nhs.net", ()),  # an exact entry does not cover subdomains
        ("cjsm.net", ("secure",)),
        ("met.pnn.police.uk", ("secure",)),
        ("northshire.pnn.police.uk", ("secure",)),
        ("pnn.police.uk", ()),  # `*.` does not cover the bare domain
        ("justice.gov.uk", ("secure",)),  # exact and through *.gov.uk: once
        ("cafcass.gov.uk", ("secure",)),
        ("education.gov.uk", ("secure",)),
        ("hmcts.gov.uk", ("secure",)),
        ("gov.uk", ()),
        ("oakfield.northshire.sch.uk", ("partner",)),
        ("sch.uk", ()),
        ("millsandco-solicitors.co.uk", ("partner",)),
        ("brightwaterlaw.co.uk", ("partner",)),
        ("northshire-fostering.org.uk", ("partner",)),
        ("safehaven-refuge.org.uk", ("partner",)),
        ("gmail.com", ("webmail",)),
        ("googlemail.com", ("webmail",)),
        ("hotmail.co.uk", ("webmail",)),
        ("btinternet.com", ("webmail",)),
        ("gcsx.gov.uk", ("obsolete", "secure")),  # most specific first
        ("x.gcsx.gov.uk", ("obsolete", "secure")),
        ("gsi.gov.uk", ("obsolete", "secure")),
        ("gse.gov.uk", ("obsolete", "secure")),
        ("gsx.gov.uk", ("secure",)),  # only *.gsx.gov.uk is listed
        ("x.gsx.gov.uk", ("obsolete", "secure")),
        ("example.org", ()),
        ("", ()),
    ],
)
def test_example_council_domain_has_its_groups(
    example: DomainGroups, domain: str, groups: tuple[str, ...]
) -> None:
    assert example.groups_of(domain) == groups


def test_every_row_of_the_example_file_is_its_group_first(example: DomainGroups) -> None:
    with EXAMPLE.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 30
    for row in rows:
        domain, group = row["domain"], row["group"]
        probe = "host." + domain[2:] if domain.startswith("*.") else domain
        assert example.groups_of(probe)[0] == group, domain
        if domain.startswith("*."):
            assert group not in example.groups_of("host.other-" + domain[2:]), domain


def test_known_is_the_exact_entries_and_internal_is_the_internal_group(
    example: DomainGroups,
) -> None:
    assert len(example.known) == 23
    assert "nhs.net" in example.known
    assert "gov.uk" not in example.known
    assert not any(d.startswith("*") for d in example.known)
    assert example.patterns == example.known | {
        "*.northshire.gov.uk",
        "*.pnn.police.uk",
        "*.gov.uk",
        "*.sch.uk",
        "*.gcsx.gov.uk",
        "*.gsi.gov.uk",
        "*.gsx.gov.uk",
    }
    assert example.internal_domains == {"northshire.gov.uk", "*.northshire.gov.uk"}
    assert example.group_names == {"internal", "secure", "partner", "webmail", "obsolete"}
    assert example.is_internal("social.care.northshire.gov.uk")
    assert not example.is_internal("northshire-fostering.org.uk")


@pytest.mark.parametrize("listed", ["xn--mnchen-3ya.de", "münchen.de", "MÜNCHEN.DE."])
@pytest.mark.parametrize("asked", ["xn--mnchen-3ya.de", "XN--MNCHEN-3YA.DE", "münchen.de"])
def test_idn_in_punycode_and_unicode_are_one_domain(listed: str, asked: str) -> None:
    groups = parse_domain_groups(f"domain,group\n{listed},partner\n*.{listed},partner\n")
    assert groups.known == {"münchen.de"}
    assert groups.groups_of(asked) == ("partner",)
    assert groups.groups_of("rathaus." + asked) == ("partner",)


def test_exact_and_wildcard_of_one_base_may_differ() -> None:
    groups = parse_domain_groups("domain,group\nexample.org,partner\n*.example.org,webmail\n")
    assert groups.groups_of("example.org") == ("partner",)
    assert groups.groups_of("mail.example.org") == ("webmail",)


def test_the_longest_wildcard_comes_first() -> None:
    text = "domain,group\n*.uk,foreign_ish\n*.gov.uk,secure\n*.team.x.gov.uk,special\n"
    groups = parse_domain_groups(text)
    assert groups.groups_of("a.team.x.gov.uk") == ("special", "secure", "foreign_ish")


def test_spreadsheet_exports_load(tmp_path: Path) -> None:
    """A byte-order mark, CRLF, blank and comment rows, extra columns, header case."""
    path = tmp_path / "domains.csv"
    text = (
        " Domain , GROUP ,note\r\n\r\n# partners\r\nnhs.net , secure ,NHSmail\r\n"
        '"*.sch.uk",partner,\r\n'
    )
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    groups = load_domain_groups(path)
    assert groups.groups_of("nhs.net") == ("secure",)
    assert groups.groups_of("oakfield.northshire.sch.uk") == ("partner",)


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("", 1, "the file is empty: expected the header domain,group"),
        ("domain\nnhs.net\n", 1, "missing column(s) group (the header must name domain,group)"),
        ("name,team\nnhs.net,x\n", 1, "missing column(s) domain, group"),
        ("domain,group,domain\nnhs.net,secure,x\n", 1, "column(s) domain named twice"),
        ("domain,group\n,secure\n", 2, "the domain is empty"),
        ("domain,group\nnhs.net,\n", 2, "the group is empty"),
        ("domain,group\nnhs.net\n", 2, "the group is empty"),
        ("domain,group\nnhs..net,secure\n", 2, "nhs..net is not a valid domain name"),
        ("domain,group\nnhs.net..,secure\n", 2, "nhs.net. is not a valid domain name"),
        ("domain,group\nfoo_bar.com,secure\n", 2, "foo_bar.com is not a valid domain name"),
        ("domain,group\n-nhs.net,secure\n", 2, "-nhs.net is not a valid domain name"),
        ("domain,group\nxn--zz.com,secure\n", 2, "xn--zz.com is not a valid domain name"),
        (
            "domain,group\nj.bloggs@nhs.net,secure\n",
            2,
            "j.bloggs@nhs.net is an address: write only the part after @",
        ),
        ("domain,group\n10.1.2.3,secure\n", 2, "10.1.2.3 is an IP address"),
        ("domain,group\nlocalhost,internal\n", 2, "localhost is not a mail domain"),
        ("domain,group\nnhs.*.net,secure\n", 2, "nhs.*.net: a wildcard is only allowed as a"),
        ("domain,group\n*.*.gov.uk,secure\n", 2, "*.*.gov.uk: a wildcard is only allowed as"),
        ("domain,group\n*nhs.net,secure\n", 2, "*nhs.net: a wildcard is only allowed as a"),
        ("domain,group\n*.,secure\n", 2, "the wildcard base is empty"),
        ("domain,group\nnhs.net,Secure\n", 2, "group 'Secure' must be a lower-case name"),
        ("domain,group\nnhs.net,secure mail\n", 2, "group 'secure mail' must be a lower-case"),
        ("domain,group\nnhs.net,external\n", 2, "group external is reserved"),
        ("domain,group\nnhs.net,secure,nhsmail\n", 2, "3 values but the header has 2 columns"),
        (
            "domain,group\nnhs.net,secure\n\nNHS.net.,secure\n",
            4,
            "duplicate row: nhs.net is already on line 2",
        ),
        (
            "domain,group\nnhs.net,secure\nnhs.net,webmail\n",
            3,
            "nhs.net is listed in two groups: secure (line 2) and webmail",
        ),
        (
            "domain,group\n*.gov.uk,secure\n*.GOV.UK,obsolete\n",
            3,
            "*.gov.uk is listed in two groups: secure (line 2) and obsolete",
        ),
        (
            "domain,group\nmünchen.de,partner\nxn--mnchen-3ya.de,partner\n",
            3,
            "duplicate row: münchen.de is already on line 2",
        ),
        ('domain,group\n"nhs\n.net",secure\ngmail.com,webmail,x\n', 4, "3 values but"),
    ],
)
def test_each_mistake_is_refused_with_its_line(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = tmp_path / "domains.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        load_domain_groups(path)
    assert f"{path}:{line}: {reason}" in str(caught.value)


def test_every_mistake_in_the_file_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "domains.csv"
    path.write_text("domain,group\nnhs.net,Secure\ngmail.com,webmail\nfoo_bar.com,x\n")
    with pytest.raises(ValueError) as caught:
        load_domain_groups(path)
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:2", f"{path}:4"]


def test_text_that_is_not_utf8_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "domains.csv"
    path.write_bytes(b"domain,group\nnhs.net,secure\nm\xfcnchen.de,partner\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: not UTF-8 text$"):
        load_domain_groups(path)


def test_a_missing_file_is_a_value_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot read"):
        load_domain_groups(path)


@pytest.mark.parametrize(
    "raw, normal",
    [
        (" NHS.Net. ", "nhs.net"),
        ("xn--mnchen-3ya.de", "münchen.de"),
        ("München.DE", "münchen.de"),
        ("xn--afcass-hrf.gov.uk", "\u0441afcass.gov.uk"),
    ],
)
def test_normal_form(raw: str, normal: str) -> None:
    assert normalise_domain(raw) == normal
