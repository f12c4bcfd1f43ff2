"""Run a harness for a total time, starting it again after each crash.

    python fuzz/run.py parse_detect --seconds 600 [-- more libFuzzer flags]
    python fuzz/run.py smtp_dialogue --seconds 600

libFuzzer stops at the first crash, and atheris does not support `-fork`, so
this loops until the time is used up. The growing corpus is kept in
`fuzz/work/NAME/` (seeded from `fuzz/corpus/KIND/`), crashing inputs in
`fuzz/crashes/NAME/`. Exit status 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KIND = {"parse_detect": "parse", "smtp_dialogue": "smtp"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harness", choices=sorted(KIND))
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("extra", nargs="*", help="libFuzzer flags, after --")
    args = parser.parse_args()
    work = HERE / "work" / args.harness
    crashes = HERE / "crashes" / args.harness
    seeds = HERE / "corpus" / KIND[args.harness]
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.seconds
    runs = 0
    while (remaining := int(deadline - time.monotonic())) > 0:
        runs += 1
        command = [
            sys.executable,
            str(HERE / f"{args.harness}.py"),
            str(work),
            str(seeds),
            f"-max_total_time={remaining}",
            f"-artifact_prefix={crashes}/",
            *args.extra,
        ]
        if subprocess.run(command, check=False).returncode == 0:
            break
    found = sorted(p.name for p in crashes.iterdir())
    print(f"{args.harness}: {runs} run(s), {len(found)} crashing input(s) in {crashes}")
    for name in found:
        print(f"  {name}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
