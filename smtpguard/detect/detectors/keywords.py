"""Social-care and special-category keyword dictionaries.

Design: one `KeywordDetector` holds every theme's terms and finds them with
ONE compiled regex (a character trie rendered as a prefix-factored
alternation, which `re` walks far faster than a flat list of hundreds of
alternatives). Each hit's value is `"theme:term"` with the canonical term, so
variants ("s.47 enquiry") count as their term and the finding can name the
theme. Confidence carries the dictionary's judgement:

* HIGH - the term is `standalone: true` (MARAC, section 47 enquiry): sensitive alone.
* LOW - proximity-only (refuge, allegation): the engine upgrades it only
  when an identifier is near; on its own it should decide nothing.

`KeywordDetector.term(value)` returns the `KeywordTerm` behind a value for
rules that want the theme or the flag without parsing strings.

Matching is case-insensitive, on whole words (an optional plural "s" is
allowed; "refugee" never matches "refuge"), and tolerant of any run of
spaces, hyphens, dashes or underscores between a term's words.

Dictionaries are admin-edited YAML; every mistake (unknown key, empty or
duplicate term) is a `ValueError` naming the file and the term.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smtpguard.detect.base import Confidence, Hit

_SEP_CHARS = " \t\r\n\f\v-\u2010\u2011\u2012\u2013\u2014\u2212_"
_SEP_RUN = re.compile(f"[{re.escape(_SEP_CHARS)}]+")
_SEP_RE = f"[{re.escape(_SEP_CHARS)}]*"
_APOSTROPHES = "'\u2019"
_APOS_RE = f"[{_APOSTROPHES}]?"
_THEME = re.compile(r"[a-z][a-z0-9_]*")
_TOP_KEYS = frozenset({"theme", "terms"})
_TERM_KEYS = frozenset({"term", "standalone", "variants"})

# Trie units besides literal characters.
_SEP = "\x00sep"
_APOS = "\x00apos"


@dataclass(frozen=True)
class KeywordTerm:
    theme: str
    term: str
    standalone: bool

    @property
    def value(self) -> str:
        return f"{self.theme}:{self.term}"


def _key(phrase: str) -> str:
    """Matching identity of a phrase: lower case, no separators, no apostrophes."""
    stripped = _SEP_RUN.sub("", phrase.lower())
    return stripped.translate({ord(c): None for c in _APOSTROPHES})


def _units(phrase: str) -> list[str]:
    units: list[str] = []
    for index, token in enumerate(_SEP_RUN.split(phrase.strip().lower())):
        if index:
            units.append(_SEP)
        units.extend(_APOS if char in _APOSTROPHES else char for char in token)
    return units


def _trie_regex(phrases: Iterable[str]) -> str:
    trie: dict[str, Any] = {}
    for phrase in phrases:
        node = trie
        for unit in _units(phrase):
            node = node.setdefault(unit, {})
        node[""] = {}
    return _render(trie)


def _render(node: dict[str, Any]) -> str:
    ends = "" in node
    branches: list[str] = []
    for unit in sorted(key for key in node if key):
        if unit == _SEP:
            head = _SEP_RE
        elif unit == _APOS:
            head = _APOS_RE
        else:
            head = re.escape(unit)
        branches.append(head + _render(node[unit]))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if ends:
        body = f"(?:{body})?" if len(branches) == 1 else body + "?"
    return body


class KeywordDetector:
    """Finds dictionary terms; HIGH for standalone terms, LOW for proximity-only ones."""

    name = "keywords"

    def __init__(
        self,
        terms: Sequence[KeywordTerm],
        by_key: dict[str, list[KeywordTerm]],
        phrases: Sequence[str],
    ) -> None:
        self._terms = {term.value: term for term in terms}
        self._by_key = by_key
        self._regex: re.Pattern[str] | None = None
        # Where the prefilter looks (see detect/prefilter.py): the terms themselves.
        self.triggers: tuple[str, ...] = ()
        self.reach: tuple[int, int] = (0, 8)
        if phrases:
            source = _trie_regex(phrases)
            self._regex = re.compile(rf"(?<!\w){source}s?(?!\w)", re.IGNORECASE)
            # One expression per phrase: Hyperscan's literal matchers beat one big alternation.
            self.triggers = tuple(rf"(?i)\b{_trie_regex([phrase])}" for phrase in phrases)

    @property
    def terms(self) -> tuple[KeywordTerm, ...]:
        return tuple(self._terms.values())

    def term(self, value: str) -> KeywordTerm | None:
        return self._terms.get(value)

    @staticmethod
    def theme_of(value: str) -> str:
        """The theme of a hit's value ("health:overdose" -> "health"): findings are per theme."""
        return value.partition(":")[0]

    def scan(self, text: str) -> list[Hit]:
        if self._regex is None:
            return []
        hits: list[Hit] = []
        for match in self._regex.finditer(text):
            key = _key(match.group())
            entries = self._by_key.get(key)
            if entries is None and key.endswith("s"):
                entries = self._by_key.get(key[:-1])
            for entry in entries or ():
                confidence = Confidence.HIGH if entry.standalone else Confidence.LOW
                hits.append(Hit(entry.value, match.start(), match.end(), confidence))
        return hits

    def redact(self, value: str) -> str:
        """Terms are the dictionary's words, not the message's secrets: show them."""
        theme, _, term = value.partition(":")
        return f"keyword ({theme.replace('_', ' ')}): {term}"


