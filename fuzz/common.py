"""Helpers the atheris harnesses share: a quiet log, and a seed corpus that is there."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog

from fuzz.seeds import ROOT, write_corpus

CORPUS = ROOT / "fuzz" / "corpus"


def quiet_logs() -> None:
    """The relay's log lines (and aiosmtpd's) would drown libFuzzer's progress lines."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)


def ensure_seeds(argv: list[str]) -> None:
    """A corpus folder named on the command line that is missing or empty gets the seeds
    (`python fuzz/make_corpus.py` writes them all)."""
    folders = [Path(arg) for arg in argv[1:] if not arg.startswith("-")]
    if any(not folder.exists() or not any(folder.iterdir()) for folder in folders):
        counts = write_corpus(CORPUS)
        print(f"seed corpus written to {CORPUS}: {counts}", file=sys.stderr)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
