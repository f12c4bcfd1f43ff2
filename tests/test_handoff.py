"""The frames an accepting process hands to the reading process (smtpguard/handoff.py)."""

from __future__ import annotations

import pytest

from smtpguard.envelope import Envelope
from smtpguard.handoff import HandoffError, decode_frame, encode_frame, encode_tally
from smtpguard.metrics import Tally
from smtpguard.spool.files import SpoolHeader

HEADER = SpoolHeader(
    Envelope(
        "worker@council.example.gov.uk",
        ("partner@agency.example.org", "ängel@example.org"),
        "127.0.0.1",
        "mail.council.example.gov.uk",
        1_800_000_000.5,
        smtputf8=True,
    ),
    "relay",
    1_800_432_000.5,
)
MESSAGE_ID = "6615A72ABD5D800007A04"
# Line ends, a lone dot, bytes that are not UTF-8: a body is passed on exactly.
CONTENT = b"Subject: notes\r\n\r\n.\r\nline\nbare\r\n\xff\xfe\x00end\r\n"


def body_of(frame: bytes) -> bytes:
    length = int.from_bytes(frame[:4], "big")
    assert length == len(frame) - 4
    return frame[4:]


def test_a_frame_with_its_content_comes_back_as_it_was_sent() -> None:
    handed = decode_frame(body_of(encode_frame(MESSAGE_ID, HEADER, CONTENT, whole=True)))
    assert handed.message_id == MESSAGE_ID
    assert handed.header == HEADER
    assert (handed.size, handed.content) == (len(CONTENT), CONTENT)


def test_a_frame_without_its_content_says_to_read_the_spool_file() -> None:
    frame = encode_frame(MESSAGE_ID, HEADER, CONTENT, whole=False)
    handed = decode_frame(body_of(frame))
    assert (handed.message_id, handed.size, handed.content) == (MESSAGE_ID, len(CONTENT), None)
    assert len(frame) < 4 + 1 + 40 + len(HEADER.encode())


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"M",
        b"X" + f"{MESSAGE_ID} 3\n".encode() + HEADER.encode() + b"abc",  # an unknown kind
        b"M../../etc/passwd 3\n" + HEADER.encode() + b"abc",  # an id that is a path
        b"M" + f"{MESSAGE_ID.lower()} 3\n".encode() + HEADER.encode() + b"abc",
        b"M" + f"{MESSAGE_ID} 4\n".encode() + HEADER.encode() + b"abc",  # cut short
        b"M" + f"{MESSAGE_ID} three\n".encode() + HEADER.encode() + b"abc",
        b"M" + f"{MESSAGE_ID} 3\n".encode() + b"{not json}\n" + b"abc",
        b"M" + f"{MESSAGE_ID} 3\n".encode() + b'{"sender": "x"}\n' + b"abc",  # fields missing
        b"M\xff\xfe 3\n" + HEADER.encode() + b"abc",
    ],
    ids=[
        "empty",
        "kind-only",
        "unknown-kind",
        "path-id",
        "lowercase-id",
        "short-content",
        "size-not-a-number",
        "header-not-json",
        "header-incomplete",
        "id-not-ascii",
    ],
)
def test_a_frame_this_module_did_not_write_is_refused(body: bytes) -> None:
    with pytest.raises(HandoffError):
        decode_frame(body)


def test_an_accepting_process_s_counts_come_back_as_they_were_sent() -> None:
    tally = Tally(
        received=7, paced=2, replies={"2xx": 40, "3xx": 7, "4xx": 1, "5xx": 0}, sessions=3
    )
    assert decode_frame(body_of(encode_tally(tally))) == tally


@pytest.mark.parametrize(
    "fields",
    [
        b"",
        b"[]",
        b'{"received": 1, "paced": 0, "sessions": 0}',
        b'{"received": -1, "paced": 0, "replies": {}, "sessions": 0}',
        b'{"received": true, "paced": 0, "replies": {}, "sessions": 0}',
        b'{"received": 1.5, "paced": 0, "replies": {}, "sessions": 0}',
        b'{"received": 1, "paced": 0, "replies": {"2xx": "many"}, "sessions": 0}',
        b'{"received": 1, "paced": 0, "replies": [], "sessions": 0}',
    ],
    ids=[
        "empty",
        "a-list",
        "no-replies",
        "negative",
        "a-bool",
        "a-float",
        "a-word",
        "list-replies",
    ],
)
def test_counts_this_module_did_not_write_are_refused(fields: bytes) -> None:
    with pytest.raises(HandoffError):
        decode_frame(b"S" + fields)
