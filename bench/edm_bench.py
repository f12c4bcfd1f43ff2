"""How fast exact data match reads text: both EDM detectors over case notes, one core.

Builds the example council's three registers (config/example/*.csv) under a
throwaway key in a temporary folder, loads them as the relay would, and times
`edm_person` + `edm_protected_address` together over the case-note text of
`bench/detect_bench.py` at 1 KB, 100 KB and 10 MB:

- "no register values": the case notes as they are (their identifiers include
  a protected postcode, so the address detector does find a few LOW hits);
- "names + addresses": the same with a register name, a name with its date of
  birth, or a protected address written some other way every ~2 KB;
- "notes about the Harts": 2% of words a register word on its own ("Amelia",
  "Amelia's", "Noah", "Elmwood": each read around, most lead nowhere) and
  0.1% a full name, as notes about one family read;
- "fresh words": 5% of words never seen before, so the per-process token cache
  misses as it would on new mail (the cold path: normalise + HMAC per new word).

Each row is the best of N runs, after a warm-up on other text; a run scans
about 1 MB (a thousand 1 KB texts, ten 100 KB texts) or one 10 MB text, each
a new string object as each mail's text is.

    python bench/edm_bench.py            # from the project root, in the venv
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from detect_bench import case_notes  # noqa: E402

from smtpguard.config import LoggingConfig  # noqa: E402
from smtpguard.detect.base import Detector, Hit  # noqa: E402
from smtpguard.detect.edm import (  # noqa: E402
    KINDS,
    build_register,
    create_key,
    load_edm_detectors,
    write_register,
)
from smtpguard.log import configure_logging  # noqa: E402

MENTIONS = (
    "Amelia Hart",
    "Hart, Amelia (DOB 14/03/2015)",
    "Daniel Hart",
    "HART Noah born 2 November 2018",
    "Flat 2, 14 Elmwood Rd",
    "27 Kestrel Cl, Northtown",
    "Apartment 11, Riverside Court",
    "Leo Brennan",
)


def with_mentions(text: str, every: int = 2_000, seed: int = 11) -> str:
    rng = random.Random(seed)
    pieces = []
    for start in range(0, len(text), every):
        pieces.append(f" {rng.choice(MENTIONS)}. ")
        pieces.append(text[start : start + every])
    return "".join(pieces)[: len(text)]


def with_fresh_words(text: str, share: float = 0.05, seed: int = 13) -> str:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = text.split(" ")
    for index in range(len(words)):
        if rng.random() < share:
            words[index] = "".join(rng.choice(letters) for _ in range(rng.randint(4, 10)))
    return " ".join(words)


def about_the_harts(text: str, seed: int = 17) -> str:
    rng = random.Random(seed)
    words = text.split(" ")
    for index in range(len(words)):
        draw = rng.random()
        if draw < 0.02:
            words[index] = rng.choice(("Amelia", "Amelia's", "Noah", "Elmwood"))
        elif draw < 0.021:
            words[index] = "Amelia Hart"
    return " ".join(words)


def load(folder: Path) -> tuple[Detector, ...]:
    key_file = folder / "edm.key"
    key = create_key(key_file)
    registers = []
    for kind in KINDS:
        out = folder / f"{kind}.edm"
        write_register(
            out, build_register(ROOT / "config" / "example" / f"{kind}.csv", kind, key).register
        )
        registers.append(out)
    return load_edm_detectors(key_file, registers)


def rate(text: str, scan: Callable[[str], list[Hit]], repeat: int) -> tuple[float, int]:
    """MB/s over about 1 MB per run (or one bigger text), best of `repeat`; hits in one text."""
    copies = max(1, 1_000_000 // len(text))
    best = float("inf")
    hits = 0
    for _ in range(repeat):
        # New string objects, as each mail brings: the detectors share their split
        # of a text by identity, and the same object twice would be nearly free.
        fresh = [text[:1] + text[1:] for _ in range(copies)]
        started = time.perf_counter()
        for sample in fresh:
            hits = len(scan(sample))
        best = min(best, time.perf_counter() - started)
    return copies * len(text.encode()) / 1e6 / best, hits


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    configure_logging(LoggingConfig(level="warning"))
    with tempfile.TemporaryDirectory() as folder:
        detectors = load(Path(folder))

    def both(sample: str) -> list[Hit]:
        return [hit for detector in detectors for hit in detector.scan(sample)]

    both(with_mentions(case_notes(200_000, seed=3)))  # warm the caches on other text
    print("| text | size | EDM MB/s (both detectors) | hits |\n|---|---:|---:|---:|")
    for label, variant in (
        ("case notes, no register values", lambda t: t),
        ("names + addresses every ~2 KB", with_mentions),
        ("notes about the Harts", about_the_harts),
    ):
        for size in (1_000, 100_000, 10_000_000):
            repeat = 1 if size == 10_000_000 else args.repeat
            mb_s, hits = rate(variant(case_notes(size)), both, repeat)
            print(f"| {label} | {size:,} B | {mb_s:.1f} | {hits} |")
    for size in (1_000, 100_000, 10_000_000):
        # Cold must stay cold: many different texts, each with words never seen before.
        samples = [
            with_fresh_words(case_notes(size, seed=seed), seed=seed)
            for seed in range(max(1, 2_000_000 // size))
        ]
        started = time.perf_counter()
        hits = sum(len(both(sample)) for sample in samples)
        elapsed = time.perf_counter() - started
        mb_s = sum(len(sample.encode()) for sample in samples) / 1e6 / elapsed
        print(f"| 5% fresh words (cold cache) | {size:,} B | {mb_s:.1f} | {hits} |")
    print(f"\nPython {sys.version.split()[0]}, one core.")
    print(f"reproduce: python bench/edm_bench.py --repeat {args.repeat}")


if __name__ == "__main__":
    main()
