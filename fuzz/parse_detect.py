"""Coverage-guided fuzzing of parse + detect + decide on mutated real messages (atheris).

    python fuzz/parse_detect.py fuzz/corpus/parse -max_total_time=600

Each input is one raw message. It is read with the default detectors
(`read_message`) and inspected with the example council's configuration and
default policy (`inspect_message`); `fuzz/checks.py` says what must hold. A
broken invariant raises, and libFuzzer writes the input as `crash-*`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["smtpguard", "email"]):
    import smtpguard.decide.decider
    import smtpguard.detect
    import smtpguard.inspect
    import smtpguard.parse  # noqa: F401

from fuzz.checks import check_message, council_decider
from fuzz.common import ensure_seeds, quiet_logs


def test_one_input(data: bytes) -> None:
    check_message(data)


def main() -> None:
    quiet_logs()
    ensure_seeds(sys.argv)
    council_decider()  # load the registers and policy once, before the clock starts
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
