"""One normalisation for both sides of exact data match.

`smtpguard edm build` hashes normalised register values and the relay hashes
normalised windows of text; unless both sides turn "Hart, Amelia",
"14 Elmwood Rd." and "14th Mar 2015" into the same strings, nothing ever
matches. So both import this module, and nothing else normalises.

Tokens are runs of letters and digits (`TOKEN`), each folded on its own:
Unicode NFKC, casefold, accents stripped ("Zoë" -> "zoe"). Punctuation and
whitespace only separate tokens. A lone letter (not a digit) is never a token
(initials, the "s" of "Hart's", the "O" of "O'Brien"): "J. Hart" and "Hart"
read alike.
Names additionally drop courtesy titles and ranks ("Mrs", "Dr", "DC").
Addresses map street-type and flat abbreviations to one word per
equivalence class ("Rd" -> "road", "Apt"/"Apartment"/"Flt" -> "flat").
"St" is ambiguous between Street and Saint; rather than guess, "st",
"street" and "saint" are one class ("street"), so "St Mary's Rd" and
"Saint Mary's Road" match each other (and "Street Mary's Road", which
nobody writes). Postcodes lose their space ("NS4 7QJ" -> "ns47qj"). Dates
in the usual UK forms (14/03/2015, 14.03.15, 14-03-2015, 14 March 2015,
14th of Mar 2015, 2015-03-14) become ISO.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable

from smtpguard.detect.detectors import postcode as postcode_detector
from smtpguard.detect.detectors.date_of_birth import DATE, MONTH_NAMES, written_date

TOKEN = re.compile(r"[^\W_]+")

# One word per class; both sides map through this, so the choice of word does not matter.
ADDRESS_WORDS: dict[str, str] = {
    "rd": "road", "road": "road",
    "st": "street", "str": "street", "street": "street", "saint": "street",
    "ave": "avenue", "av": "avenue", "avenue": "avenue",
    "ln": "lane", "lane": "lane",
    "cl": "close", "close": "close",
    "ct": "court", "crt": "court", "court": "court",
    "dr": "drive", "drv": "drive", "drive": "drive",
    "cres": "crescent", "cresc": "crescent", "crescent": "crescent",
    "gdns": "gardens", "gardens": "gardens",
    "pl": "place", "place": "place",
    "sq": "square", "square": "square",
    "tce": "terrace", "terr": "terrace", "terrace": "terrace",
    "apt": "flat", "apartment": "flat", "flt": "flat", "flat": "flat",
}  # fmt: skip

# Words that say which unit of a building, not where the building is.
UNIT_WORDS = frozenset({"flat", "unit", "room", "suite", "floor"})

# Courtesy titles and ranks: not part of who someone is ("DC Ian Royce" is Ian Royce).
TITLES = frozenset(
    {
        "mr", "mrs", "ms", "miss", "mx", "dr", "doctor", "prof", "professor", "rev", "revd",
        "sir", "dame", "cllr", "councillor", "dc", "ds", "di", "dci", "pc", "sgt", "insp",
    }
)  # fmt: skip


def fold(raw: str) -> str:
    """NFKC, casefold and accents off, so "ZOË", "Zoë" and "zoe" are one string."""
    if raw.isascii():
        return raw.lower()  # what NFKC + casefold make of ASCII, ten times faster
    folded = unicodedata.normalize("NFKC", raw).casefold()
    if folded.isascii():
        return folded
    decomposed = unicodedata.normalize("NFD", folded)
    return unicodedata.normalize(
        "NFC", "".join(char for char in decomposed if not unicodedata.combining(char))
    )


def _is_initial(token: str) -> bool:
    return len(token) == 1 and not token.isdigit()


def word_forms(raw: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Both readings of one raw token, folded once: (name forms, address forms)."""
    folded = fold(raw)
    tokens = [folded] if folded.isalnum() else TOKEN.findall(folded)
    kept = [token for token in tokens if not _is_initial(token)]
    return (
        tuple(token for token in kept if token not in TITLES),
        tuple(ADDRESS_WORDS.get(token, token) for token in kept),
    )


