"""Matching texts against hashed registers, fast enough for every text of every mail.

Hashing every token window of every text with HMAC would cost microseconds
per word. Instead each register entry has one *anchor*, its most distinctive
word ("elmwood" for "14 Elmwood Road", the longest word of a name, the
postcode's outward code), and a text first goes through a cheap filter:
split on whitespace into distinct chunks (C speed), minus the chunks already
known to hold no anchor (one set difference). The words of the remaining
chunks are looked up per raw word; a word never seen before in this process
is normalised and HMAC'd once (numbers never anchor, so they cost nothing).
Ordinary prose thus costs one `split`, one set and one difference. Only where
an anchor stands are its neighbours read, as far as they are words some
entry contains (the register's hashed vocabulary) and the gaps between them
are ones a name or address can have; the windows through the anchor are then
HMAC'd in full and looked up. Plaintext words live only in these bounded
in-process caches, as the texts themselves do.

Persons (`edm_person`): a window of a registered name's 2-4 tokens, in any
order ("Hart, Amelia", "HART Amelia"), separated only by spaces, commas,
hyphens, apostrophes, one line break, initials and titles; a full stop or
other punctuation ends a name ("...Mrs Hart. Amelia said" is none). A window
written all in lower case and in another order than registered counts only
with that person's date of birth, so prose like "the price will rise" is not
"Will Price". A case subject's name is MEDIUM; with that subject's own date
of birth anywhere in the same text it is HIGH (a record match: another
child's date beside the name is not). A party's name alone is LOW: parties
are often professionals who appear in many cases. A name registered in
several cases gives one hit per case.

Protected addresses (`edm_protected_address`): a strong fact (house number +
street, or flat/building + street, however abbreviated) is HIGH. A street or
building name and the postcode, or two such names, within 200 characters of
each other, are MEDIUM: that narrows it to a few doors but may be a
neighbour's. A postcode alone is LOW (about 15 houses). A street name alone
is no hit: it is public and has many houses.

Hit values (in memory only, never logged) are distinct per person or address
and never contain the matched text:
    "CS-204817:subject:3f9a1c07e2" / "CS-204817:subject:3f9a1c07e2:dob"
    "CS-204817:party:restricted:8b1e44c0d9"
    "addr:5c2e019a7b:line:refuge"  (evidence: line | parts | postcode; then the label)
Within one text all hits of one person or address carry the same value, so
counts stay counts of people and addresses.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from smtpguard.detect.base import Confidence, Hit
from smtpguard.detect.detectors import case_reference
from smtpguard.detect.edm.key import Keyed
from smtpguard.detect.edm.normalise import (
    ADDRESS_WORDS,
    TOKEN,
    address_forms,
    could_anchor,
    dates_in_chunks,
    label_key,
    name_forms,
    word_forms,
)
from smtpguard.detect.edm.register import MAX_WINDOW, Register

# Bounds on the per-process caches: memory stays flat however much mail passes.
_PARTIES_REMEMBERED = 10_000  # recipient addresses (see recipient_parties)
_CHUNK_CACHE = 200_000
_TOKEN_CACHE = 200_000
_FORM_CACHE = 50_000
_DIGEST_CACHE = 50_000
_SLICE = 1 << 18  # big texts are split in slices of about this many characters
_MAX_GAP = 16  # characters between two tokens of one name or address
_PROXIMITY = 200  # characters between two weak address parts that count together
_MAX_RUN = 4096  # tokens in one run of register words; a longer one is read in parts
_FIND_LIMIT = 5  # up to this many anchor words are found with str.find, more with one regex
_PERSON, _ADDRESS = 1, 2

# Labels a protected address can have in an excerpt; any other label shows as none.
LABELS = (
    "refuge", "safe house", "relocated victim", "witness protection", "domestic abuse",
    "confidential address", "foster placement", "protected",
)  # fmt: skip

_GAP = re.compile(r"(?:[\s,'\u2018\u2019\-\u2010\u2011\u2013\u2014]|[^\W_]+\.?)*")
_DOTTED_ABBREVIATIONS = frozenset(ADDRESS_WORDS)
# The word after a position, within a gap's reach.
_NEXT_WORD = re.compile(rf"[\W_]{{0,{_MAX_GAP}}}([^\W_]+)")
_POSTCODE_SHAPE = re.compile(r"[a-z]{1,2}[0-9][a-z0-9]?[0-9][a-z]{2}")


@dataclass(frozen=True, slots=True)
class _Seen:
    key: tuple[int, int, int]
    chunks: set[str]
    spans: list[tuple[int, int, int]]


class TokenFilter:
    """Which anchor words of either detector a text holds, at the cost of one split.

    A text is split on whitespace into distinct chunks; chunks known to hold
    no anchor are dropped with one set difference. The tokens of the rest are
    looked up per raw word (each new word is normalised and hashed once per
    process). Shared by the two detectors so one text is split once: the
    engine passes the same string to each in turn, and the last answer is
    kept by the text's identity, length and hash (not the text itself).
    """

    def __init__(self, keyed: Keyed, people: set[bytes], places: set[bytes]) -> None:
        self._keyed = keyed
        self._people = people
        self._places = places
        self._clean_chunks: set[str] = set()
        self._clean_words: set[str] = set()
        self._anchor_words: dict[str, int] = {}  # raw word -> detector bits
        # The last text's (id, length, hash), chunks and anchor spans, replaced as one object.
        self._last: _Seen | None = None

    def anchors(self, text: str, bit: int) -> list[tuple[int, int]]:
        """Spans of one detector's anchor words in `text`, in order."""
        return [(start, end) for start, end, mask in self._seen(text).spans if mask & bit]

    def dates(self, text: str) -> set[str]:
        """Every date written in `text` (ISO), reading each distinct chunk once."""
        return dates_in_chunks(text, self._seen(text).chunks)

    def _seen(self, text: str) -> _Seen:
        key = (id(text), len(text), hash(text))
        last = self._last
        if last is None or last.key != key:
            chunks = _chunks(text)
            last = self._last = _Seen(key, chunks, self._spans(text, self._words(chunks)))
        return last

    def _words(self, chunks: set[str]) -> dict[str, int]:
        """Raw anchor words present in the chunks -> which detectors they anchor (bit mask)."""
        unknown = chunks - self._clean_chunks
        present: dict[str, int] = {}
        if unknown:
            words = set(TOKEN.findall(" ".join(unknown)))
            known = self._anchor_words
            for word in words.intersection(known):
                mask = known.get(word, 0)  # .get: a cache may be cleared meanwhile
                if mask:
                    present[word] = mask
            for word in words - self._clean_words - present.keys():
                mask = self._learn(word)
                if mask:
                    present[word] = mask
            if present:
                unknown = {c for c in unknown if present.keys().isdisjoint(TOKEN.findall(c))}
            if len(self._clean_chunks) + len(unknown) > _CHUNK_CACHE:
                self._clean_chunks.clear()
            self._clean_chunks.update(unknown)
        return present

    def _learn(self, word: str) -> int:
        """Normalise and hash one new word: is it an anchor of either detector?"""
        mask = 0
        if not (word[0].isdigit() and word.isascii()):  # numbers never anchor
            digests: dict[str, bytes] = {}
            names, addresses = word_forms(word)
            for bit, forms, anchors in (
                (_PERSON, names, self._people),
                (_ADDRESS, addresses, self._places),
            ):
                for form in filter(could_anchor, forms):
                    digest = digests.get(form) or digests.setdefault(form, self._keyed.token(form))
                    if digest in anchors:
                        mask |= bit
        if mask:
            if len(self._anchor_words) >= _TOKEN_CACHE:
                self._anchor_words.clear()
            self._anchor_words[word] = mask
        else:
            if len(self._clean_words) >= _TOKEN_CACHE:
                self._clean_words.clear()
            self._clean_words.add(word)
        return mask

    @staticmethod
    def _spans(text: str, words: dict[str, int]) -> list[tuple[int, int, int]]:
        """Where the anchor words stand as whole words: (start, end, detector bits)."""
        if not words:
            return []
        spans: list[tuple[int, int]] = []
        if len(words) <= _FIND_LIMIT:
            for word in words:
                at = text.find(word)
                while at >= 0:
                    spans.append((at, at + len(word)))
                    at = text.find(word, at + 1)
            spans.sort()
        else:
            longest_first = tuple(sorted(words, key=len, reverse=True))
            spans = [m.span() for m in _alternation(longest_first).finditer(text)]
        length = len(text)
        return [
            (start, end, words[text[start:end]])
            for start, end in spans
            if (start == 0 or not text[start - 1].isalnum())
            and (end == length or not text[end].isalnum())
        ]