def _load_file(path: Path) -> list[tuple[KeywordTerm, list[str]]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'theme' and 'terms'")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(map(str, unknown))}")
    theme = data.get("theme")
    if not isinstance(theme, str) or not _THEME.fullmatch(theme):
        raise ValueError(f"{path}: 'theme' must be a lower-case name like child_protection")
    raw_terms = data.get("terms")
    if not isinstance(raw_terms, list) or not raw_terms:
        raise ValueError(f"{path}: 'terms' must be a non-empty list")
    loaded: list[tuple[KeywordTerm, list[str]]] = []
    for index, raw in enumerate(raw_terms):
        where = f"{path}: term #{index + 1}"
        if isinstance(raw, str):
            raw = {"term": raw}
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a mapping like {{term: ..., standalone: true}}")
        term = raw.get("term")
        if not isinstance(term, str) or not _key(term):
            raise ValueError(f"{where}: empty or missing 'term'")
        where = f"{path}: term {term!r}"
        unknown = set(raw) - _TERM_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(map(str, unknown))}")
        standalone = raw.get("standalone", False)
        if not isinstance(standalone, bool):
            raise ValueError(f"{where}: 'standalone' must be true or false")
        variants = raw.get("variants", [])
        if not isinstance(variants, list) or not all(
            isinstance(v, str) and _key(v) for v in variants
        ):
            raise ValueError(f"{where}: 'variants' must be a list of non-empty strings")
        loaded.append((KeywordTerm(theme, term.strip(), standalone), [term, *variants]))
    return loaded


def build(paths: Sequence[Path]) -> KeywordDetector:
    """Load and validate dictionaries; one detector, one regex, for all of them."""
    terms: list[KeywordTerm] = []
    by_key: dict[str, list[KeywordTerm]] = {}
    all_phrases: list[str] = []
    seen: dict[tuple[str, str], tuple[Path, str]] = {}
    for path in paths:
        for entry, phrases in _load_file(Path(path)):
            for phrase in phrases:
                key = _key(phrase)
                first = seen.get((entry.theme, key))
                if first is not None:
                    raise ValueError(
                        f"{path}: duplicate term {phrase!r} in theme {entry.theme!r} "
                        f"(already as {first[1]!r} in {first[0]})"
                    )
                seen[(entry.theme, key)] = (Path(path), phrase)
                by_key.setdefault(key, []).append(entry)
                all_phrases.append(phrase)
            terms.append(entry)
    return KeywordDetector(terms, by_key, all_phrases)


def default_dir() -> Path | None:
    """`config/keywords` of the checkout this module runs from, if there is one."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "config" / "keywords"
        if candidate.is_dir():
            return candidate
    return None


def load_default() -> KeywordDetector:
    """The shipped dictionaries; with none found (an installed wheel), an empty detector.

    Deployments pass their configured paths to `build`; this is for the
    demo, tests and `scan` without a config.
    """
    directory = default_dir()
    paths = sorted(directory.glob("*.yaml")) if directory is not None else []
    return build(paths)
