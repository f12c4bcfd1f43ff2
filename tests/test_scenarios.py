"""The breach scenarios B1-B8 of DESIGN.md end to end, and the ordinary mail that must pass.

Each test runs the example council (Northshire: config/example, the default UK
policy config/policy.yaml, exact data match registers built under a fresh key)
in a real relay on loopback, sends real SMTP, and checks every recipient three
ways: what `smtpguard scan --json` says beforehand (same config, same store),
the recipient's state in the store, and what reached the capture sink. A
recipient held, delayed or refused must never reach the sink; a recipient the
policy passes must, and a control that is held is a failing test.

The next hop (the upstream and the secure-gateway route) is a capture sink
that offers STARTTLS with a certificate the relay verifies, as a deployment
that meets `require_tls` would be: so these tests check the decision, and a
passed recipient is delivered whichever hop its instructions pick. The
instructions themselves (`require_tls`, `route`) are checked through
`scan --json`; the last section keeps the example config's own plain next hops
and checks which of them each copy leaves through.

Everything is fictional: the example council's invented cases and NHS numbers
from the 999 test range.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import io
import itertools
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import openpyxl
import pytest
import trustme
import yaml
from reportlab.pdfgen import canvas

from smtpguard import cli
from smtpguard.relay import RelayService
from smtpguard.spool import RecipientState
from tests.conftest import RelayRunner
from tests.detect.edm_helpers import make_registers
from tests.scenarios import builders
from tests.scenarios.builders import DOCX_TYPE, XLSX_TYPE, ZIP_TYPE, message
from tests.sink import Captured, CaptureHandler, CaptureSink

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example"
POLICY = ROOT / "config" / "policy.yaml"

SENDER = "m.patel@northshire.gov.uk"  # a children's social worker (staff.csv)
# Colleagues (internal).
SUPERVISOR = "d.clarke@northshire.gov.uk"
LEGAL = "l.evans@northshire.gov.uk"
ADULTS = "t.wright@northshire.gov.uk"
DUTY_TEAM = "duty.team@childrens.northshire.gov.uk"  # *.northshire.gov.uk is internal
# CS-204817 (Amelia Hart 14/03/2015, Noah Hart 02/11/2018), from case_parties.csv.
COURT = "northshire.familycourt@justice.gov.uk"  # court, allowed (also CS-275530)
MILLS = "s.mills@millsandco-solicitors.co.uk"  # solicitor for the mother (also CS-275530)
ASH = "p.ash@brightwaterlaw.co.uk"  # solicitor for the father, allowed
GUARDIAN = "guardian.team@cafcass.gov.uk"  # children's guardian, allowed
MOTHER = "karen.hart84@hotmail.co.uk"  # allowed, on webmail
FATHER = "dan.hart77@gmail.com"  # alleged perpetrator: restricted
# CS-311092 (Leo Brennan 21/07/2012).
SCHOOL_DSL = "dsl@oakfield.northshire.sch.uk"  # allowed, partner (*.sch.uk)
MOTHERS_PARTNER = "shane.doyle@yahoo.co.uk"  # subject of the allegation: restricted
# AS-118204 (Gwendolyn Price 30/05/1941).
SON = "martin.price@gmail.com"  # subject of the safeguarding enquiry: restricted
# Addresses no case lists.
FOSTERING = "placements@northshire-fostering.org.uk"  # partner domain
SOLICITORS_COLLEAGUE = "j.reed@millsandco-solicitors.co.uk"  # partner domain, not listed

NHS_NUMBER = builders.nhs_numbers(1)[0]


class Outcome(enum.Enum):
    """What must become of one recipient: scan's action, and the store's state."""

    DELIVERED = ("pass", RecipientState.DELIVERED)
    DELAYED = ("delay", RecipientState.DELAYED)
    HELD = ("quarantine", RecipientState.HELD)
    REJECTED = ("reject", RecipientState.REJECTED)

    @property
    def action(self) -> str:
        return self.value[0]

    @property
    def state(self) -> RecipientState:
        return self.value[1]


DELIVERED, DELAYED, HELD, REJECTED = (
    Outcome.DELIVERED,
    Outcome.DELAYED,
    Outcome.HELD,
    Outcome.REJECTED,
)
SETTLED = frozenset(
    {
        RecipientState.DELIVERED,
        RecipientState.DELAYED,
        RecipientState.HELD,
        RecipientState.REJECTED,
        RecipientState.BOUNCED,
    }
)
POLL_INTERVAL = 0.2  # delivery.poll_interval below
DEFAULT_DELAY = 15 * 60  # sensitive-to-first-time-recipient in the default policy


# ---- the council ---------------------------------------------------------------


@pytest.fixture(scope="module")
def edm_settings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example registers (cases, case parties, protected addresses) under a fresh key."""
    folder = tmp_path_factory.mktemp("edm")
    key_file, registers = make_registers(folder)
    return {"key_file": str(key_file), "registers": [str(p) for p in registers.values()]}


@dataclass
class TlsCaptureHandler(CaptureHandler):
    """Also records, per captured message, whether it arrived over TLS."""

    over_tls: list[bool] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        before = len(self.messages)
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.messages) > before:
            self.over_tls.append(session.ssl is not None)
        return reply


@dataclass(frozen=True)
class NextHopTls:
    server: ssl.SSLContext
    ca_file: Path


@pytest.fixture(scope="module")
def next_hop_tls(tmp_path_factory: pytest.TempPathFactory) -> NextHopTls:
    """A certificate for the capture sink that the relay verifies against its ca_file."""
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    ca_file = folder / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    return NextHopTls(server, ca_file)


def council_config(edm: dict[str, Any], hop_port: int, ca_file: Path) -> dict[str, Any]:
    verified = {"security": "starttls", "verify_certificate": True, "ca_file": str(ca_file)}
    return {
        "upstream": {"host": "127.0.0.1", "port": hop_port, "timeout": "5s", **verified},
        "detect": {"edm": edm},
        "council": {"domains": str(EXAMPLE / "domains.csv"), "staff": str(EXAMPLE / "staff.csv")},
        "policy": {
            "file": str(POLICY),
            "routes": {"secure-gateway": {"host": "127.0.0.1", "port": hop_port, **verified}},
        },
        "delivery": {"poll_interval": f"{int(POLL_INTERVAL * 1000)}ms"},
    }