@functools.lru_cache(maxsize=256)
def _alternation(words: tuple[str, ...]) -> re.Pattern[str]:
    """One pass for many anchor words (longest first); word boundaries are checked after."""
    return re.compile("|".join(map(re.escape, words)))


def _chunks(text: str) -> set[str]:
    """The distinct whitespace-separated chunks; big texts in slices, to bound the peak list."""
    if len(text) <= _SLICE:
        return set(text.split())
    chunks: set[str] = set()
    start = 0
    while start < len(text):
        end = text.find(" ", start + _SLICE)  # cut at a space: no chunk is split
        end = len(text) if end < 0 else end
        chunks.update(text[start:end].split())
        start = end
    return chunks


class _Reader(dict[str, tuple[str, ...] | None]):
    """One detector's view of a raw word, memoised: its normalised forms; () for an
    initial or title (part of a gap); None for a word no register entry contains."""

    def __init__(
        self, keyed: Keyed, forms: Callable[[str], tuple[str, ...]], vocabulary: set[bytes]
    ) -> None:
        super().__init__()
        self._keyed = keyed
        self._forms = forms
        self._vocabulary = vocabulary

    def __missing__(self, raw: str) -> tuple[str, ...] | None:
        if len(self) >= _FORM_CACHE:
            self.clear()
        forms: tuple[str, ...] | None = self._forms(raw)
        if forms and any(self._keyed.token(form) not in self._vocabulary for form in forms):
            forms = None
        self[raw] = forms
        return forms


