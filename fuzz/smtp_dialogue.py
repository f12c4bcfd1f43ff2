"""Coverage-guided fuzzing of the SMTP dialogue (atheris).

    python fuzz/smtp_dialogue.py fuzz/corpus/smtp -max_total_time=600

Each input is everything one client sends: commands, pipelined, with message
data. It is played to a fresh session of the relay's `GuardSMTP` (with its real
`RelayHandler`) over an in-memory transport, followed by a probe
(`CRLF . CRLF RSET NOOP QUIT`); `fuzz/checks.py` says what must hold.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["smtpguard", "aiosmtpd"]):
    import smtpguard.listen  # noqa: F401

from fuzz.checks import check_transcript, converse
from fuzz.common import ensure_seeds, quiet_logs

LOOP = asyncio.new_event_loop()


def test_one_input(data: bytes) -> None:
    check_transcript(LOOP.run_until_complete(converse(data)))


def main() -> None:
    quiet_logs()
    ensure_seeds(sys.argv)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