@dataclass
class Result:
    """One scenario message: what scan said, and what the relay did."""

    message_id: str
    scan: dict[str, Any]
    states: dict[str, RecipientState]
    bounce: Captured | None = None

    def verdict(self, address: str) -> dict[str, Any]:
        return dict(self.scan["recipients"][address])


def copies_in(sink: CaptureSink, message_id: str) -> list[Captured]:
    """What reached this next hop of one message (the Received header names its id)."""
    marker = f" id {message_id};".encode()
    return [c for c in sink.handler.messages if marker in c.content]


def delivered_in(sink: CaptureSink, message_id: str) -> list[str]:
    return sorted(address for c in copies_in(sink, message_id) for address in c.recipients)


@dataclass
class Council:
    service: RelayService
    sink: CaptureSink
    config: Path
    folder: Path
    _files: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def port(self) -> int:
        address = self.service.address
        assert address is not None
        return int(address[1])

    def scan(self, raw: bytes, sender: str, recipients: Sequence[str]) -> dict[str, Any]:
        """`smtpguard scan FILE --config CFG --json --from S --to R...`, in this process.

        In process because an interpreter per scan costs about a second; the same
        command line in a subprocess is checked once, below. The last line of
        stdout is the JSON object (see test_scan_json_stdout_is_one_json_object).
        """
        path = self.folder / f"scan-{next(self._files)}.eml"
        path.write_bytes(raw)
        args = ["scan", str(path), "--config", str(self.config), "--json", "--from", sender]
        for address in recipients:
            args += ["--to", address]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(args)
        result: dict[str, Any] = json.loads(out.getvalue().strip().splitlines()[-1])
        result["exit_code"] = code
        return result

    async def send(self, raw: bytes, recipients: Sequence[str], sender: str) -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=10, start_tls=False)
        await client.connect()
        try:
            errors, reply = await client.sendmail(sender, list(recipients), raw)
        finally:
            await client.quit()
        assert not errors, errors
        assert "queued as" in reply, reply
        return reply.rsplit(" ", 1)[1]

    async def settle(self, message_id: str, timeout: float = 20.0) -> dict[str, RecipientState]:
        """Wait until every recipient has an outcome (delivered, delayed, held, refused)."""
        states: dict[str, RecipientState] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = await self.service.store.load(message_id)
            if record is not None:
                states = {r.address: r.state for r in record.recipients}
                if all(state in SETTLED for state in states.values()):
                    return states
            await asyncio.sleep(0.05)
        raise AssertionError(f"message {message_id} did not settle: {states}")

    def copies(self, message_id: str) -> list[Captured]:
        return copies_in(self.sink, message_id)

    def all_over_tls(self, message_id: str) -> bool:
        handler = self.sink.handler
        assert isinstance(handler, TlsCaptureHandler)
        marker = f" id {message_id};".encode()
        return all(
            tls
            for captured, tls in zip(handler.messages, handler.over_tls, strict=True)
            if marker in captured.content
        )

    def delivered(self, message_id: str) -> list[str]:
        return delivered_in(self.sink, message_id)

    async def bounce(self, message_id: str, sender: str, timeout: float = 10.0) -> Captured:
        marker = f"Queue ID: {message_id}".encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for captured in self.sink.handler.messages:
                # A hold notice (also from <>, naming the id) may arrive first.
                is_dsn = b"multipart/report" in captured.content
                if captured.sender in ("", "<>") and marker in captured.content and is_dsn:
                    assert captured.recipients == [sender]
                    return captured
            await asyncio.sleep(0.05)
        raise AssertionError(f"no bounce for {message_id}")

    async def prime(self, address: str, sender: str = SENDER) -> None:
        """Make `address` a known correspondent: a harmless first message, delivered."""
        raw = message(sender, "Thank you", "Thanks for your time today.\n", to=[address])
        message_id = await self.send(raw, [address], sender)
        assert await self.settle(message_id) == {address: RecipientState.DELIVERED}


@pytest.fixture
async def council(
    tmp_path: Path, edm_settings: dict[str, Any], next_hop_tls: NextHopTls
) -> AsyncIterator[Council]:
    hop = CaptureSink(TlsCaptureHandler(), tls_context=next_hop_tls.server)
    await hop.start()
    runner = RelayRunner(tmp_path, hop)
    try:
        service = await runner.start(council_config(edm_settings, hop.port, next_hop_tls.ca_file))
        yield Council(service, hop, tmp_path / "smtpguard.yaml", tmp_path)
    finally:
        await runner.stop_all()
        await hop.stop()


async def check(
    council: Council,
    raw: bytes,
    expect: dict[str, Outcome],
    *,
    sender: str = SENDER,
) -> Result:
    """Scan, send and check every recipient's outcome in scan, in the store and at the sink.

    The recipients are the envelope: an address here that the headers do not
    show is a Bcc recipient.
    """
    recipients = list(expect)
    scanned = council.scan(raw, sender, recipients)  # before sending: it reads the history
    actions = {a: scanned["recipients"][a]["action"] for a in recipients}
    assert actions == {a: o.action for a, o in expect.items()}, scanned
    held = any(o is not DELIVERED for o in expect.values())
    assert scanned["exit_code"] == (1 if held else 0)

    sent_at = time.time()
    message_id = await council.send(raw, recipients, sender)
    states = await council.settle(message_id)
    assert states == {a: o.state for a, o in expect.items()}
    passed = sorted(a for a, o in expect.items() if o is DELIVERED)
    assert council.delivered(message_id) == passed
    assert council.all_over_tls(message_id)  # the next hop verifies TLS (see the docstring)
    if held:
        # A hold is for good: nothing else leaves at the next queue pass either.
        await asyncio.sleep(POLL_INTERVAL * 1.5)
        assert council.delivered(message_id) == passed
    record = await council.service.store.load(message_id)
    assert record is not None
    result = Result(message_id, scanned, states)
    if any(o is DELAYED for o in expect.values()):
        assert record.release_at is not None
        assert DEFAULT_DELAY - 60 < record.release_at - sent_at <= DEFAULT_DELAY + 5
    if any(o is REJECTED for o in expect.values()):
        result.bounce = await council.bounce(message_id, sender)
    return result


