"""How fast the default detectors read text, each and together, and whether cost is linear.

Generates case-note text (Northshire's fictional data: test-range NHS
numbers, drama-range phones), with about one identifier per 100 words, and
times every default detector over it on one core, then the whole set over
1 KB, 100 KB and 10 MB.

    python bench/detect_bench.py          # from the project root, in the venv
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smtpguard.detect.base import Detector
from smtpguard.detect.engine import Text, scan_texts
from smtpguard.detect.registry import IDENTIFIERS as IDENTIFIER_DETECTORS
from smtpguard.detect.registry import SUBJECT_ONLY, default_detectors

_SAMPLE = (
    "the family attended the review meeting and agreed the plan with the social worker "
    "school reported attendance concerns and the health visitor will follow up next week "
    "Mum said she would ring the office on Monday about transport to contact sessions"
)
WORDS = _SAMPLE.split()
IDENTIFIERS = (
    "NHS number 943 476 5919",
    "DOB 14/03/2015",
    "NI number AB 12 34 56 C",
    "NS4 7QJ",
    "01632 960123",
    "CS-204817",
    "karen.hart84@hotmail.co.uk",
    "OFFICIAL-SENSITIVE",
    "strategy meeting",
    "section 47 enquiry",
)


def case_notes(size: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))
        if rng.random() < 0.15:
            sentence += " " + rng.choice(IDENTIFIERS)
        sentence = sentence[0].upper() + sentence[1:] + ".\n"
        out.append(sentence)
        length += len(sentence)
    return "".join(out)[:size]


def _rate(text: str, scan: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        scan(text)  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return len(text.encode()) / 1e6 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    detectors = default_detectors()
    text = case_notes(1_000_000)
    print("| detector | MB/s (1 MB of case notes, best of N) |\n|---|---:|")
    for detector in detectors:
        print(f"| {detector.name} | {_rate(text, detector.scan, args.repeat):.1f} |")

    # As in production: the subject-only detectors do not read bodies.
    body_readers = [d for d in detectors if d.name not in SUBJECT_ONLY]

    def each_on_everything(sample: str) -> None:
        for detector in body_readers:
            detector.scan(sample)

    def through_prefilter(with_detectors: tuple[Detector, ...]) -> Callable[[str], None]:
        def scan(sample: str) -> None:
            scan_texts(
                [Text("body", sample)],
                with_detectors,
                subject_only=SUBJECT_ONLY,
                identifiers=IDENTIFIER_DETECTORS,
            )

        return scan

    with tempfile.TemporaryDirectory() as folder:
        from edm_bench import load  # the example council's registers, under a throwaway key

        with_edm = (*detectors, *load(Path(folder)))
        print(
            "\n| text | every detector on all of it (before) MB/s "
            "| through the prefilter, as the relay scans MB/s "
            "| the same plus exact data match (example registers) MB/s |\n|---|---:|---:|---:|"
        )
        for size in (1_000, 100_000, 10_000_000):
            sample = case_notes(size)
            repeat = args.repeat if size < 10_000_000 else 1
            plain = _rate(sample, each_on_everything, repeat)
            filtered = _rate(sample, through_prefilter(detectors), repeat)
            edm = _rate(sample, through_prefilter(with_edm), repeat)
            print(f"| {size:,} bytes | {plain:.1f} | {filtered:.1f} | {edm:.1f} |")
    print(f"\nreproduce: python bench/detect_bench.py --repeat {args.repeat}")


if __name__ == "__main__":
    main()
