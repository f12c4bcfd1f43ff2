"""How long lookalike_of takes: index build, first and cached calls, 30 and 3,000 known domains.

python bench/lookalike_bench.py          # from the project root, in the venv
"""

from __future__ import annotations

import random
import string
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smtpguard.decide import lookalike  # noqa: E402
from smtpguard.decide.domains import load_domain_groups  # noqa: E402

rng = random.Random(7)
SUFFIXES = ["com", "co.uk", "org.uk", "gov.uk", "net", "org", "nhs.uk", "ac.uk", "police.uk"]


def word(n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


example = load_domain_groups(ROOT / "config" / "example" / "domains.csv").patterns
big = frozenset(
    set(example) | {f"{word(rng.randint(4, 16))}.{rng.choice(SUFFIXES)}" for _ in range(3000)}
)
queries = [
    "cafcas.gov.uk",
    "gmial.com",
    "education.gov.uk",
    "example.org",
    "mail.cafcass-gov.uk",
    "oakfield.northshire.sch.uk",
    "hotmai1.com",
    "bbc.co.uk",
    "northshlre.gov.uk",
    "nhs.net.uk",
    "millsandco-solicitors.co.uk",
    "team.northshire.gov.uk",
] + [f"{word(rng.randint(4, 16))}.{rng.choice(SUFFIXES)}" for _ in range(188)]

lookalike._psl()  # the Public Suffix List loads once per process, not per index
for _name, known in (("30", example), ("3000", big)):
    lookalike._index.cache_clear()
    start = time.perf_counter()
    lookalike._index(known)
    build = time.perf_counter() - start
    raw = lookalike._lookalike_of.__wrapped__
    start = time.perf_counter()
    for _ in range(5):
        for q in queries:
            raw(q, known)
    uncached = (time.perf_counter() - start) / (5 * len(queries))
    lookalike._lookalike_of.cache_clear()
    for q in queries:
        lookalike.lookalike_of(q, known)
    start = time.perf_counter()
    for _ in range(200):
        for q in queries:
            lookalike.lookalike_of(q, known)
    cached = (time.perf_counter() - start) / (200 * len(queries))
    print(
        f"{len(known):5d} known: index {build * 1e3:7.1f} ms, "
        f"uncached {uncached * 1e6:6.1f} us/call, cached {cached * 1e6:5.2f} us/call, "
        f"{len(lookalike._index(known).variants)} index keys"
    )


lookalike._index.cache_clear()
tracemalloc.start()
lookalike._index(big)
size, _ = tracemalloc.get_traced_memory()
print(f"index memory for {len(big)} known: {size / 2**20:.1f} MiB")
