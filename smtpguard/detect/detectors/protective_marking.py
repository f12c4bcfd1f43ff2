"""UK Government Security Classification markings, current and legacy.

A marking is the author saying "this is sensitive", so it is strong evidence
when written as a marking (upper case, at the top, or a "[TAG]" in the
subject) and weak in running prose. The legacy single words (PROTECT,
RESTRICTED, SECRET) are ordinary English too, so in lower or title case they
count only with a descriptor ("Restricted - Management"), never alone
("access is restricted"). Plain OFFICIAL is LOW: nearly everything a council
sends is OFFICIAL. Markings are not secret, so the redaction is the marking.

`markings_from_msip_labels` reads the Microsoft 365 `msip_labels` header,
where Outlook records the sensitivity label the sender chose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from smtpguard.detect.base import Confidence, Hit

_DASH = "\\-\u2010\u2011\u2012\u2013\u2014\u2212"
_OS_DESCRIPTORS = frozenset({"PERSONAL", "COMMERCIAL", "LOCSEN"})
# Descriptors of the pre-2014 Government Protective Marking Scheme.
_LEGACY_DESCRIPTORS = frozenset(
    {
        "APPOINTMENTS", "COMMERCIAL", "CONTRACTS", "INVESTIGATION", "MANAGEMENT",
        "MEDICAL", "PERSONAL", "POLICY", "STAFF", "VISITS",
    }
)  # fmt: skip
_ALL_DESCRIPTORS = sorted(_OS_DESCRIPTORS | _LEGACY_DESCRIPTORS, key=len, reverse=True)

_MARKING = re.compile(
    rf"""
    (?P<open>\[[ \t]*)?
    (?<![A-Za-z0-9])
    (?P<base>
        TOP[ \t_{_DASH}]+SECRET
      | OFFICIAL[ \t_{_DASH}]+SENSITIVE
      | OFFICIAL | PROTECT | RESTRICTED | SECRET
    )
    (?:
        (?P<sep>[ \t]*[:{_DASH}][ \t]*|[ \t]+)
        (?P<desc>{"|".join(_ALL_DESCRIPTORS)})
    )?
    (?![A-Za-z0-9])
    (?P<close>[ \t]*\])?
    """,
    re.IGNORECASE | re.VERBOSE,
)
# An upper-case word right before or after, on the same line: shouting, not a marking.
_CAPS_BEFORE = re.compile(r"[A-Z]{2,}[ \t]+$")
_CAPS_AFTER = re.compile(r"[ \t]+[A-Z]{2,}(?![a-z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"(?:\\ )+")
_EXTRA_SEP = rf"[ \\t_{_DASH}]+"


def _canonical(base: str, descriptor: str | None) -> str:
    words = _NON_ALNUM.split(base.lower())
    if words[0] == "official" and len(words) > 1:
        marking = "OFFICIAL-SENSITIVE"
        return f"{marking}: {descriptor}" if descriptor else marking
    marking = " ".join(words).upper()
    return f"{marking} - {descriptor}" if descriptor else marking


class ProtectiveMarkingDetector:
    """Finds OFFICIAL-SENSITIVE (and descriptors) and the legacy GPMS markings."""

    name = "protective_marking"
    reach: tuple[int, int] = (8, 48)

    def __init__(self, extra: Sequence[str] = (), labels: Mapping[str, str] | None = None) -> None:
        """`extra`: the council's own markings ("NORTHSHIRE CONFIDENTIAL"); `labels`:
        its sensitivity label names or GUIDs mapped to the marking they mean."""
        # Where the prefilter looks (see detect/prefilter.py): the marking's base word.
        self.triggers: tuple[str, ...] = (r"(?i)official|protect|restricted|secret",)
        self._extra: re.Pattern[str] | None = None
        if extra:
            words = "|".join(_SPACES.sub(_EXTRA_SEP, re.escape(e.strip())) for e in extra)
            self._extra = re.compile(rf"(?<![A-Za-z0-9])(?:{words})(?![A-Za-z0-9])", re.I)
            self.triggers += (f"(?i){words}",)
        self._labels = {key.strip().lower(): value for key, value in (labels or {}).items()}

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for match in _MARKING.finditer(text):
            hit = self._judge(text, match)
            if hit is not None:
                hits.append(hit)
        if self._extra is not None:
            hits += self._own_markings(text, self._extra)
        return hits

    def label_markings(self, header_value: str) -> list[Hit]:
        """Markings from an `msip_labels` header, with this council's label names."""
        return markings_from_msip_labels(header_value, self._labels)

    @staticmethod
    def _own_markings(text: str, pattern: re.Pattern[str]) -> list[Hit]:
        """A council's own marking: HIGH written in capitals or in brackets, else MEDIUM."""
        hits = []
        for match in pattern.finditer(text):
            word = match.group()
            bracketed = text[max(0, match.start() - 1) : match.start()] == "[" and (
                text[match.end() : match.end() + 1] == "]"
            )
            confidence = Confidence.HIGH if word.isupper() or bracketed else Confidence.MEDIUM
            value = " ".join(_NON_ALNUM.split(word.lower())).strip().upper()
            hits.append(Hit(value, match.start(), match.end(), confidence))
        return hits

    def _judge(self, text: str, match: re.Match[str]) -> Hit | None:
        base = match.group("base")
        base_key = _NON_ALNUM.sub(" ", base.lower()).strip().upper()
        desc = match.group("desc")
        end = match.end()
        dropped = False
        if desc is not None:
            allowed = _OS_DESCRIPTORS if base_key == "OFFICIAL SENSITIVE" else _LEGACY_DESCRIPTORS
            if base_key in {"OFFICIAL", "SECRET", "TOP SECRET"}:
                allowed = frozenset()
            # "OFFICIAL-SENSITIVE personal data" is prose after a marking, not a descriptor.
            explicit = match.group("sep").strip() != "" or desc.isupper()
            if desc.upper() not in allowed or not explicit:
                desc, dropped = None, True
        bracketed = (
            not dropped and match.group("open") is not None and match.group("close") is not None
        )
        if desc is None and not bracketed:
            end = match.end("base")
        start = match.start() if bracketed else match.start("base")
        upper = base.isupper() and (desc is None or desc.isupper())
        descriptor = desc.upper() if desc else None
        value = _canonical(base, descriptor)

        if base_key == "OFFICIAL":
            if not (upper or bracketed):
                return None
            confidence = Confidence.LOW
        elif base_key == "OFFICIAL SENSITIVE":
            confidence = Confidence.HIGH if upper or bracketed else Confidence.MEDIUM
        elif bracketed:
            confidence = Confidence.HIGH
        elif upper:
            shouting = descriptor is None and (
                _CAPS_BEFORE.search(text, max(0, start - 40), start) is not None
                or _CAPS_AFTER.match(text, end) is not None
            )
            confidence = Confidence.MEDIUM if shouting else Confidence.HIGH
        elif descriptor is not None:
            confidence = Confidence.MEDIUM
        else:
            return None  # "restricted", "Secret", "protect": ordinary words
        return Hit(value, start, end, confidence)

    def redact(self, value: str) -> str:
        """Markings are labels, not content: show them."""
        return value


