"""Precision and recall of every default detector over the labelled corpus.

Reads tests/detect/corpus/*.yaml (fictional Northshire texts, each labelled
with the values every detector should report), scans each text as
production does (keyword proximity included) and prints a markdown table,
then each miss and false alarm by item id. The corpus is fictional, so
values are printed.

    python bench/detect_accuracy.py          # from the project root, in the venv
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.detect.accuracy import load_corpus, markdown_table, score


def main() -> int:
    report = score(load_corpus())
    print(markdown_table(report))
    print()
    print("Reproduce: `python bench/detect_accuracy.py` (corpus: tests/detect/corpus/)")
    for title, outcomes in (("Misses", report.misses), ("False alarms", report.false_alarms)):
        print(f"\n{title} ({len(outcomes)}):")
        for outcome in outcomes:
            print(f"- {outcome}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
