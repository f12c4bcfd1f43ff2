"""Excel cell reading, edge by edge: cell types, odd cell structure, rich text, dates, hidden
rows, columns and formats, and the number rendering's fast path against its exact rules.

The workbooks are written by hand (a few lines of SpreadsheetML each) so that every cell
is exactly the case under test, including ones no spreadsheet program would write.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtpguard.parse.extract import xlsx as xlsx_extract
from smtpguard.parse.extract.xlsx import _number
from smtpguard.parse.model import Flag, Limits

S_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
STRICT_NS = "http://purl.oclc.org/ooxml/spreadsheetml/main"
R_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"

# cellXfs: 0 general, 1 built-in date (14), 2 custom date, 3 ';;;' (invisible), 4 '0.00'.
STYLES = (
    '<numFmts><numFmt numFmtId="164" formatCode="yyyy-mm-dd"/>'
    '<numFmt numFmtId="165" formatCode=";;;"/><numFmt numFmtId="166" formatCode="0.00"/></numFmts>'
    '<cellXfs><xf numFmtId="0"/><xf numFmtId="14"/><xf numFmtId="164"/><xf numFmtId="165"/>'
    '<xf numFmtId="166"/></cellXfs>'
)
STRINGS = (
    "<t>zero</t>",
    "<r><t>one </t></r><r><rPr/><t>rich</t></r><rPh><t>ph</t></rPh>",
    "<t>last</t>",
)


def workbook(
    sheet_data: str,
    *,
    before: str = "",
    date1904: bool = False,
    namespace: str = S_NS,
) -> bytes:
    """A one-sheet workbook ('Edge') with STYLES and STRINGS around `sheet_data`."""
    files = {
        "[Content_Types].xml": (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>'
        ),
        "_rels/.rels": (
            f'<Relationships xmlns="{PKG_RELS}"><Relationship Id="rId1" '
            f'Type="{R_NS}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<workbook xmlns="{namespace}" xmlns:r="{R_NS}">'
            f'<workbookPr date1904="{int(date1904)}"/>'
            '<sheets><sheet name="Edge" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            f'<Relationships xmlns="{PKG_RELS}">'
            f'<Relationship Id="rId1" Type="{R_NS}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{R_NS}/styles" Target="styles.xml"/>'
            f'<Relationship Id="rId3" Type="{R_NS}/sharedStrings" Target="sharedStrings.xml"/>'
            "</Relationships>"
        ),
        "xl/worksheets/sheet1.xml": (
            f'<worksheet xmlns="{namespace}">{before}'
            f"<sheetData>{sheet_data}</sheetData></worksheet>"
        ),
        "xl/styles.xml": f'<styleSheet xmlns="{namespace}">{STYLES}</styleSheet>',
        "xl/sharedStrings.xml": (
            f'<sst xmlns="{namespace}">' + "".join(f"<si>{s}</si>" for s in STRINGS) + "</sst>"
        ),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as package:
        for name, body in files.items():
            package.writestr(name, body)
    return out.getvalue()


def rows_of(data: bytes) -> tuple[list[list[str]], frozenset[str]]:
    result = xlsx_extract.extract(data, Limits())
    lines = result.text.split("\n")
    assert lines[0] == "sheet: Edge"
    return [line.split("\t") for line in lines[1:]], result.flags


# -- cell types -----------------------------------------------------------------------

KINDS_ROW = (
    "<row>"
    '<c t="s"><v>1</v></c>'  # shared rich text, phonetic run left out
    '<c t="s"><v>-1</v></c>'  # a negative index is no string (it used to read the last)
    '<c t="s"><v>99</v></c><c t="s"><v>x</v></c><c t="s"><v/></c>'  # nothing
    '<c t="b"><v> 1 </v></c><c t="b"><v>0</v></c><c t="b"><v/></c>'
    '<c t="e"><v>#DIV/0!</v></c><c t="str"><v>formula text</v></c>'
    '<c t="d"><v>2024-01-02T00:00:00</v></c><c t="inlineStr"><v>inline via v</v></c>'
    '<c t="n"><v>0.1</v></c><c><v>-0</v></c><c><v>1E+3</v></c><c><v>-250</v></c>'
    "<c><v>9434765919</v></c><c><v>12345678901234567890123</v></c>"
    "<c><v>-12345678901234567890</v></c><c><v> 2.50 </v></c><c><v>1_000.5</v></c>"
    "<c><v>nan</v></c><c><v>n/a</v></c>"
    "</row>"
)


@pytest.mark.parametrize("namespace", [S_NS, STRICT_NS], ids=["transitional", "strict"])
def test_when_cells_have_each_type_then_each_read_by_its_type(namespace: str) -> None:
    rows, flags = rows_of(workbook(KINDS_ROW, namespace=namespace))
    assert rows == [
        [
            "one rich",
            "TRUE",
            "FALSE",
            "#DIV/0!",
            "formula text",
            "2024-01-02T00:00:00",
            "inline via v",
            "0.1",
            "0",
            "1000",
            "-250",
            "9434765919",
            "12345678901234567890123",
            "-12345678901234567890",
            "2.5",
            "1000.5",
            "nan",
            "n/a",
        ]
    ]
    assert flags == frozenset()


def test_when_cells_have_odd_children_then_first_inline_string_else_last_value() -> None:
    row = (
        "<row>"
        "<c><v>1</v><v>2</v></c>"  # last <v>
        "<c><v>1</v><v/></c>"  # last <v> is empty: nothing
        '<c t="inlineStr"><v>x</v><is><t>is wins</t></is><is><t>second</t></is></c>'
        "<c><is><t>a</t></is><v>3</v></c>"
        "<c><f>SUM(A1)</f><v>6</v></c><c><f>X</f></c><c><other>7</other></c><c/>"
        "<c><v>8<x/>tail</v></c>"  # the text before the first child only
        '<x:c xmlns:x="urn:other"><x:v>9</x:v></x:c>'  # not a cell
        '<c><x:v xmlns:x="urn:other">10</x:v></c>'  # not a value
        '<c><x:is xmlns:x="urn:other"><x:t>11</x:t></x:is></c>'
        "<c><v><![CDATA[12]]>.5</v></c>"
        '<c t="s"><v>0</v></c>'
        "</row>"
    )
    rows, _flags = rows_of(workbook(row))
    assert rows == [["2", "is wins", "a", "6", "8", "12.5", "zero"]]


def test_when_inline_strings_are_rich_then_runs_joined_and_phonetics_left_out() -> None:
    row = (
        "<row>"
        '<c t="inlineStr"><is><r><rPr/><t>Rich </t></r><r><t>text</t></r>'
        "<rPh><t>phonetic</t></rPh></is></c>"
        '<c t="inlineStr"><is><r><t>only run</t></r></is></c>'
        '<c t="inlineStr"><is><t/></is></c>'
        '<c t="inlineStr"><is><rPh><t>ph</t></rPh></is></c>'
        '<c t="inlineStr"><is><t>a</t><t>b</t></is></c>'
        '<c t="inlineStr"><is><x:t xmlns:x="urn:other">other ns</x:t></is></c>'
        '<c t="inlineStr"><is><t>x &amp; y</t></is></c>'
        "</row>"
    )
    rows, _flags = rows_of(workbook(row))
    assert rows == [["Rich text", "only run", "ab", "x & y"]]


# -- dates ----------------------------------------------------------------------------

DATES_ROW = (
    "<row>"
    '<c s="1"><v>45000</v></c><c s="2"><v>45000.5</v></c><c s="1"><v>0.25</v></c>'
    '<c s="1"><v>-1</v></c><c s="1"><v>abc</v></c>'
    '<c s="x"><v>45000</v></c><c s="4"><v>45000</v></c><c s="99"><v>45000</v></c>'
    '<c s="1" t="s"><v>0</v></c><c s=" 1"><v>45000</v></c><c s="1" t="n"><v>60</v></c>'
    '<c s="1"><v>1e400</v></c><c s="1"><v>1.5</v></c>'
    "</row>"
)


def test_when_cells_have_date_styles_then_1900_dates() -> None:
    rows, _flags = rows_of(workbook(DATES_ROW + '<row><c s="2"><v>2958465.5</v></c></row>'))
    assert rows == [
        [
            "2023-03-15",
            "2023-03-15 12:00:00",
            "06:00:00",
            "-1",
            "abc",
            "45000",
            "45000",
            "45000",
            "zero",
            "2023-03-15",
            "1900-02-28",
            "inf",
            "1899-12-31 12:00:00",
        ],
        ["9999-12-31 12:00:00"],
    ]


def test_when_workbook_uses_1904_dates_then_dates_counted_from_1904() -> None:
    rows, _flags = rows_of(workbook(DATES_ROW, date1904=True))
    assert rows == [
        [
            "2027-03-16",
            "2027-03-16 12:00:00",
            "06:00:00",
            "-1",
            "abc",
            "45000",
            "45000",
            "45000",
            "zero",
            "2027-03-16",
            "1904-03-01",
            "inf",
            "1904-01-02 12:00:00",
        ]
    ]


# -- hidden rows, columns and formats -------------------------------------------------


@pytest.mark.parametrize(
    ("row", "flagged"),
    [
        ('<row ht="0" customHeight="1"><c><v>1</v></c></row>', True),
        ('<row ht="0.0" customHeight="true"><c><v>1</v></c></row>', True),
        ('<row hidden="1"><c><v>1</v></c></row>', True),
        ('<row hidden=" TRUE "><c><v>1</v></c></row>', True),
        ('<row ht="0"><c><v>1</v></c></row>', False),  # not a custom height
        ('<row ht="x" customHeight="1"><c><v>1</v></c></row>', False),
        ('<row ht="15" customHeight="1" hidden="0"><c><v>1</v></c></row>', False),
        ('<row hidden="1"><c><v/></c></row>', False),  # nothing in it to hide
    ],
)
def test_when_row_is_hidden_or_zero_height_then_read_and_flagged(row: str, flagged: bool) -> None:
    rows, flags = rows_of(workbook('<row><c t="inlineStr"><is><t>shown</t></is></c></row>' + row))
    assert rows[0] == ["shown"]
    assert (Flag.HIDDEN_ROWS in flags) is flagged


HIDE_B_C = '<cols><col min="2" max="3" hidden="1"/></cols>'
HIDE_B = '<cols><col min="2" max="2" hidden="1"/></cols>'
ZERO_WIDTH_B = '<cols><col min="2" max="2" customWidth="1" width="0"/></cols>'


@pytest.mark.parametrize(
    ("cols", "row", "flagged"),
    [
        (HIDE_B_C, '<c r="B1"><v>1</v></c>', True),
        (ZERO_WIDTH_B, '<c r="B1"><v>1</v></c>', True),
        (HIDE_B, '<c r="A1"><v>1</v></c><c><v>2</v></c>', True),  # no r: the next column
        (HIDE_B, '<c r="C1"><v>1</v></c>', False),
        (HIDE_B, '<c r="B1"><v/></c>', False),  # nothing to hide
        ('<cols><col min="x" max="2" hidden="1"/></cols>', '<c r="B1"><v>1</v></c>', False),
    ],
)
def test_when_cell_is_in_hidden_column_then_read_and_flagged(
    cols: str, row: str, flagged: bool
) -> None:
    _rows, flags = rows_of(workbook(f"<row>{row}</row>", before=cols))
    assert (Flag.HIDDEN_COLUMNS in flags) is flagged


@pytest.mark.parametrize(
    ("cell", "flagged"),
    [
        ('<c s="3" t="inlineStr"><is><t>invisible</t></is></c>', True),
        ('<c s="3"><v>42</v></c>', True),
        ('<c s="3"><v/></c>', False),  # nothing to hide
        ('<c s="1"><v>42</v></c>', False),
        ('<c s=" 3"><v>42</v></c>', False),  # not all digits
    ],
)
def test_when_cell_has_invisible_format_then_read_and_flagged(cell: str, flagged: bool) -> None:
    _rows, flags = rows_of(workbook(f"<row>{cell}</row>"))
    assert (Flag.HIDDEN_TEXT in flags) is flagged


def test_when_text_limit_reached_then_rows_cut_but_hidden_rows_still_flagged() -> None:
    data = workbook(
        '<row><c t="inlineStr"><is><t>first row of text</t></is></c></row>'
        '<row hidden="1"><c><v>2</v></c></row>'
    )
    result = xlsx_extract.extract(data, Limits(max_text_chars=20))
    assert result.text == "sheet: Edge\nfirst ro"
    assert Flag.HIDDEN_ROWS in result.flags


# -- numbers: the fast path against the exact rules -----------------------------------


def exact_number(text: str) -> str:
    """The Decimal-only rendering `_number` replaced, kept here as the oracle."""
    if text.isdigit():
        return text
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    if not value.is_finite():
        return text
    if value == value.to_integral_value() and abs(value) < Decimal("1e21"):
        return str(int(value))
    return repr(float(value))


NUMBERS = [
    "",
    "0",
    "-0",
    "+0",
    "0.0",
    "-0.0",
    "-0e-5",
    "00",
    "-00",
    "-007",
    "007.50",
    "1",
    "-1",
    "+1",
    "-250",
    "2750",
    "2750.0",
    "-2750.00",
    "587.13",
    "3.25",
    "0.1",
    "-0.1",
    ".5",
    "-.5",
    "5.",
    "1e5",
    "1E+3",
    "1.5e-7",
    "1.2345678901234501E-5",
    "1e-400",
    "-1e-400",
    "4.9e-324",
    "2.5e-324",
    "1e400",
    "-1e400",
    "1e999999",
    "1e1000000",
    "-1E+2000000",
    "1.5e1000000",
    "1e-1000000",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "1e15",
    "1e16",
    "1e20",
    "1e21",
    "-1e21",
    "9.99999999999999999999e20",
    "999999999999999.9",
    "9007199254740993",
    "-9007199254740993",
    "9007199254740993.0",
    "-9007199254740993.5",
    "12345678901234567890",
    "-12345678901234567890",
    "-123456789012345678901",
    "-999999999999999999999",
    "-1000000000000000000000",
    "-0000000000000000000001",
    "-00000000000000000000001",
    "1.0000000000000000001",
    "-1.0000000000000000001",
    "0.30000000000000004",
    "nan",
    "NaN",
    "-nan",
    "NaN123",
    "sNaN",
    "inf",
    "-inf",
    "+Infinity",
    "infinity",
    " 1.5",
    "1.5 ",
    "\t-2\n",
    " -250",
    "-250 ",
    "\u00a01.5",
    "1.5\u2003",
    "\u20282.5",
    "1_000",
    "-1_000",
    "1_000.5",
    "1__0",
    "_1",
    "1_",
    "1_.5",
    "1._5",
    "1_e5",
    "1e5_0",
    "\u0661\u0662\u0663",
    "-\u0661\u0662",
    "\u0661.\u0665",
    "\uff11\uff12.\uff15",
    "\u00b2",
    "-\u00b2",
    "0x10",
    "1e",
    "e1",
    ".",
    "-",
    "+",
    "--1",
    "1-",
    "1.2.3",
    "1,5",
    "#DIV/0!",
    "TRUE",
    "n/a",
]


def outcome(render: Callable[[str], str], text: str) -> tuple[str, object]:
    """What rendering `text` gives. Where the exact rules raise (an exponent past
    Decimal's range, e.g. '1e1000000': decimal.Overflow used to make the whole
    workbook uninspectable), the cell now reads as written."""
    try:
        return "text", render(text)
    except ArithmeticError:
        return "text", text


@pytest.mark.parametrize("text", NUMBERS)
def test_when_number_is_rendered_then_same_as_exact_rules(text: str) -> None:
    assert outcome(_number, text) == outcome(exact_number, text)


def _number_texts() -> st.SearchStrategy[str]:
    floats = st.floats(allow_nan=True, allow_infinity=True)
    return st.one_of(
        st.text(),
        st.text(alphabet="0123456789-+._eE \t\ninfa\u0661\u00a0", max_size=30),
        st.from_regex(r"[ \t]?[+-]?\d{0,25}(\.\d{0,25})?([eE][+-]?\d{1,4})?[ \t]?", fullmatch=True),
        floats.map(repr),
        floats.map(str),
        floats.map(lambda f: f"{f:.17g}"),
        floats.map(lambda f: f"{f:.15g}"),
        floats.map(lambda f: f"{f:e}"),
        floats.map(lambda f: f"{f:f}"),
        st.integers(-(10**30), 10**30).map(str),
        st.integers(-(10**30), 10**30).map(lambda n: f"{n}.0"),
        st.integers(-(10**30), 10**30).map(lambda n: f"{n}e-3"),
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
    )


@settings(
    max_examples=3000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(text=_number_texts())
@example(text="-0")
@example(text=repr(math.ulp(0.0)))
def test_when_any_text_is_rendered_as_number_then_same_as_exact_rules(text: str) -> None:
    assert outcome(_number, text) == outcome(exact_number, text)


# -- cells that used to make the whole workbook uninspectable ----------------------------


def test_when_1904_date_is_past_year_9999_then_read_as_a_number() -> None:
    rows, _ = rows_of(
        workbook('<row><c s="1"><v>2957003</v></c><c s="1"><v>2957005</v></c></row>', date1904=True)
    )
    assert rows == [["9999-12-31", "2957005"]]


def test_when_number_exponent_is_past_decimal_range_then_read_as_written() -> None:
    rows, _ = rows_of(workbook("<row><c><v>1e1000000</v></c><c><v>7</v></c></row>"))
    assert rows == [["1e1000000", "7"]]


def test_when_style_is_a_superscript_digit_then_the_cell_is_read() -> None:
    rows, flags = rows_of(workbook('<row><c s="\u00b2"><v>5</v></c><c s="3"><v>6</v></c></row>'))
    assert rows == [["5", "6"]]
    assert Flag.HIDDEN_TEXT in flags