@dataclass(frozen=True, slots=True)
class _Token:
    form: str
    raw: str
    start: int
    end: int


def _runs(
    text: str,
    anchors: list[tuple[int, int]],
    reach: int,
    reader: _Reader,
    dotted: frozenset[str],
    alone: Callable[[tuple[str, ...]], bool],
) -> Iterator[tuple[list[_Token], list[int]]]:
    """Runs of register words around the anchors, and where the anchors are in each.

    A run starts `reach` words before an anchor and goes on while the words
    are ones some entry contains and the gaps are ones a name or address can
    have ("Hart. Amelia" ends a run): only windows that could match are ever
    hashed. Every token is read once however many anchors stand close
    together, so even a text that is nothing but one anchor word stays linear.
    An anchor with no register word beside it ("Amelia said") is passed over
    after one look either side, unless `alone(its forms)` says it can match
    by itself (a postcode written without its space).
    """
    index = 0
    while index < len(anchors):
        start, end = anchors[index]
        index += 1
        anchor_raw = text[start:end]
        if _lonely(text, start, end, reader) and not alone(reader[anchor_raw] or ()):
            continue
        tokens = _before(text, start, reach, reader, dotted)
        marks = list(range(len(tokens), len(tokens) + len(reader[anchor_raw] or ())))
        tokens += [_Token(form, anchor_raw, start, end) for form in reader[anchor_raw] or ()]
        left_raw, left_end, tail = anchor_raw, end, reach
        for match in TOKEN.finditer(text, end):
            raw = match.group()
            normal = reader[raw]
            if normal is None or tail == 0:
                break
            if not normal:
                continue  # an initial or title: part of the gap
            if not _gap_ok(text[left_end : match.start()], left_raw, dotted):
                break
            if len(tokens) < _MAX_RUN:
                while index < len(anchors) and anchors[index][0] < match.start():
                    index += 1
                if index < len(anchors) and anchors[index][0] == match.start():
                    marks += range(len(tokens), len(tokens) + len(normal))
                    index += 1
            else:
                tail -= 1  # a long run ends `reach` words on; the next starts at its next anchor
            tokens += [_Token(form, raw, match.start(), match.end()) for form in normal]
            left_raw, left_end = raw, match.end()
        yield tokens, marks