def fired(result: Result, address: str) -> list[str]:
    return list(result.verdict(address)["rules"])


# ---- documents -----------------------------------------------------------------------

AMELIA_ASSESSMENT = [
    "Parenting assessment",
    "Amelia Hart (born 14/03/2015) was seen at school on Tuesday with her class teacher.",
    "She said she did not want to go home at the weekend.",
]


def court_bundle_docx(case: str, child: str, dob: str) -> bytes:
    return builders.docx_bytes(
        [
            f"Position statement of the local authority in {case}",
            f"The child, {child} (date of birth {dob}), is subject to an interim care order.",
            "The section 47 enquiry concluded that the threshold criteria are met.",
        ]
    )


def redacted_pdf() -> bytes:
    """A "redacted" report: a black box drawn over text that is still in the page."""
    buffer = io.BytesIO()
    page = canvas.Canvas(buffer)
    page.drawString(72, 720, "Core group minutes")
    page.drawString(72, 700, "The father was arrested on 2 May following the disclosure.")
    page.setFillColorRGB(0, 0, 0)
    page.rect(70, 695, 320, 14, fill=1, stroke=0)
    page.showPage()
    page.save()
    return buffer.getvalue()


def hidden_sheet_xlsx() -> bytes:
    """A harmless summary on the visible sheet; the caseload on a hidden one."""
    book = openpyxl.Workbook()
    summary = book.active
    assert summary is not None
    summary.title = "Summary"
    summary.append(["Team", "Open cases"])
    summary.append(["Children North", 25])
    caseload = builders.caseload_rows(book.create_sheet("Caseload"), 25)
    caseload.sheet_state = "hidden"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def names_and_dobs_xlsx(count: int = 25) -> bytes:
    """A caseload export with no NHS numbers: name, date of birth (a date cell), address."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Child", "Date of birth", "Address"])
    for index, (name, _, _) in enumerate(builders.children(count)):
        born = dt.date(2008 + index % 10, 1 + index % 12, 1 + index % 28)
        sheet.append([name, born, f"{index + 1} Mill Lane, Northtown"])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


# ---- B1: case material leaves only over verified TLS or the secure route -------------


async def test_b1_case_material_to_external_parties_requires_verified_tls(
    council: Council,
) -> None:
    raw = message(
        SENDER,
        "CS-204817 hearing on 12 June",
        "Dear all,\n\nThe final hearing in CS-204817 is listed for 12 June. The local "
        "authority's updated care plan will be filed by Friday.\n\nMeera Patel\n",
        to=[COURT],
        cc=[MILLS, SUPERVISOR],
    )
    result = await check(council, raw, {COURT: DELIVERED, MILLS: DELIVERED, SUPERVISOR: DELIVERED})
    assert result.scan["cases"] == ["CS-204817"]
    for outside in (COURT, MILLS):
        verdict = result.verdict(outside)
        assert verdict["require_tls"] is True
        assert "sensitive-needs-verified-tls" in verdict["rules"]
        assert verdict["route"] is None
        assert "case_allowed" in verdict["facts"]
    assert result.verdict(SUPERVISOR)["require_tls"] is False  # internal mail stays inside


@pytest.mark.parametrize("marker", ["[secure]", "[encrypt]"])
async def test_b1_an_encryption_request_in_the_subject_routes_through_the_secure_gateway(
    council: Council, marker: str
) -> None:
    raw = message(
        SENDER,
        f"{marker} CS-204817 position statement",
        "Please find the local authority's position statement for CS-204817 below.\n",
        to=[COURT],
        cc=[LEGAL],
    )
    result = await check(council, raw, {COURT: DELIVERED, LEGAL: DELIVERED})
    court = result.verdict(COURT)
    assert court["route"] == "secure-gateway"
    assert "encryption-requested" in court["rules"]
    assert court["require_tls"] is True  # the route does not replace the TLS requirement
    assert result.verdict(LEGAL)["route"] is None  # internal mail needs no gateway


# ---- B2: the wrong address -----------------------------------------------------------


async def test_b2_case_material_to_an_unlisted_webmail_address_is_held(
    council: Council,
) -> None:
    # Autocomplete picked a near miss of the mother's address: no case lists it.
    wrong = "k.hart84@hotmail.co.uk"
    raw = message(
        SENDER,
        "Minutes of the core group",
        "Minutes of the core group meeting for CS-204817 are below.\n",
        to=[wrong],
        cc=[SUPERVISOR],
    )
    result = await check(council, raw, {wrong: HELD, SUPERVISOR: DELIVERED})
    assert "sensitive-to-unlisted-webmail" in fired(result, wrong)
    assert result.verdict(wrong)["classes"] == ["webmail"]


@pytest.mark.parametrize(
    ("address", "imitates"),
    [
        # Matches the *.gov.uk wildcard of the secure group, and is still held.
        ("guardian.team@cafcas.gov.uk", "secure"),
        ("guardian.team@cafcass.gov.uk.co", None),  # an extra label
        ("a.okonjo@nhs.net.uk", None),  # an extra label
        ("s.mills@millsandco-solicitor.co.uk", None),  # one letter missing
    ],
    ids=["cafcas.gov.uk", "cafcass.gov.uk.co", "nhs.net.uk", "millsandco-solicitor.co.uk"],
)
async def test_b2_sensitive_mail_to_a_lookalike_domain_is_held(
    council: Council, address: str, imitates: str | None
) -> None:
    raw = message(
        SENDER,
        "Report for the hearing",
        "The section 7 report for CS-204817 is below.\n",
        to=[address, GUARDIAN],
    )
    result = await check(council, raw, {address: HELD, GUARDIAN: DELIVERED})
    verdict = result.verdict(address)
    assert "lookalike" in verdict["facts"]
    assert "sensitive-to-lookalike-domain" in verdict["rules"]
    if imitates is not None:
        assert imitates in verdict["classes"]


async def test_b2_sensitive_mail_to_a_first_time_external_recipient_is_delayed_15_minutes(
    council: Council,
) -> None:
    body = f"Referral for a sibling group; the eldest's NHS number is {NHS_NUMBER}.\n"
    raw = message(SENDER, "Placement referral", body, to=[FOSTERING])
    result = await check(council, raw, {FOSTERING: DELAYED})
    verdict = result.verdict(FOSTERING)
    assert "first_time" in verdict["facts"]
    assert "sensitive-to-first-time-recipient" in verdict["rules"]
    assert verdict["delay_seconds"] == DEFAULT_DELAY
    assert verdict["require_tls"] is True  # B1: and never in clear once it goes

    # Once the address is a known correspondent, the same kind of mail goes at once.
    await council.prime(FOSTERING)
    again = message(SENDER, "Placement referral (2)", body, to=[FOSTERING])
    known = await check(council, again, {FOSTERING: DELIVERED})
    assert "first_time" not in known.verdict(FOSTERING)["facts"]


async def test_b2_a_parent_listed_for_the_case_on_webmail_is_delayed_the_first_time(
    council: Council,
) -> None:
    # case_allowed, but webmail is not a secure or partner domain: 15 minutes to recall.
    raw = message(
        SENDER,
        "Contact arrangements",
        "Contact arrangements for CS-204817 are confirmed for Saturday.\n",
        to=[MOTHER],
    )
    result = await check(council, raw, {MOTHER: DELAYED})
    assert {"case_allowed", "first_time"} <= set(result.verdict(MOTHER)["facts"])


async def test_obsolete_secure_domain_is_rejected_with_a_bounce_that_explains_it(
    council: Council,
) -> None:
    old = "duty.desk@northshire.gcsx.gov.uk"
    older = "family.court@gcsx.gov.uk"
    raw = message(
        SENDER, "Meeting agenda", "The agenda for Thursday is below.\n", to=[old, older, LEGAL]
    )
    result = await check(council, raw, {old: REJECTED, older: REJECTED, LEGAL: DELIVERED})
    assert fired(result, old) == ["obsolete-secure-domain"]
    assert result.bounce is not None
    bounce = result.bounce.content.decode()
    for address in (old, older):
        assert f"Final-Recipient: rfc822; {address}" in bounce
        assert f"<{address}>: 550 5.7.1 Refused by policy:" in bounce
    assert "retired government secure-mail domain" in bounce
    assert "Ask the recipient for their current address" in bounce
    assert "agenda for Thursday" not in bounce  # the bounce carries no content


# ---- B3: material to the accused ---------------------------------------------------


def _docx_in_zip(paragraphs: list[str]) -> list[tuple[str, tuple[str, str], bytes]]:
    document = builders.docx_bytes(paragraphs)
    return [("bundle.zip", ZIP_TYPE, builders.zip_bytes({"assessment.docx": document}))]


@dataclass(frozen=True)
class Restricted:
    """One B3 variant: a message naming the case, and who gets what."""

    build: Callable[[], bytes]
    expect: dict[str, Outcome]
    restricted: str
    case: str
    in_bcc: bool = False  # an envelope recipient the headers do not show


B3_VARIANTS = {
    "case-reference-restricted-in-to": Restricted(
        lambda: message(
            SENDER,
            "CS-204817 strategy discussion",
            "Outcome of the strategy discussion for CS-204817: a section 47 enquiry.\n",
            to=[FATHER, MILLS],
        ),
        {FATHER: HELD, MILLS: DELIVERED},
        FATHER,
        "CS-204817",
    ),
    "name-and-dob-restricted-in-cc": Restricted(
        lambda: message(
            SENDER,
            "Visit notes",
            "Notes of the home visit to Leo Brennan (DOB 21/07/2012) are below.\n",
            to=[SCHOOL_DSL],
            cc=[MOTHERS_PARTNER],
        ),
        {SCHOOL_DSL: DELIVERED, MOTHERS_PARTNER: HELD},
        MOTHERS_PARTNER,
        "CS-311092",
    ),
    "case-reference-restricted-in-bcc": Restricted(
        lambda: message(
            SENDER,
            "AS-118204 enquiry outcome",
            "The safeguarding enquiry AS-118204 has concluded; the outcome is below.\n",
            to=[ADULTS],
        ),
        {ADULTS: DELIVERED, SON: HELD},  # the son is in the envelope only
        SON,
        "AS-118204",
        in_bcc=True,
    ),
    "name-and-dob-in-docx-in-zip": Restricted(
        lambda: message(
            SENDER,
            "Documents",
            "Please find the documents attached.\n",
            to=[FATHER],
            cc=[MILLS],
            attachments=_docx_in_zip(AMELIA_ASSESSMENT),
        ),
        {FATHER: HELD, MILLS: DELIVERED},
        FATHER,
        "CS-204817",
    ),
    "name-and-dob-in-docx-in-zip-restricted-in-bcc": Restricted(
        lambda: message(
            SENDER,
            "Documents",
            "Please find the documents attached.\n",
            to=[MILLS],
            attachments=_docx_in_zip(
                ["Noah Hart, date of birth 2 November 2018, attends Little Acorns nursery."]
            ),
        ),
        {MILLS: DELIVERED, FATHER: HELD},
        FATHER,
        "CS-204817",
        in_bcc=True,
    ),
    "restricted-address-spelled-in-capitals": Restricted(
        lambda: message(
            SENDER,
            "CS-204817 strategy discussion",
            "Outcome of the strategy discussion for CS-204817.\n",
            to=["Dan.Hart77@Gmail.com"],
        ),
        {"Dan.Hart77@Gmail.com": HELD},
        "Dan.Hart77@Gmail.com",
        "CS-204817",
    ),
    "docx-in-zip-in-a-forwarded-message": Restricted(
        lambda: builders.forward(
            SENDER,
            "Fwd: Documents",
            "Forwarding as requested.\n",
            message(
                "s.mills@millsandco-solicitors.co.uk",
                "Documents",
                "Please find the documents attached.\n",
                to=[SENDER],
                attachments=_docx_in_zip(AMELIA_ASSESSMENT),
            ),
            to=[FATHER],
        ),
        {FATHER: HELD},
        FATHER,
        "CS-204817",
    ),
    "child-named-without-dob": Restricted(
        lambda: message(
            SENDER,
            "School",
            "Amelia Hart is settled at school and enjoying her swimming lessons.\n",
            to=[FATHER],
        ),
        {FATHER: HELD},
        FATHER,
        "CS-204817",
    ),
}


@pytest.mark.parametrize("variant", list(B3_VARIANTS))
async def test_b3_case_material_to_a_restricted_party_is_held_for_two_reviewers(
    council: Council, variant: str
) -> None:
    scenario = B3_VARIANTS[variant]
    result = await check(council, scenario.build(), scenario.expect)
    assert result.scan["cases"] == [scenario.case]
    verdict = result.verdict(scenario.restricted)
    assert "case_restricted" in verdict["facts"]
    assert ("visible" not in verdict["facts"]) is scenario.in_bcc
    assert "case-material-to-restricted-party" in verdict["rules"]
    assert verdict["approvals"] == 2


async def test_b3_one_message_is_delivered_delayed_held_and_refused_per_recipient(
    council: Council,
) -> None:
    old_address = "childrens.legal@northshire.gsi.gov.uk"
    raw = message(
        SENDER,
        "CS-204817 child protection conference",
        "The child protection conference for CS-204817 is on Monday at 10am.\n",
        to=[MOTHER],
        cc=[FATHER, old_address],
    )
    result = await check(
        council,
        raw,
        # the mother: allowed, on webmail, first time; the father: restricted; the
        # mother's solicitor in Bcc: allowed, partner; a retired GSi address.
        {MOTHER: DELAYED, FATHER: HELD, MILLS: DELIVERED, old_address: REJECTED},
    )
    assert result.verdict(FATHER)["approvals"] == 2
    assert result.bounce is not None
    # Only the refused address is reported as failed; the others were not refused.
    failed = re.findall(rb"Final-Recipient: rfc822; (\S+)", result.bounce.content)
    assert failed == [old_address.encode()]


async def test_b3_the_case_is_found_inside_a_docx_inside_a_zip(council: Council) -> None:
    raw = message(
        SENDER,
        "Documents",
        "Please find the documents attached.\n",
        to=[FATHER],
        attachments=_docx_in_zip(AMELIA_ASSESSMENT),
    )
    result = await check(council, raw, {FATHER: HELD})
    [person] = [f for f in result.scan["findings"] if f["detector"] == "edm_person"]
    assert person["location"] == "attachment:bundle.zip/assessment.docx"
    assert person["confidence"] == "high"  # name and date of birth together
    assert "Amelia" not in json.dumps(result.scan)  # scan shows no value


# ---- B4: the wrong case, the wrong family -------------------------------------------


async def test_b4_two_cases_references_to_an_external_party_are_held(council: Council) -> None:
    # The solicitor is allowed for both cases: the mix is what is held.
    raw = message(
        SENDER,
        "Updates",
        "Update on CS-204817 attached. I have also included the chronology for CS-275530.\n",
        to=[MILLS],
        cc=[LEGAL],
    )
    result = await check(council, raw, {MILLS: HELD, LEGAL: DELIVERED})
    assert result.scan["cases"] == ["CS-204817", "CS-275530"]
    assert "mixed-cases-outside-council" in fired(result, MILLS)


async def test_b4_one_case_by_reference_and_another_by_a_childs_name_is_held(
    council: Council,
) -> None:
    raw = message(
        SENDER,
        "CS-204817 care plan",
        "The care plan for CS-204817 is attached.\n",
        to=[COURT],
        attachments=[
            (
                "care-plan.docx",
                DOCX_TYPE,
                builders.docx_bytes(["Care plan for Maisie Whitlock (DOB 09/01/2016)."]),
            )
        ],
    )
    result = await check(council, raw, {COURT: HELD})
    assert result.scan["cases"] == ["CS-204817", "CS-275530"]
    assert "mixed-cases-outside-council" in fired(result, COURT)


async def test_b4_one_familys_material_to_another_familys_parent_is_held(
    council: Council,
) -> None:
    # The mother of CS-204817 is a known correspondent; the report is CS-275530's.
    await council.prime(MOTHER)
    raw = message(
        SENDER,
        "Report",
        "Report on Maisie Whitlock (DOB 09/01/2016) for the hearing.\n",
        to=[MOTHER],
    )
    result = await check(council, raw, {MOTHER: HELD})
    assert result.scan["cases"] == ["CS-275530"]
    verdict = result.verdict(MOTHER)
    assert "case_unlisted" in verdict["facts"]
    assert "case-material-to-other-case-party" in verdict["rules"]


# ---- B5: family-court documents to the wrong party -----------------------------------


async def test_b5_court_bundle_to_a_partner_address_the_case_does_not_list_is_held(
    council: Council,
) -> None:
    # The mother's solicitor's colleague, at the same firm: a partner domain, not listed.
    raw = message(
        SENDER,
        "CS-204817 court bundle",
        "The local authority's bundle for the hearing is attached.\n",
        to=[SOLICITORS_COLLEAGUE],
        cc=[MILLS],
        attachments=[
            (
                "bundle.docx",
                DOCX_TYPE,
                court_bundle_docx("CS-204817", "Amelia Hart", "14/03/2015"),
            )
        ],
    )
    result = await check(council, raw, {SOLICITORS_COLLEAGUE: HELD, MILLS: DELIVERED})
    verdict = result.verdict(SOLICITORS_COLLEAGUE)
    assert verdict["classes"] == ["partner"]
    assert "case-material-to-unlisted-partner" in verdict["rules"]


async def test_b5_court_bundle_to_parties_of_another_case_is_held(council: Council) -> None:
    # CS-275530's bundle: its court and the mother's solicitor are listed for it; the
    # father's solicitor and the guardian team are listed only for CS-204817.
    raw = message(
        SENDER,
        "CS-275530 court bundle",
        "The local authority's bundle for the hearing is attached.\n",
        to=[COURT, MILLS],
        cc=[ASH, GUARDIAN],
        attachments=[
            (
                "bundle.docx",
                DOCX_TYPE,
                court_bundle_docx("CS-275530", "Maisie Whitlock", "09/01/2016"),
            )
        ],
    )
    result = await check(
        council, raw, {COURT: DELIVERED, MILLS: DELIVERED, ASH: HELD, GUARDIAN: HELD}
    )
    assert result.scan["cases"] == ["CS-275530"]
    for other in (ASH, GUARDIAN):
        verdict = result.verdict(other)
        assert "case_unlisted" in verdict["facts"]
        assert "case-material-to-other-case-party" in verdict["rules"]


# ---- B6: a protected address ---------------------------------------------------------


async def test_b6_refuge_address_written_differently_to_an_allowed_party_is_held_for_two(
    council: Council,
) -> None:
    # The register says "Flat 2, 14 Elmwood Road, Northtown, NS4 7QJ".
    raw = message(
        SENDER,
        "CS-204817 contact arrangements",
        "For CS-204817: the mother and children are now at 14 Elmwood Rd, Flat 2, NS4 7QJ.\n"
        "Contact will be supervised at the family centre.\n",
        to=[GUARDIAN],
        cc=[SUPERVISOR],
    )
    result = await check(council, raw, {GUARDIAN: HELD, SUPERVISOR: DELIVERED})
    verdict = result.verdict(GUARDIAN)
    assert {"case_allowed"} <= set(verdict["facts"])
    assert "secure" in verdict["classes"]
    assert "protected-address-outside-council" in verdict["rules"]
    assert verdict["approvals"] == 2
    assert "Elmwood" not in json.dumps(result.scan)


async def test_b6_refuge_address_to_a_known_court_is_still_held(council: Council) -> None:
    await council.prime(COURT)
    raw = message(
        SENDER,
        "CS-204817 address for service",
        "The mother's address for service is Flat 2, 14 Elmwood Road, Northtown NS4 7QJ.\n",
        to=[COURT],
    )
    result = await check(council, raw, {COURT: HELD})
    assert "first_time" not in result.verdict(COURT)["facts"]
    assert result.verdict(COURT)["approvals"] == 2


async def test_b6_another_protected_address_in_an_attachment_is_held(council: Council) -> None:
    raw = message(
        SENDER,
        "Placement details",
        "Placement details attached.\n",
        to=[MILLS],
        attachments=[
            (
                "placement.docx",
                DOCX_TYPE,
                builders.docx_bytes(
                    ["Placement address: The Lodge, 3 Station Approach, Ashby Vale NS9 2LX"]
                ),
            )
        ],
    )
    result = await check(council, raw, {MILLS: HELD})
    assert result.verdict(MILLS)["approvals"] == 2
    assert "protected-address-outside-council" in fired(result, MILLS)


async def test_b6_a_secure_subject_does_not_lift_the_hold(council: Council) -> None:
    raw = message(
        SENDER,
        "[secure] CS-204817 contact",
        "Handover at the refuge: Flat 2, 14 Elmwood Road, Northtown NS4 7QJ.\n",
        to=[GUARDIAN, LEGAL],
    )
    result = await check(council, raw, {GUARDIAN: HELD, LEGAL: DELIVERED})
    verdict = result.verdict(GUARDIAN)
    assert verdict["approvals"] == 2
    assert "encryption-requested" in verdict["rules"]


# ---- B7: everyone visible to everyone ---------------------------------------------

CARERS = [f"carer.{n:02d}@example.org" for n in range(1, 31)]  # foster carers' own mail
PICNIC = "Dear carers,\n\nThe summer picnic is on Saturday 6 July at Northtown Park.\n"


async def test_b7_ten_or_more_external_addresses_visible_in_to_and_cc_are_held(
    council: Council,
) -> None:
    outside = CARERS[:12]
    raw = message(SENDER, "Summer picnic", PICNIC, to=outside[:6], cc=[*outside[6:], SUPERVISOR])
    expect = {**dict.fromkeys(outside, HELD), SUPERVISOR: DELIVERED}
    result = await check(council, raw, expect)
    assert fired(result, outside[0]) == ["many-visible-external-recipients"]


async def test_b7_exactly_ten_visible_is_held_and_nine_pass(council: Council) -> None:
    ten = message(SENDER, "Summer picnic", PICNIC, to=CARERS[:10])
    await check(council, ten, dict.fromkeys(CARERS[:10], HELD))
    nine = message(SENDER, "Summer picnic", PICNIC, to=CARERS[10:19])
    await check(council, nine, dict.fromkeys(CARERS[10:19], DELIVERED))


async def test_b7_the_same_mailing_with_everyone_in_bcc_passes(council: Council) -> None:
    raw = message(SENDER, "Summer picnic", PICNIC, to=["undisclosed-recipients:;"])
    await check(council, raw, dict.fromkeys(CARERS[:12], DELIVERED))


# ---- B8: caseloads and documents that still carry the text -------------------------


def _attached(name: str, kind: tuple[str, str], data: bytes) -> bytes:
    return message(
        SENDER,
        "Documents",
        "Please see the attached.\n",
        to=[FOSTERING],
        cc=[SUPERVISOR],
        attachments=[(name, kind, data)],
    )


B8_VARIANTS: dict[str, tuple[Callable[[], bytes], str]] = {
    "caseload-xlsx-25-nhs-numbers-and-dobs": (
        lambda: _attached("caseload.xlsx", XLSX_TYPE, builders.caseload_xlsx(25)),
        "bulk-identifiers-outside-council",
    ),
    "caseload-on-a-hidden-sheet": (
        lambda: _attached("summary.xlsx", XLSX_TYPE, hidden_sheet_xlsx()),
        "hidden-content-outside-council",
    ),
    "docx-with-a-comment": (
        lambda: _attached(
            "letter.docx",
            DOCX_TYPE,
            builders.docx_bytes(
                ["Dear Ms Carter,", "Thank you for your letter about the placement."],
                comment=(
                    "Thank you for your letter about the placement.",
                    "Do not mention the police investigation into the uncle.",
                ),
            ),
        ),
        "hidden-content-outside-council",
    ),
    "docx-with-hidden-text": (
        lambda: _attached(
            "letter.docx",
            DOCX_TYPE,
            builders.docx_bytes(
                ["Dear Ms Carter,", "Thank you for your letter about the placement."],
                hidden="Uncle under police investigation; do not disclose.",
            ),
        ),
        "hidden-content-outside-council",
    ),
    "pdf-with-text-under-a-redaction-box": (
        lambda: _attached("minutes.pdf", ("application", "pdf"), redacted_pdf()),
        "redaction-failure-outside-council",
    ),
}


@pytest.mark.parametrize("variant", list(B8_VARIANTS))
async def test_b8_caseloads_and_hidden_text_going_outside_are_held(
    council: Council, variant: str
) -> None:
    build, rule = B8_VARIANTS[variant]
    result = await check(council, build(), {FOSTERING: HELD, SUPERVISOR: DELIVERED})
    assert rule in fired(result, FOSTERING)


def test_the_caseload_uses_valid_nhs_numbers_from_the_test_range() -> None:
    numbers = builders.nhs_numbers(25)
    assert len(set(numbers)) == 25
    assert all(n.startswith("999") and builders.is_valid_nhs_number(n) for n in numbers)
    assert not builders.is_valid_nhs_number("999 000 0001")


async def test_b8_caseload_of_names_and_dates_of_birth_without_nhs_numbers_is_held(
    council: Council,
) -> None:
    raw = _attached("caseload.xlsx", XLSX_TYPE, names_and_dobs_xlsx(25))
    result = await check(council, raw, {FOSTERING: HELD, SUPERVISOR: DELIVERED})
    assert "bulk-identifiers-outside-council" in fired(result, FOSTERING)


# ---- controls: ordinary council mail passes untouched --------------------------------


async def test_control_internal_mail_with_case_material_passes(council: Council) -> None:
    raw = message(
        SENDER,
        "Supervision: CS-204817 and CS-311092",
        "Supervision notes.\n\nCS-204817: Amelia Hart (DOB 14/03/2015), section 47 enquiry "
        f"ongoing, NHS number {NHS_NUMBER}. The mother is at Flat 2, 14 Elmwood Road, "
        "Northtown NS4 7QJ.\nCS-311092: Leo Brennan (DOB 21/07/2012), core group on Monday.\n",
        to=[SUPERVISOR],
        cc=[LEGAL, DUTY_TEAM],
        attachments=[
            ("caseload.xlsx", XLSX_TYPE, builders.caseload_xlsx(25)),
            (
                "draft.docx",
                DOCX_TYPE,
                builders.docx_bytes(
                    ["Draft letter to the family."], comment=("Draft letter to the family.", "ok?")
                ),
            ),
        ],
    )
    result = await check(council, raw, dict.fromkeys([SUPERVISOR, LEGAL, DUTY_TEAM], DELIVERED))
    assert result.scan["cases"] == ["CS-204817", "CS-311092"]
    for colleague in (SUPERVISOR, LEGAL, DUTY_TEAM):
        assert result.verdict(colleague)["rules"] == []


async def test_control_court_bundle_to_the_cases_own_court_and_solicitors_passes_first_time(
    council: Council,
) -> None:
    raw = message(
        SENDER,
        "CS-204817 court bundle",
        "Dear all,\n\nThe local authority's bundle for the hearing on 12 June is attached.\n",
        to=[COURT],
        cc=[MILLS, ASH],
        attachments=[
            (
                "bundle.docx",
                DOCX_TYPE,
                court_bundle_docx("CS-204817", "Amelia Hart", "14/03/2015"),
            ),
            (
                "assessment.zip",
                ZIP_TYPE,
                builders.zip_bytes({"assessment.docx": builders.docx_bytes(AMELIA_ASSESSMENT)}),
            ),
        ],
    )
    result = await check(council, raw, {COURT: DELIVERED, MILLS: DELIVERED, ASH: DELIVERED})
    for party in (COURT, MILLS, ASH):
        assert {"case_allowed", "first_time"} <= set(result.verdict(party)["facts"])


async def test_control_newsletter_to_30_bcc_recipients_passes(council: Council) -> None:
    raw = message(
        SENDER,
        "Fostering newsletter - summer",
        "Dear carers,\n\nThis summer's training dates are on the website, and the picnic is "
        "on Saturday 6 July at Northtown Park. Call the fostering team on 01632 960 123 "
        "with any questions.\n\nNorthshire Fostering Service\n",
        to=["Northshire Fostering <fostering@northshire.gov.uk>"],
    )
    await check(council, raw, dict.fromkeys(CARERS, DELIVERED))


@pytest.mark.parametrize("sender", [SENDER, ""], ids=["from-the-user", "null-sender"])
async def test_control_out_of_office_reply_to_an_external_address_passes(
    council: Council, sender: str
) -> None:
    raw = message(
        SENDER,
        "Automatic reply: Parents' evening",
        "Thank you for your email. I am on annual leave until Monday 3 June.\n\n"
        "For urgent safeguarding concerns please contact the Children's Advice and Duty "
        "Service on 01632 960 000, or the Emergency Duty Team out of hours on 01632 960 001. "
        "If a child is in immediate danger, call 999.\n\n"
        "Meera Patel\nSocial Worker, Children's Services\nNorthshire County Council\n",
        to=["headteacher@example.org"],
        headers=[("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All")],
    )
    await check(council, raw, {"headteacher@example.org": DELIVERED}, sender=sender)


REFUGE_SIGNATURE = (
    "Hi Sam,\n\nThanks for sending the training dates; Tuesday suits our team.\n\n"
    "Meera Patel\nSocial Worker, Children's Services\n"
    "Northshire Women's Refuge helpline: 0808 000 0123 (24 hours, free)\n"
)


@pytest.mark.parametrize("known", [True, False], ids=["known-correspondent", "first-time"])
async def test_control_refuge_only_in_a_signature_passes(council: Council, known: bool) -> None:
    trainer = "sam.trainer@example.org"
    if known:
        await council.prime(trainer)
    raw = message(SENDER, "Re: training dates", REFUGE_SIGNATURE, to=[trainer])
    result = await check(council, raw, {trainer: DELIVERED})
    assert result.verdict(trainer)["rules"] == []


# ---- scan on the command line ----------------------------------------------------------


async def test_scan_json_stdout_is_one_json_object(council: Council) -> None:
    path = council.folder / "to-father.eml"
    path.write_bytes(
        message(SENDER, "CS-204817", "Minutes for CS-204817.\n", to=[FATHER], cc=[MILLS])
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "smtpguard",
            "scan",
            str(path),
            "--config",
            str(council.config),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr  # held
    result = json.loads(done.stdout)
    assert result["verdict"] == "quarantine"
    assert result["recipients"][FATHER]["approvals"] == 2
    assert result["recipients"][MILLS]["action"] == "pass"


# ---- the example config's own next hops ----------------------------------------------
#
# The tests above give the relay a next hop that verifies TLS, so that what they
# check is the decision. These keep the example config's own choices
# (config/smtpguard.yaml: a plain loopback upstream, the secure-gateway route, the
# tls_route for require_tls copies), each next hop a plain capture sink of its own.


@dataclass
class ExampleHops:
    council: Council
    sinks: dict[str, CaptureSink]  # "upstream" and each route of the example config

    def delivered(self, message_id: str) -> dict[str, list[str]]:
        found = {name: delivered_in(sink, message_id) for name, sink in self.sinks.items()}
        return {name: addresses for name, addresses in found.items() if addresses}


@pytest.fixture
async def example_hops(tmp_path: Path) -> AsyncIterator[ExampleHops]:
    example = yaml.safe_load((ROOT / "config" / "smtpguard.yaml").read_text(encoding="utf-8"))
    names = ["upstream", *example["policy"]["routes"]]
    sinks = {name: CaptureSink() for name in names}
    for sink in sinks.values():
        await sink.start()

    def hop(settings: dict[str, Any], name: str) -> dict[str, Any]:
        return {**settings, "host": "127.0.0.1", "port": sinks[name].port, "timeout": "5s"}

    policy: dict[str, Any] = {
        "file": str(POLICY),
        "routes": {n: hop(r, n) for n, r in example["policy"]["routes"].items()},
    }
    if example["policy"].get("tls_route"):
        policy["tls_route"] = example["policy"]["tls_route"]
    upstream = {k: v for k, v in example["upstream"].items() if k in ("security", "ca_file")}
    # The example's own exact data match: its CSV exports, hashed at start.
    exports = example["detect"]["edm"]["exports"]
    changes = {
        "upstream": hop(upstream, "upstream"),
        "detect": {
            "edm": {
                "exports": {kind: str(ROOT / "config" / path) for kind, path in exports.items()}
            }
        },
        "council": {"domains": str(EXAMPLE / "domains.csv"), "staff": str(EXAMPLE / "staff.csv")},
        "policy": policy,
        "delivery": {"poll_interval": f"{int(POLL_INTERVAL * 1000)}ms"},
    }
    runner = RelayRunner(tmp_path, sinks["upstream"])
    try:
        service = await runner.start(changes)
        council = Council(service, sinks["upstream"], tmp_path / "smtpguard.yaml", tmp_path)
        yield ExampleHops(council, sinks)
    finally:
        await runner.stop_all()
        for sink in sinks.values():
            await sink.stop()


async def test_example_hops_court_bundle_leaves_at_once_through_the_verified_tls_route(
    example_hops: ExampleHops,
) -> None:
    raw = message(
        SENDER,
        "CS-204817 court bundle",
        "The local authority's bundle for the hearing is attached.\n",
        to=[COURT],
        cc=[MILLS, ASH, SUPERVISOR],
        attachments=[
            ("bundle.docx", DOCX_TYPE, court_bundle_docx("CS-204817", "Amelia Hart", "14/03/2015"))
        ],
    )
    council = example_hops.council
    message_id = await council.send(raw, [COURT, MILLS, ASH, SUPERVISOR], SENDER)
    states = await council.settle(message_id)
    assert set(states.values()) == {RecipientState.DELIVERED}, states
    assert example_hops.delivered(message_id) == {
        "verified-tls": sorted([COURT, MILLS, ASH]),  # require_tls copies
        "upstream": [SUPERVISOR],  # internal mail carries no instruction
    }


async def test_example_hops_secure_subject_with_case_material_goes_through_the_gateway(
    example_hops: ExampleHops,
) -> None:
    raw = message(
        SENDER,
        "[secure] CS-204817 position statement",
        "Please find the local authority's position statement for CS-204817 below.\n",
        to=[COURT],
        cc=[SUPERVISOR],
    )
    council = example_hops.council
    message_id = await council.send(raw, [COURT, SUPERVISOR], SENDER)
    states = await council.settle(message_id)
    assert states == {COURT: RecipientState.DELIVERED, SUPERVISOR: RecipientState.DELIVERED}
    assert example_hops.delivered(message_id) == {
        "secure-gateway": [COURT],
        "upstream": [SUPERVISOR],
    }


async def test_example_hops_a_refuge_address_is_held_for_two_from_the_shipped_exports(
    example_hops: ExampleHops,
) -> None:
    raw = message(
        SENDER,
        "CS-204817 address for service",
        "The mother's address for service is Flat 2, 14 Elmwood Road, Northtown NS4 7QJ.\n",
        to=[COURT],
        cc=[SUPERVISOR],
    )
    council = example_hops.council
    message_id = await council.send(raw, [COURT, SUPERVISOR], SENDER)
    states = await council.settle(message_id)
    assert states == {COURT: RecipientState.HELD, SUPERVISOR: RecipientState.DELIVERED}
    assert example_hops.delivered(message_id) == {"upstream": [SUPERVISOR]}


async def test_example_hops_a_childs_name_and_birth_date_to_the_restricted_father_is_held(
    example_hops: ExampleHops,
) -> None:
    # No case reference: the case is known from the shipped cases.csv export.
    raw = message(
        SENDER,
        "Contact update",
        "Amelia Hart (born 14/03/2015) will attend the contact session on Friday.\n",
        to=[FATHER],
    )
    council = example_hops.council
    message_id = await council.send(raw, [FATHER], SENDER)
    states = await council.settle(message_id)
    assert states == {FATHER: RecipientState.HELD}
    assert example_hops.delivered(message_id) == {}
