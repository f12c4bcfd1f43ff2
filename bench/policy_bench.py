"""How long the default policy takes to decide: µs per evaluate(), 5 recipients, 10 findings.

python bench/policy_bench.py          # from the project root, in the venv
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smtpguard.decide.facts import Attachment, MessageFacts, RecipientFacts  # noqa: E402
from smtpguard.decide.policy import evaluate, load_policy  # noqa: E402
from smtpguard.detect import Confidence, Finding  # noqa: E402

H, M, L = Confidence.HIGH, Confidence.MEDIUM, Confidence.LOW
policy = load_policy(
    ROOT / "config" / "policy.yaml",
    groups={"internal", "secure", "partner", "webmail", "obsolete"},
    routes={"secure-gateway"},
)
findings = (
    Finding("case_reference", "attachment:report.docx", H, 1, "CS-2***17"),
    Finding("edm_person", "attachment:bundle.zip/annex.docx", H, 1, "x"),
    Finding("nhs_number", "attachment:referral.pdf", H, 2, "x"),
    Finding("date_of_birth", "body", H, 1, "x"),
    Finding("protective_marking", "subject", H, 1, "OFFICIAL-SENSITIVE"),
    Finding("keywords", "body", H, 3, "x"),
    Finding("phone_number", "body", L, 2, "x"),
    Finding("postcode", "body", M, 1, "x"),
    Finding("hidden_content", "attachment:draft.docx", H, 1, "comments"),
    Finding("encryption_request", "subject", H, 1, "[secure]"),
)
message = MessageFacts(
    "j.okafor@northshire.gov.uk",
    "children",
    "[secure] report",
    (("Subject", "x"),),
    findings,
    ("CS-204817",),
    (Attachment("attachment:report.docx", "docx", 1000),),
    3,
    True,
)
people = [
    RecipientFacts(
        "northshire.familycourt@justice.gov.uk",
        "justice.gov.uk",
        ("secure",),
        frozenset({"case_allowed", "visible"}),
        None,
        ("CS-204817",),
    ),
    RecipientFacts(
        "s.mills@millsandco-solicitors.co.uk",
        "millsandco-solicitors.co.uk",
        ("partner",),
        frozenset({"case_allowed", "visible", "first_time"}),
        None,
        ("CS-204817",),
    ),
    RecipientFacts(
        "dan.hart77@gmail.com",
        "gmail.com",
        ("webmail",),
        frozenset({"case_restricted"}),
        None,
        (),
        ("CS-204817",),
    ),
    RecipientFacts(
        "guardian.team@cafcas.gov.uk",
        "cafcas.gov.uk",
        ("secure",),
        frozenset({"lookalike", "first_time", "visible"}),
        "cafcass.gov.uk",
    ),
    RecipientFacts(
        "m.patel@northshire.gov.uk", "northshire.gov.uk", ("internal",), frozenset({"visible"})
    ),
]
n = 20000
best = min(timeit.repeat(lambda: evaluate(policy, message, people), number=n, repeat=5))
print(
    f"{best / n * 1e6:.1f} µs per evaluation ({len(policy.rules)} rules, "
    f"{len(people)} recipients, {len(findings)} findings)"
)
quiet = MessageFacts(
    "j.okafor@northshire.gov.uk", "children", "hello", (), findings[6:8], (), (), 0, True
)
best = min(timeit.repeat(lambda: evaluate(policy, quiet, people), number=n, repeat=5))
print(f"{best / n * 1e6:.1f} µs per evaluation of an ordinary message (2 findings)")
v = evaluate(policy, message, people)
for address, verdict in v.recipients.items():
    print(f"  {address}: {verdict.action.value} {list(verdict.rules)}")
print("reproduce: python bench/policy_bench.py")