def _lonely(text: str, start: int, end: int, reader: _Reader) -> bool:
    """Whether no word within a gap's reach either side could join the anchor."""
    after = _NEXT_WORD.match(text, end)
    if after is not None and reader[after.group(1)] is not None:
        return False
    before = _previous_word(text, start, start)
    return before is None or reader[text[before[0] : before[1]]] is None


def _previous_word(text: str, right: int, anchor: int) -> tuple[int, int] | None:
    """(start, end) of the word before `right`, or None at the text's start or when the
    gap from `anchor` grows past what may separate a name's or an address's words."""
    word_end = right
    while word_end > 0 and not text[word_end - 1].isalnum():
        word_end -= 1
        if anchor - word_end > _MAX_GAP:
            return None
    if word_end == 0:
        return None
    word_start = word_end - 1
    while word_start > 0 and text[word_start - 1].isalnum():
        word_start -= 1
    return word_start, word_end


def _before(
    text: str, start: int, reach: int, reader: _Reader, dotted: frozenset[str]
) -> list[_Token]:
    """Up to `reach` register words before the anchor, read backwards one word at a time.

    Character by character: the usual answer is "the word before is no
    register word", and finding that word costs a few steps this way.
    """
    tokens: list[_Token] = []
    right = right_start = start  # where to look before; where the last word kept starts
    while len(tokens) < reach:
        previous = _previous_word(text, right, right_start)
        if previous is None:
            return tokens
        word_start, word_end = previous
        raw = text[word_start:word_end]
        normal = reader[raw]
        if normal is None:
            return tokens
        right = word_start
        if not normal:
            continue  # an initial or title: part of the gap
        if not _gap_ok(text[word_end:right_start], raw, dotted):
            return tokens
        tokens[:0] = [_Token(form, raw, word_start, word_end) for form in normal]
        right_start = word_start
    return tokens


def _gap_ok(gap: str, left_raw: str, dotted: frozenset[str]) -> bool:
    """Whether two tokens may belong to one name or address across this gap."""
    if gap == " " or gap == ", ":
        return True
    if len(gap) > _MAX_GAP:
        return False
    if gap.startswith("."):
        if left_raw.casefold() not in dotted:
            return False  # "Hart. Amelia" is two sentences; "Rd. NS4" is one address
        gap = gap[1:]
    return gap.count("\n") <= 1 and _GAP.fullmatch(gap) is not None


def _windows(
    tokens: list[_Token], marks: list[int], lengths: Sequence[int]
) -> Iterator[list[_Token]]:
    """Every window of a registered length through at least one anchor, each once."""
    done: set[tuple[int, int]] = set()
    for mark in marks:
        for length in lengths:
            for first in range(max(0, mark - length + 1), min(mark, len(tokens) - length) + 1):
                if (first, length) not in done:
                    done.add((first, length))
                    yield tokens[first : first + length]


class _Digests(dict[tuple[bytes, str], bytes]):
    """HMACs of windows seen lately: a name mentioned twenty times is hashed once."""

    def __init__(self, keyed: Keyed) -> None:
        super().__init__()
        self._keyed = keyed

    def __missing__(self, item: tuple[bytes, str]) -> bytes:
        if len(self) >= _DIGEST_CACHE:
            self.clear()
        digest = self[item] = self._keyed.value(*item)
        return digest


@dataclass(frozen=True, slots=True)
class _PersonEntry:
    id: str
    case: str
    role: str  # "subject" | "party"
    access: str | None

    def value(self, with_dob: bool) -> str:
        if self.role == "party":
            return f"{self.case}:party:{self.access}:{self.id}"
        return f"{self.case}:subject:{self.id}" + (":dob" if with_dob else "")


