"""Bounded, deterministic fuzzing of parse + detect + decide for CI.

The long, coverage-guided runs are atheris (`fuzz/parse_detect.py`, see
fuzz/README.md). Here hypothesis mutates the same seed messages (generated
from the scenario builders, the detector corpus and the benchmark messages)
with a fixed seed, plants identifiers anywhere, and holds every result to the
invariants of `fuzz/checks.py`: `read_message` and `inspect_message` never
raise, an unreadable part is an `uninspectable` finding, and no excerpt or
explanation shows a whole planted identifier.

tests/parse/test_mime.py already throws random bytes and random MIME trees at
`parse_message`; this adds mutated real messages through the whole reading.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.checks import check_message
from fuzz.seeds import normalised, planted_texts, planted_values, small_parse_seeds

SEEDS = small_parse_seeds(30)
PLANTS = planted_texts()
PLANTED = planted_values() | {normalised(text) for text in PLANTS}
TOKENS = (
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\r\n--",
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b'Content-Type: text/plain; charset="utf-16"\r\n',
    b"Content-Disposition: attachment; filename*=utf-8''%ff%fe.pdf\r\n",
    b"=?utf-8?b?",
    b"=?x-unknown?q?=00?=",
    b"PK\x03\x04",
    b"%PDF-1.7\n",
    b"\x1f\x8b\x08",
    b"{\\rtf1",
    b"<html><div style='display:none'>",
    "\u202e\ufeff".encode(),
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    _, raw = draw(st.sampled_from(SEEDS))
    data = bytearray(raw)
    for operation in draw(st.lists(st.integers(0, 6), min_size=1, max_size=6)):
        at = draw(st.integers(0, len(data)))
        if operation == 0 and data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif operation == 1:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif operation == 2:
            del data[at : at + draw(st.integers(1, 512))]
        elif operation == 3:
            data[at:at] = data[at : at + draw(st.integers(1, 2048))] * draw(st.integers(1, 4))
        elif operation == 4:
            data[at:at] = f" {draw(st.sampled_from(PLANTS))} ".encode()
        elif operation == 5:
            data[at:at] = draw(st.sampled_from(TOKENS))
        else:
            del data[max(at, 1) :]
    return bytes(data)


@settings(
    max_examples=300,
    deadline=timedelta(seconds=15),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_messages())
def test_mutated_real_messages_are_read_safely(raw: bytes) -> None:
    check_message(raw, PLANTED)


@settings(max_examples=100, deadline=timedelta(seconds=15), derandomize=True, database=None)
@given(st.sampled_from(SEEDS), st.sampled_from(PLANTS), st.data())
def test_an_identifier_planted_anywhere_never_shows_whole(
    seed: tuple[str, bytes], plant: str, data: st.DataObject
) -> None:
    _, raw = seed
    at = data.draw(st.integers(0, len(raw)))
    check_message(raw[:at] + f"\r\n{plant}\r\n".encode() + raw[at:], PLANTED)


def test_every_seed_passes() -> None:
    for _, raw in SEEDS:
        check_message(raw, PLANTED)


def test_the_leak_check_would_see_a_whole_identifier() -> None:
    from fuzz.checks import leaked

    assert leaked(["NHS number 943 476 5919"], frozenset({"9434765919"})) == ["9434765919"]
    assert leaked(["NHS number *** *** 5919"], frozenset({"9434765919"})) == []