def name_forms(raw: str) -> tuple[str, ...]:
    """The name tokens one raw token stands for: usually one; none for an initial or title."""
    return word_forms(raw)[0]


def address_forms(raw: str) -> tuple[str, ...]:
    """The address tokens one raw token stands for, abbreviations expanded."""
    return word_forms(raw)[1]


def name_tokens(value: str) -> tuple[str, ...]:
    """A register name as tokens, in the order written."""
    return tuple(form for raw in TOKEN.findall(value) for form in name_forms(raw))


def address_tokens(value: str) -> tuple[str, ...]:
    """An address line as tokens, in the order written."""
    return tuple(form for raw in TOKEN.findall(value) for form in address_forms(raw))


def could_anchor(token: str) -> bool:
    """Whether a token may be an entry's anchor: the matcher hashes no other token of a text.

    Numbers ("14", "2015") and one-letter tokens never anchor, so the
    commonest new tokens in mail need no hashing at all.
    """
    return len(token) >= 2 and token[0].isalpha()


def name_key(tokens: tuple[str, ...] | list[str]) -> str:
    """Order-free form of a name: "Hart, Amelia" and "Amelia Hart" both give "amelia hart"."""
    return " ".join(sorted(tokens))


def postcode_key(value: str) -> str | None:
    """A full UK postcode as one lower-case token ("NS4 7QJ" -> "ns47qj"), else None."""
    stripped = value.strip()
    hits = postcode_detector.DETECTOR.scan(stripped)
    if len(hits) != 1 or hits[0].start != 0 or hits[0].end != len(stripped):
        return None
    return hits[0].value.replace(" ", "").lower()


def parse_date(value: str, today: dt.date | None = None) -> dt.date | None:
    """A register cell that is exactly one date in a known form, else None."""
    stripped = value.strip()
    match = DATE.fullmatch(stripped)
    return None if match is None else written_date(match, today or dt.date.today())


def dates_in(text: str) -> set[str]:
    """Every real calendar date written in `text`, as ISO strings."""
    return _isos(DATE.finditer(text), dt.date.today())


def _isos(matches: Iterable[re.Match[str]], today: dt.date) -> set[str]:
    found = set()
    for match in matches:
        date = written_date(match, today)
        if date is not None:
            found.add(date.isoformat())
    return found


# A chunk that is a month name as the textual date form has it ("March", "Mar.,").
_MONTH_CHUNK = re.compile(rf"(?i)(?<![^\x00])(?:{MONTH_NAMES})\.?,?(?![^\x00])")
_NEXT_CHUNK = re.compile(r"\s+\S+")


def dates_in_chunks(text: str, chunks: Iterable[str]) -> set[str]:
    """What `dates_in(text)` finds, given the text's distinct whitespace-separated chunks.

    A date in digits has no whitespace in it, so it lies inside one chunk, and
    each distinct chunk is read once (prose repeats its chunks: several times
    faster than reading the text). A date with a month name is read around
    each place a month-name chunk stands, from the two chunks before it ("14th
    of") to the one after it (the year).
    """
    joined = "\x00".join(chunks)  # no date form contains NUL, so none spans two chunks
    today = dt.date.today()
    found = _isos(DATE.finditer(joined), today)
    length = len(text)
    for month in set(_MONTH_CHUNK.findall(joined)):
        at = text.find(month)
        while at >= 0:
            end = at + len(month)
            if (at == 0 or text[at - 1].isspace()) and (end == length or text[end].isspace()):
                low = at
                for _ in range(2):
                    while low > 0 and text[low - 1].isspace():
                        low -= 1
                    while low > 0 and not text[low - 1].isspace() and at - low < 64:
                        low -= 1
                after = _NEXT_CHUNK.match(text, end)
                # Two characters more: what the regex's closing lookahead needs to see.
                high = min(length, (after.end() if after else end) + 2)
                found |= _isos(DATE.finditer(text, low, high), today)
            at = text.find(month, at + 1)
    return found


def label_key(value: str) -> str:
    """A protected address's label ("Safe house") as compared: folded words, one space apart."""
    return " ".join(TOKEN.findall(fold(value)))