class PersonDetector:
    """Case subjects and parties by name, and subjects by name with date of birth."""

    name = "edm_person"

    def __init__(self, keyed: Keyed, registers: Sequence[Register], tokens: TokenFilter) -> None:
        self._tokens = tokens
        self._digests = _Digests(keyed)
        self._reader = _Reader(
            keyed, name_forms, {bytes.fromhex(h) for r in registers for h in r.vocabulary}
        )
        self._names: dict[bytes, list[_PersonEntry]] = {}
        self._ordered: set[bytes] = set()
        self._records: dict[bytes, list[_PersonEntry]] = {}
        self._mail: dict[bytes, list[_PersonEntry]] = {}
        self._parties_of: dict[str, tuple[str, ...]] = {}  # see recipient_parties
        self._keyed = keyed
        lengths: set[int] = set()
        for register in registers:
            role = "subject" if register.kind == "cases" else "party"
            lengths.update(register.lengths)
            for person in register.people:
                entry = _PersonEntry(person.id, person.case, role, person.access)
                for name in person.names:
                    self._names.setdefault(bytes.fromhex(name), []).append(entry)
                self._ordered.update(bytes.fromhex(h) for h in person.ordered)
                for record in person.records:
                    self._records.setdefault(bytes.fromhex(record), []).append(entry)
                if person.mail:
                    self._mail.setdefault(bytes.fromhex(person.mail), []).append(entry)
        self._lengths = tuple(sorted(lengths))
        self._shortest = min(lengths, default=2)
        self._reach = max(lengths, default=1) - 1
        self.people = len({e.id for entries in self._names.values() for e in entries})

    def scan(self, text: str, dates: set[str] | None = None) -> list[Hit]:
        """Names in `text`; a subject's is HIGH with their date of birth among `dates`
        (default: the dates written in `text` itself)."""
        return self._match(text, self._candidates(text), dates)

    def dates_in(self, text: str) -> set[str]:
        """Every date written in `text` (ISO): to match a name in one part of a
        message with a date of birth in another."""
        return self._tokens.dates(text)

    def _candidates(self, text: str) -> Iterator[list[_Token]]:
        """The windows worth hashing: those through an anchor, in a run of name words."""
        anchors = self._tokens.anchors(text, _PERSON)
        for tokens, marks in _runs(text, anchors, self._reach, self._reader, frozenset(), _never):
            if len(tokens) >= self._shortest:  # not a first name on its own: "Amelia said"
                yield from _windows(tokens, marks, self._lengths)

    def _match(
        self, text: str, windows: Iterable[list[_Token]], dates: set[str] | None
    ) -> list[Hit]:
        found: list[tuple[int, int, str, list[_PersonEntry], bool]] = []
        seen: set[tuple[int, int]] = set()
        for window in windows:
            span = (window[0].start, window[-1].end)
            if span in seen:
                continue
            seen.add(span)
            forms = [token.form for token in window]
            key = " ".join(sorted(forms))
            entries = self._names.get(self._digests[Keyed.NAME, key])
            if entries is None:
                continue
            # Lower-case prose in another order ("the price will") is a name only
            # with that person's date of birth in the text too.
            only_with_dob = all(token.raw.islower() for token in window) and (
                self._digests[Keyed.ORDERED, " ".join(forms)] not in self._ordered
            )
            found.append((*span, key, entries, only_with_dob))
        if not found:
            return []
        if dates is None:
            dates = self._tokens.dates(text) if self._records else set()
        with_dob = self._record_matches(dates, {key for _, _, key, _, _ in found})
        hits = []
        for start, end, _, entries, only_with_dob in found:
            for entry in entries:
                dob = entry.id in with_dob
                if only_with_dob and not dob:
                    continue
                if dob:
                    confidence = Confidence.HIGH
                elif entry.role == "subject":
                    confidence = Confidence.MEDIUM
                else:
                    confidence = Confidence.LOW
                hits.append(Hit(entry.value(dob), start, end, confidence))
        return hits

    def _record_matches(self, dates: set[str], keys: set[str]) -> set[str]:
        """Ids of subjects whose own date of birth is among `dates`, for these names."""
        if not self._records:
            return set()
        matched: set[str] = set()
        for key in keys:
            for iso in dates:
                for entry in self._records.get(self._digests[Keyed.RECORD, f"{key}|{iso}"], ()):
                    matched.add(entry.id)
        return matched

    def redact(self, value: str) -> str:
        """Which case, masked, and what matched: "case subject of CS-2***17 (name)"."""
        parts = value.split(":")
        case = case_reference.DETECTOR.redact(parts[0])
        if parts[1] == "party":
            who = "restricted party" if parts[2] == "restricted" else "party"
            return f"{who} of {case} (name)"
        what = "name and date of birth" if parts[-1] == "dob" else "name"
        return f"case subject of {case} ({what})"

    @staticmethod
    def case_of(value: str) -> str | None:
        """The case reference a hit's value refers to ("CS-204817"): ties a message to a case."""
        case, sep, _ = value.partition(":")
        return case if sep else None

    @staticmethod
    def access_of(value: str) -> str | None:
        """`restricted` or `allowed` for a party's value; None for a case subject."""
        parts = value.split(":")
        return parts[2] if len(parts) > 3 and parts[1] == "party" else None

    @staticmethod
    def person_of(value: str) -> str:
        """One person's identity across texts: the value without the date-of-birth marker."""
        return value.removesuffix(":dob")

    def recipient_parties(self, address: str) -> tuple[str, ...]:
        """Values of the parties registered with this email address (any case), for recipients.

        Remembered per address (the registers never change under a detector), so
        the council's usual correspondents cost one HMAC each, not one per message.
        """
        key = address.strip().casefold()
        found = self._parties_of.get(key)
        if found is None:
            digest = self._keyed.value(Keyed.MAIL, key)
            found = tuple(entry.value(False) for entry in self._mail.get(digest, ()))
            if len(self._parties_of) >= _PARTIES_REMEMBERED:
                self._parties_of.clear()
            self._parties_of[key] = found
        return found