DETECTOR = ProtectiveMarkingDetector()


def build(
    extra: Sequence[str] = (), labels: Mapping[str, str] | None = None
) -> ProtectiveMarkingDetector:
    """The council's own markings and label names; every one must say something."""
    for word in extra:
        if not _NON_ALNUM.sub("", word.lower()):
            raise ValueError(f"protective_marking: empty marking {word!r}")
    for name, marking in (labels or {}).items():
        if not name.strip() or not marking.strip():
            raise ValueError(f"protective_marking: label {name!r} needs a name and a marking")
    return ProtectiveMarkingDetector(extra, labels)


# msip_labels: "MSIP_Label_<guid>_<Field>=<value>;" pairs, folded across lines.
_MSIP_FIELD = re.compile(
    r"MSIP_Label_(?P<guid>[0-9A-Fa-f-]{8,})_(?P<field>[A-Za-z]+)=(?P<value>[^;\r\n]*)"
)


def _label_marking(name: str) -> tuple[str, Confidence] | None:
    words = " ".join(_NON_ALNUM.split(name.lower())).strip()
    padded = f" {words} "
    if "official sensitive" in words or "officialsensitive" in words:
        for descriptor in ("personal", "commercial", "locsen"):
            if f" {descriptor} " in padded:
                return f"OFFICIAL-SENSITIVE: {descriptor.upper()}", Confidence.HIGH
        return "OFFICIAL-SENSITIVE", Confidence.HIGH
    if " personal " in padded and (" official " in padded or " sensitive " in padded):
        # "OFFICIAL - Personal", "Sensitive Personal": the PERSONAL descriptor's meaning.
        return "OFFICIAL-SENSITIVE: PERSONAL", Confidence.HIGH
    if " top secret " in padded:
        return "TOP SECRET", Confidence.HIGH
    for legacy in ("restricted", "protect", "secret"):
        if f" {legacy} " in padded:
            for descriptor in sorted(_LEGACY_DESCRIPTORS):
                if f" {descriptor.lower()} " in padded:
                    return f"{legacy.upper()} - {descriptor}", Confidence.HIGH
            return legacy.upper(), Confidence.HIGH
    if words == "official":
        return "OFFICIAL", Confidence.LOW
    return None


def markings_from_msip_labels(
    header_value: str, labels: Mapping[str, str] | None = None
) -> list[Hit]:
    """Markings from the sensitivity labels in an `msip_labels` header.

    Only labels not explicitly `_Enabled=false` count (a removed label says
    nothing). Offsets are into `header_value`, spanning the label name.
    Labels outside the UK scheme (Microsoft's default "Personal",
    "Confidential") are not mapped: their meaning varies per tenant.
    """
    disabled: set[str] = set()
    names: list[tuple[str, re.Match[str]]] = []
    for match in _MSIP_FIELD.finditer(header_value):
        guid = match.group("guid").lower()
        field = match.group("field").lower()
        if field == "enabled" and match.group("value").strip().lower() == "false":
            disabled.add(guid)
        elif field == "name":
            names.append((guid, match))
    hits: list[Hit] = []
    for guid, match in names:
        if guid in disabled:
            continue
        own = (labels or {}).get(match.group("value").strip().lower()) or (labels or {}).get(guid)
        mapped = (own, Confidence.HIGH) if own else _label_marking(match.group("value"))
        if mapped is not None:
            value, confidence = mapped
            hits.append(Hit(value, match.start("value"), match.end("value"), confidence))
    return hits
