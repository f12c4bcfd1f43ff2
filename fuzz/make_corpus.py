"""Write the fuzzers' seed corpus: `fuzz/corpus/parse/*.eml` and `fuzz/corpus/smtp/*.smtp`.

    python fuzz/make_corpus.py [FOLDER]

The seeds are generated from the project's own test messages (see `fuzz/seeds.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.seeds import ROOT, write_corpus


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "fuzz" / "corpus"
    counts = write_corpus(folder)
    print(f"{folder}: " + ", ".join(f"{n} {kind} seeds" for kind, n in counts.items()))


if __name__ == "__main__":
    main()