@dataclass(frozen=True, slots=True)
class _Fact:
    place: int
    kind: str  # "strong" | "weak" | "pc"
    digest: bytes
    start: int
    end: int


_EVIDENCE = {
    "line": "street line matched",
    "parts": "two parts (street, building, postcode) matched together",
    "postcode": "postcode only",
}


class ProtectedAddressDetector:
    """Protected addresses, however abbreviated or ordered."""

    name = "edm_protected_address"

    def __init__(self, keyed: Keyed, registers: Sequence[Register], tokens: TokenFilter) -> None:
        self._tokens = tokens
        self._digests = _Digests(keyed)
        self._reader = _Reader(
            keyed, address_forms, {bytes.fromhex(h) for r in registers for h in r.vocabulary}
        )
        labels = {keyed.value(Keyed.LABEL, label_key(label)).hex(): label for label in LABELS}
        self._places: list[tuple[str, str]] = []  # (id, label or "")
        self._facts: dict[bytes, list[tuple[int, str]]] = {}
        lengths: set[int] = set()
        for register in registers:
            lengths.update(register.lengths)
            for place in register.places:
                index = len(self._places)
                self._places.append((place.id, labels.get(place.label, "")))
                for kind, digests in (("strong", place.strong), ("weak", place.weak)):
                    for digest in digests:
                        self._facts.setdefault(bytes.fromhex(digest), []).append((index, kind))
                if place.pc:
                    self._facts.setdefault(bytes.fromhex(place.pc), []).append((index, "pc"))
        self._lengths = tuple(sorted(lengths))
        self._reach = max(min(max(lengths, default=1), MAX_WINDOW) - 1, 1)
        self.places = len(self._places)

    def scan(self, text: str) -> list[Hit]:
        return self._match(self._candidates(text))

    def _candidates(self, text: str) -> Iterator[tuple[bytes, list[_Token]]]:
        """The windows worth hashing, through an anchor in a run of address words:
        as a sequence of address words, and (one or two tokens) as a postcode."""
        anchors = self._tokens.anchors(text, _ADDRESS)
        runs = _runs(text, anchors, self._reach, self._reader, _DOTTED_ABBREVIATIONS, _postcode)
        for tokens, marks in runs:
            for window in _windows(tokens, marks, self._lengths):
                yield Keyed.ADDRESS, window
            for window in _windows(tokens, marks, (1, 2)):
                yield Keyed.POSTCODE, window

    def _match(self, windows: Iterable[tuple[bytes, list[_Token]]]) -> list[Hit]:
        facts: list[_Fact] = []
        seen: set[tuple[bytes, int, int]] = set()
        for purpose, window in windows:
            span = (window[0].start, window[-1].end)
            if (purpose, *span) in seen:
                continue  # a window through several anchors is read once
            seen.add((purpose, *span))
            if purpose == Keyed.POSTCODE:
                joined = "".join([token.form for token in window])
                if not _POSTCODE_SHAPE.fullmatch(joined):  # "ns47qj", or "ns4" + "7qj"
                    continue
            else:
                joined = " ".join([token.form for token in window])
            self._look_up(purpose, joined, span, facts)
        return self._hits(facts) if facts else []

    def _look_up(
        self, purpose: bytes, joined: str, span: tuple[int, int], facts: list[_Fact]
    ) -> None:
        digest = self._digests[purpose, joined]
        for place, kind in self._facts.get(digest, ()):
            if (kind == "pc") == (purpose == Keyed.POSTCODE):
                facts.append(_Fact(place, kind, digest, *span))

    def _hits(self, facts: list[_Fact]) -> list[Hit]:
        by_place: dict[int, list[_Fact]] = {}
        for fact in facts:
            by_place.setdefault(fact.place, []).append(fact)
        hits: list[Hit] = []
        for place, found in by_place.items():
            graded = [(f.start, f.end, Confidence.HIGH) for f in found if f.kind == "strong"]
            graded += _combined(sorted((f for f in found if f.kind != "strong"), key=_start))
            if not graded:
                continue  # a street or building name alone
            best = max(confidence for _, _, confidence in graded)
            evidence = {Confidence.HIGH: "line", Confidence.MEDIUM: "parts"}.get(best, "postcode")
            place_id, label = self._places[place]
            value = f"addr:{place_id}:{evidence}:{label}"
            hits.extend(Hit(value, start, end, confidence) for start, end, confidence in graded)
        return hits

    def redact(self, value: str) -> str:
        """The label and what matched, never the address: "protected address (refuge), ..."."""
        _, _, evidence, label = value.split(":", 3)
        named = f"protected address ({label})" if label else "protected address"
        return f"{named}, {_EVIDENCE.get(evidence, 'matched')}"


def _never(forms: tuple[str, ...]) -> bool:
    return False


def _postcode(forms: tuple[str, ...]) -> bool:
    return any(_POSTCODE_SHAPE.fullmatch(form) for form in forms)


def _start(fact: _Fact) -> int:
    return fact.start


def _combined(weak: list[_Fact]) -> list[tuple[int, int, Confidence]]:
    """Two different weak parts near each other are MEDIUM; a postcode left alone is LOW."""
    graded = []
    partnered: set[int] = set()
    for index, fact in enumerate(weak):
        for later in range(index + 1, len(weak)):
            other = weak[later]
            if other.start - fact.end > _PROXIMITY:
                break
            if other.digest != fact.digest and not _overlap(fact, other):
                graded.append((fact.start, max(fact.end, other.end), Confidence.MEDIUM))
                partnered.update((index, later))
                break
    graded += [
        (fact.start, fact.end, Confidence.LOW)
        for index, fact in enumerate(weak)
        if fact.kind == "pc" and index not in partnered
    ]
    return graded


def _overlap(one: _Fact, other: _Fact) -> bool:
    return one.start < other.end and other.start < one.end
