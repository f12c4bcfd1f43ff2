"""Dates of birth: a date shortly after a cue such as "DOB" or "born".

A date alone is not personal data (meetings, deadlines), so only a date that
starts within 30 characters after a cue counts. It must be a real calendar
date within the past 120 years, and is normalised to ISO so that
"14/03/2015" and "14th Mar 2015" count once.
"""

from __future__ import annotations

import datetime as dt
import re

from smtpguard.detect.base import Confidence, Hit

_CUE = re.compile(
    r"(?i)[db](?<![A-Za-z].)"
    # Field names from exports too: date_of_birth, DateOfBirth, birth_date.
    r"(?:(?<=d)(?:\.?\s?o\.?\s?b\b\.?|ate[\s_]*of[\s_]*birth)"
    r"|(?<=b)(?:irth[\s_]*date|orn(?:\s+on)?\b))"
)
_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
MONTH_NAMES = (
    r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
# A date in the forms people write in UK case notes; exact data match reads
# dates with it too. The lookahead first lets `re` skip to digits.
DATE = re.compile(
    r"(?i)(?=\d)(?<![\d/.\-])(?:"
    r"(?P<d>\d{1,2})(?P<sep>[/.\-])(?P<m>\d{1,2})(?P=sep)(?P<y>\d{4}|\d\d)"
    r"|(?P<iy>\d{4})-(?P<im>\d\d)-(?P<id>\d\d)"
    rf"|(?P<td>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<tm>{MONTH_NAMES})\.?,?\s+(?P<ty>\d{{4}})"
    r")(?![\d/\-]|\.\d)"
)
_WINDOW = 30
_MAX_AGE_YEARS = 120


def written_date(match: re.Match[str], today: dt.date) -> dt.date | None:
    """The day a `DATE` match names, or None when there is no such day."""
    if match.group("d"):
        day, month, year = int(match.group("d")), int(match.group("m")), match.group("y")
        year_num = int(year)
        if len(year) == 2:
            # Two-digit years: the most recent century that puts the date in the past.
            year_num += 2000 if year_num <= today.year % 100 else 1900
    elif match.group("iy"):
        year_num, month = int(match.group("iy")), int(match.group("im"))
        day = int(match.group("id"))
    else:
        day, month = int(match.group("td")), _MONTHS[match.group("tm")[:3].lower()]
        year_num = int(match.group("ty"))
    try:
        return dt.date(year_num, month, day)
    except ValueError:
        return None


def _to_date(match: re.Match[str], today: dt.date) -> dt.date | None:
    """The matched date, or None when it is not a real day in the past 120 years."""
    date = written_date(match, today)
    if date is None or date > today or date.year < today.year - _MAX_AGE_YEARS:
        return None
    return date


class DateOfBirthDetector:
    """Finds dates right after a birth cue; HIGH, because the cue says what the date is."""

    name: str = "date_of_birth"
    # Where the prefilter looks (see detect/prefilter.py): the cue; the date follows.
    triggers: tuple[str, ...] = (
        r"(?i)(?:d\.?\s?o\.?\s?b|date[\s_]*of[\s_]*birth|birth[\s_]*date|born)",
    )
    reach: tuple[int, int] = (0, 64)

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        today = dt.date.today()
        last_end = 0
        for cue in _CUE.finditer(text):
            # The longest date form is about 25 characters ("14th of September, 2015").
            match = DATE.search(text, max(cue.end(), last_end), cue.end() + _WINDOW + 30)
            if match is None or match.start() - cue.end() > _WINDOW:
                continue
            date = _to_date(match, today)
            if date is None:
                continue
            last_end = match.end()
            hits.append(Hit(date.isoformat(), match.start(), match.end(), Confidence.HIGH))
        return hits

    def redact(self, value: str) -> str:
        """Nothing of the date shows: even the year narrows down a child."""
        return "date of birth **/**/****"


DETECTOR = DateOfBirthDetector()

# A table: cells separated by tabs, as the spreadsheet, CSV and Word-table readers write rows.
_CELL_SEP = "\t"
_MAX_ROWS = 100_000
_TIME_OF_DAY = re.compile(r"\s*(?:\d\d:\d\d(?::\d\d)?)?\s*")


class DateOfBirthColumnDetector:
    """Dates of birth in a table column whose header is a birth cue ("Date of birth",
    "DOB"): a caseload export, where the dates sit rows below their cue.

    Registered beside `DateOfBirthDetector` under the same name, so one finding
    counts both. It reads whole texts (no prefilter triggers: the header can be
    far above a row), but only texts that have tab-separated cells.
    """

    name: str = "date_of_birth"

    def scan(self, text: str) -> list[Hit]:
        if _CELL_SEP not in text:
            return []
        hits: list[Hit] = []
        today = dt.date.today()
        searched = 0
        for cue in _CUE.finditer(text):
            if cue.start() < searched:
                continue
            searched = self._column(text, cue.start(), today, hits)
        return hits

    def _column(self, text: str, at: int, today: dt.date, hits: list[Hit]) -> int:
        """Read the column under the header cell at `at`; return where reading stopped."""
        line_start = text.rfind("\n", 0, at) + 1
        line_end = text.find("\n", at)
        line_end = len(text) if line_end < 0 else line_end
        header = text[line_start:line_end]
        if _CELL_SEP not in header:
            return line_end
        cells = header.split(_CELL_SEP)
        column = header.count(_CELL_SEP, 0, at - line_start)
        if not _CUE.fullmatch(cells[column].strip()) and not _is_header(cells[column]):
            return line_end
        position = line_end + 1
        for _ in range(_MAX_ROWS):
            if position >= len(text):
                break
            end = text.find("\n", position)
            end = len(text) if end < 0 else end
            row = text[position:end]
            if _CELL_SEP not in row:
                break
            values = row.split(_CELL_SEP)
            if column < len(values):
                cell_start = position + sum(len(v) + 1 for v in values[:column])
                hit = _cell_date(values[column], cell_start, today)
                if hit is not None:
                    hits.append(hit)
            position = end + 1
        return position

    def redact(self, value: str) -> str:
        return DETECTOR.redact(value)


def _is_header(cell: str) -> bool:
    """A header cell that is a cue with a little more: "Date of birth (dd/mm/yyyy)"."""
    cell = cell.strip()
    return len(cell) <= 40 and _CUE.match(cell) is not None


def _cell_date(cell: str, start: int, today: dt.date) -> Hit | None:
    stripped = cell.strip()
    match = DATE.match(stripped)
    if match is None or not _TIME_OF_DAY.fullmatch(stripped, match.end()):
        return None
    date = _to_date(match, today)
    if date is None:
        return None
    offset = start + cell.index(stripped[:1]) if stripped else start
    return Hit(date.isoformat(), offset, offset + match.end(), Confidence.HIGH)


COLUMN_DETECTOR = DateOfBirthColumnDetector()
