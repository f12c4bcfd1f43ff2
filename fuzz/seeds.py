"""Seed inputs for the fuzzers, generated from the project's own test messages.

Nothing here is hand-copied: the messages come from the scenario builders
(`tests/scenarios/builders.py`), the labelled detector corpus
(`tests/detect/corpus/*.yaml`, with its DOCX/XLSX/PDF attachments built the way
`tests/detect/test_corpus.py` builds them) and the benchmark messages
(`bench/messages.py`). `planted_values()` is every identifier those seeds
carry, in normalised form (letters and digits only, lower case): a finding's
excerpt must never contain one of them.

`smtp_seeds()` are SMTP client byte streams (whole pipelined dialogues) built
around the same messages.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python fuzz/x.py`: the project's packages
    sys.path.insert(0, str(ROOT))

from tests.detect import accuracy  # noqa: E402
from tests.detect.accuracy import Item  # noqa: E402

# Detectors whose values are identifiers: the ones an excerpt must never show whole.
IDENTIFIER_DETECTORS = (
    "nhs_number",
    "chi_number",
    "ni_number",
    "payment_card",
    "bank_account",
    "phone_number",
    "date_of_birth",
    "postcode",
    "email_addresses",
    "case_reference",
)
MIN_PLANTED = 6  # shorter values could turn up in an excerpt by chance
SENDER = "m.patel@northshire.gov.uk"
OUTSIDE = "s.mills@millsandco-solicitors.co.uk"
_ALNUM = re.compile(r"[^0-9a-z]")


def normalised(text: str) -> str:
    """Letters and digits only, lower case: how excerpts and values are compared."""
    return _ALNUM.sub("", text.lower())


@functools.cache
def corpus_items() -> tuple[Item, ...]:
    return tuple(accuracy.load_corpus())


def _item_message(item: Item) -> bytes:
    from tests.detect.test_corpus import _BUILDERS

    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = OUTSIDE
    if item.location == "subject":
        message["Subject"] = " ".join(item.text.split())[:900]
        message.set_content("See the subject.")
    else:
        message["Subject"] = f"Corpus item {item.id}"
        message.set_content(item.text)
    if item.attachment is not None:
        build, content_type = _BUILDERS[item.attachment]
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(
            build(item.text),
            maintype=maintype,
            subtype=subtype,
            filename=f"{item.id}.{item.attachment}",
        )
    return message.as_bytes(policy=SMTP_POLICY)


def _scenario_messages() -> Iterator[tuple[str, bytes]]:
    from tests.scenarios import builders

    body = (
        "Strategy meeting for CS-204817 (Amelia Hart, DOB 14/03/2015, "
        f"NHS number {builders.nhs_numbers(1)[0]}) is on Monday.\n"
    )
    yield (
        "scenario-plain",
        builders.message(SENDER, "CS-204817 strategy meeting", body, to=[OUTSIDE]),
    )
    document = builders.docx_bytes(
        ["Assessment for Amelia Hart.", "Section 47 enquiry opened."],
        comment=("Assessment for Amelia Hart.", "Check DOB 14/03/2015 with the school"),
        hidden="Father's new address: 14 Elmwood Road",
    )
    yield (
        "scenario-docx",
        builders.message(
            SENDER,
            "Assessment",
            "Attached.",
            to=[OUTSIDE],
            attachments=[("assessment.docx", builders.DOCX_TYPE, document)],
        ),
    )
    bundle = builders.zip_bytes({"assessment.docx": document, "notes.txt": body.encode()})
    zipped = builders.message(
        SENDER,
        "Bundle",
        "The bundle.",
        to=[OUTSIDE],
        attachments=[("bundle.zip", builders.ZIP_TYPE, bundle)],
    )
    yield "scenario-zip", zipped
    yield (
        "scenario-xlsx",
        builders.message(
            SENDER,
            "Caseload",
            "Caseload attached.",
            to=[OUTSIDE],
            attachments=[("caseload.xlsx", builders.XLSX_TYPE, builders.caseload_xlsx(12))],
        ),
    )
    yield (
        "scenario-forward",
        builders.forward(SENDER, "Fwd: Bundle", "Forwarding.", zipped, to=[OUTSIDE]),
    )


def _bench_messages() -> Iterator[tuple[str, bytes]]:
    from bench import messages

    for scenario in messages.SCENARIOS:
        yield f"bench-{scenario}", messages.template(scenario).render(1, tag="fuzz")


@functools.cache
def parse_seeds() -> tuple[tuple[str, bytes], ...]:
    """(name, message bytes) for every seed message, in a fixed order."""
    seeds = [*_scenario_messages(), *_bench_messages()]
    seeds += [(f"corpus-{item.id}", _item_message(item)) for item in corpus_items()]
    return tuple(seeds)


def small_parse_seeds(limit: int = 40) -> tuple[tuple[str, bytes], ...]:
    """A spread of the seeds for the bounded CI run: every shape, a sample of the corpus."""
    seeds = parse_seeds()
    shapes = [s for s in seeds if not s[0].startswith("corpus-")]
    corpus = [s for s in seeds if s[0].startswith("corpus-")]
    with_files = [s for s in corpus if b"Content-Disposition: attachment" in s[1]]
    plain = [s for s in corpus if s not in with_files]
    room = max(limit - len(shapes) - len(with_files), 0)
    step = max(len(plain) // room, 1) if room else len(plain) + 1
    return tuple(shapes + with_files + plain[::step][:room])


@functools.cache
def planted_values() -> frozenset[str]:
    """Every identifier the seeds carry, normalised (see `normalised`)."""
    from tests.scenarios import builders

    values: set[str] = set()
    for item in corpus_items():
        for detector, found in item.expect.items():
            if detector in IDENTIFIER_DETECTORS:
                values.update(found)
    values.update(builders.nhs_numbers(30))
    for _, number, dob in builders.children(30):
        values.update((number, dob))
    values.update(("14/03/2015", "CS-204817", SENDER, OUTSIDE))
    extra = set()
    for value in values:
        # Dates are labelled ISO (2015-03-14) and written dd/mm/yyyy in the texts.
        match = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", value)
        if match:
            extra.add(f"{match[3]}{match[2]}{match[1]}")
        # Bank details are labelled "sortcode:account": each half is a value.
        extra.update(value.split(":") if ":" in value else ())
    return frozenset(n for n in (normalised(v) for v in values | extra) if len(n) >= MIN_PLANTED)


def planted_texts() -> tuple[str, ...]:
    """Identifiers as a sender writes them, for the CI fuzzers to plant anywhere."""
    from tests.scenarios import builders

    return (
        *builders.nhs_numbers(3),
        "14/03/2015",
        "CS-204817",
        "QQ 12 34 56 C",
        "4111 1111 1111 1111",
        "sort code 20-00-00 account 12345678",
        "01632 960 417",
        "NS4 1AB",
        OUTSIDE,
    )


# -- SMTP client streams ------------------------------------------------------------


def _transaction(message: bytes, recipients: tuple[str, ...] = (OUTSIDE,)) -> bytes:
    lines = [f"MAIL FROM:<{SENDER}> BODY=8BITMIME".encode()]
    lines += [f"RCPT TO:<{r}>".encode() for r in recipients]
    stuffed = re.sub(rb"(?m)^\.", b"..", message)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return b"\r\n".join(lines) + b"\r\nDATA\r\n" + stuffed + b".\r\n"


def smtp_seeds() -> tuple[tuple[str, bytes], ...]:
    """Client byte streams: ordinary dialogues, pipelined, and the abuse shapes the tests use."""
    small = [m for name, m in parse_seeds() if name.startswith("corpus-")][:3]
    plain = small[0]
    seeds = [
        ("helo-quit", b"HELO client.test\r\nQUIT\r\n"),
        ("ehlo-one", b"EHLO client.test\r\n" + _transaction(plain) + b"QUIT\r\n"),
        (
            "ehlo-pipelined-three",
            b"EHLO client.test\r\n" + b"".join(_transaction(m) for m in small) + b"QUIT\r\n",
        ),
        (
            "many-recipients",
            b"EHLO c\r\n" + _transaction(plain, tuple(f"r{i}@example.org" for i in range(8))),
        ),
        ("null-sender", b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nx\r\n.\r\n"),
        (
            "out-of-order",
            b"RCPT TO:<a@example.org>\r\nDATA\r\nMAIL FROM:<a@b.org>\r\nEHLO c\r\nDATA\r\n"
            b"RCPT TO:<a@example.org>\r\nMAIL FROM:<a@b.org>\r\nMAIL FROM:<a@b.org>\r\nRSET\r\n",
        ),
        (
            "parameters",
            b"EHLO c\r\nMAIL FROM:<a@b.org> SIZE=100 BODY=7BIT SMTPUTF8\r\n"
            b"RCPT TO:<z\xc3\xab@example.org>\r\nMAIL FROM:<a@b.org> SIZE=x FOO=1\r\n"
            b"RCPT TO:<a@example.org> NOTIFY=NEVER\r\nVRFY a\r\nEXPN b\r\nHELP\r\nNOOP x\r\n",
        ),
        (
            "smuggling",
            b"EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
            b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<ceo@b.org>\r\nRCPT TO:<v@example.org>\r\n"
            b"DATA\r\nsmuggled\r\n.\r\nNOOP\r\n",
        ),
        ("long-line", b"EHLO c\r\nMAIL FROM:<" + b"a" * 3000 + b"@b.org>\r\nNOOP\r\n"),
        ("nul-and-controls", b"EHLO c\x00\r\n\x00\x01\x02\r\nMAIL\tFROM:<a@b.org>\r\n\r\n\r\n"),
        ("bare-cr-in-command", b"EHLO c\rMAIL FROM:<a@b.org>\r\nFOO\rBAR\r\n"),
        ("starttls-auth", b"EHLO c\r\nSTARTTLS\r\nAUTH PLAIN AGpAcA==\r\nAUTH LOGIN\r\n"),
        ("bdat", b"EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<a@example.org>\r\nBDAT 5 LAST\r\n"),
    ]
    return tuple(seeds)


def write_corpus(directory: Path) -> dict[str, int]:
    """Write the seeds as `directory/parse/*.eml` and `directory/smtp/*.smtp`."""
    counts = {}
    for kind, seeds, suffix in (
        ("parse", parse_seeds(), ".eml"),
        ("smtp", smtp_seeds(), ".smtp"),
    ):
        folder = directory / kind
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds:
            (folder / f"{name}{suffix}").write_bytes(data)
        counts[kind] = len(seeds)
    return counts
