"""How fast the parse stage reads each format, and what a big attachment costs in memory.

Runs on one core, in this process (no worker pool, so the figures are the
parsers' own): extraction throughput per format in MB/s of input, the
median time to parse the 60 KB PDF message the relay benchmark sends, and
the peak memory of parsing a message with a 25 MB attachment (measured in a
child process so earlier work does not count).

    python bench/parse_bench.py            # from the project root, in the venv
    python bench/parse_bench.py --only xlsx --repeat 40   # one format's throughput only
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from messages import template

from smtpguard.parse import Limits, parse_message

LINE = "Northshire County Council case conference notes: attendance, actions and dates agreed.\n"


def _pdf(pages: int) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    sheet = canvas.Canvas(buffer, pagesize=A4)
    for page in range(pages):
        text = sheet.beginText(40, 800)
        for row in range(60):
            text.textLine(f"Page {page + 1} line {row + 1}: {LINE.strip()}")
        sheet.drawText(text)
        sheet.showPage()
    sheet.save()
    return buffer.getvalue()


def _docx(paragraphs: int) -> bytes:
    import docx

    document = docx.Document()
    for index in range(paragraphs):
        document.add_paragraph(f"{index}: {LINE.strip()}")
    table = document.add_table(rows=50, cols=4)
    for row in table.rows:
        for cell in row.cells:
            cell.text = "cell text"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _xlsx(rows: int) -> bytes:
    import openpyxl

    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("caseload")
    for index in range(rows):
        sheet.append([f"CS-{200000 + index}", "Amelia Hart", "2015-03-14", index, "open"])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _pptx(slides: int) -> bytes:
    import pptx

    presentation = pptx.Presentation()
    for index in range(slides):
        slide = presentation.slides.add_slide(presentation.slide_layouts[1])
        slide.shapes.title.text = f"Slide {index}"
        slide.placeholders[1].text = LINE * 5
    buffer = io.BytesIO()
    presentation.save(buffer)
    return buffer.getvalue()


def _html(kilobytes: int) -> bytes:
    body = "".join(f"<p>{LINE}</p>" for _ in range(kilobytes * 1024 // (len(LINE) + 7)))
    return f"<html><body>{body}</body></html>".encode()


def _zip(members: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(members):
            archive.writestr(f"note{index}.txt", LINE * 200)
    return buffer.getvalue()


FORMATS: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "pdf": ("smtpguard.parse.extract.pdf", lambda: _pdf(60), "report.pdf"),
    "docx": ("smtpguard.parse.extract.docx", lambda: _docx(3000), "report.docx"),
    "xlsx": ("smtpguard.parse.extract.xlsx", lambda: _xlsx(50_000), "caseload.xlsx"),
    "pptx": ("smtpguard.parse.extract.pptx", lambda: _pptx(60), "slides.pptx"),
    "html": ("smtpguard.parse.extract.html", lambda: _html(1024), "page.html"),
    "zip": ("smtpguard.parse.extract.archive", lambda: _zip(200), "bundle.zip"),
}


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def throughput(repeat: int, only: list[str] | None = None) -> list[dict[str, object]]:
    rows = []
    limits = Limits()
    for name, (module_name, build, _) in FORMATS.items():
        if only and name not in only:
            continue
        data = build()
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            rows.append({"format": name, "error": "no extractor"})
            continue
        extract = module.extract_zip if name == "zip" else module.extract
        times = _time(lambda: extract(data, limits), repeat)  # noqa: B023
        median = statistics.median(times)
        rows.append(
            {
                "format": name,
                "input_mb": round(len(data) / 1e6, 2),
                "median_ms": round(median * 1000, 1),
                "mb_per_s": round(len(data) / 1e6 / median, 1),
            }
        )
    return rows


def pdf_message_latency(repeat: int) -> dict[str, float]:
    raw = template("pdf").render(1)
    parse_message(raw)  # warm imports
    times = _time(lambda: parse_message(raw), repeat)
    return {
        "message_kb": round(len(raw) / 1024, 1),
        "median_ms": round(statistics.median(times) * 1000, 2),
        "p99_ms": round(sorted(times)[int(len(times) * 0.99) - 1] * 1000, 2),
    }


def _big_message() -> bytes:
    message = EmailMessage()
    message["Subject"] = "big attachment"
    message.set_content("see attached")
    data = (LINE * (25 * 1024 * 1024 // len(LINE))).encode()
    message.add_attachment(data, maintype="text", subtype="csv", filename="caseload.csv")
    return message.as_bytes(policy=SMTP)


def _child_peak_memory() -> None:
    """Child mode: parse the 25 MB message and print peak RSS before and after."""
    import resource

    raw = _big_message()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    document = parse_message(raw)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "message_mb": round(len(raw) / 1e6, 1),
                "parse_s": round(elapsed, 2),
                "peak_rss_mb_before_parse": round(before / 1024, 1),
                "peak_rss_mb_after_parse": round(after / 1024, 1),
                "parse_peak_over_message": round((after - before) * 1024 / len(raw), 2),
                "parts": [p.kind for p in document.parts],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(FORMATS),
        metavar="FORMAT",
        help=f"time only this format ({', '.join(FORMATS)}; repeatable), with --repeat runs "
        "rather than --repeat/4, and skip the PDF-message latency and 25 MB memory runs",
    )
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        _child_peak_memory()
        return
    print(f"# parse benchmark ({platform.python_version()}, nproc {os.cpu_count()})\n")
    print("| format | input MB | median ms | MB/s |\n|---|---:|---:|---:|")
    repeat = max(args.repeat, 3) if args.only else max(args.repeat // 4, 3)
    for row in throughput(repeat, args.only):
        if "error" in row:
            print(f"| {row['format']} | - | - | {row['error']} |")
        else:
            print(
                f"| {row['format']} | {row['input_mb']} | {row['median_ms']} | {row['mb_per_s']} |"
            )
    if args.only:
        only = " ".join(f"--only {name}" for name in args.only)
        print(f"\nreproduce: python bench/parse_bench.py {only} --repeat {args.repeat}")
        return
    latency = pdf_message_latency(args.repeat * 10)
    print(
        f"\n60 KB PDF message ({latency['message_kb']} KB): parse median "
        f"{latency['median_ms']} ms, p99 {latency['p99_ms']} ms (target < 20 ms median)"
    )
    memory = subprocess.run(
        [sys.executable, __file__, "--child-memory"], capture_output=True, text=True, check=True
    )
    print(f"25 MB attachment: {memory.stdout.strip()}")
    print(f"\nreproduce: python bench/parse_bench.py --repeat {args.repeat}")


if __name__ == "__main__":
    main()
