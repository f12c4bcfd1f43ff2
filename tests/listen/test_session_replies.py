"""Reply shaping and path parsing of the SMTP session, tested as plain functions.

`with_enhanced_code` gives every single-line reply an RFC 2034/3463 enhanced
status code (aiosmtpd writes some replies without one); `_split_path` reads
the `<path> parameters` argument of MAIL FROM: and RCPT TO:.
"""

from __future__ import annotations

import pytest

from smtpguard.listen import replies
from smtpguard.listen.session import _split_path, with_enhanced_code


@pytest.mark.parametrize(
    "text, expected",
    [
        # replies without an enhanced code get the default for their code
        ("250 OK", "250 2.0.0 OK"),
        ("250", "250 2.0.0"),
        ("250 ", "250 2.0.0"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("252 Cannot VRFY user", "252 2.0.0 Cannot VRFY user"),
        ("421 Too many connections", "421 4.3.0 Too many connections"),
        ("451 Temporary failure", "451 4.3.0 Temporary failure"),
        ("502 Command not implemented", "502 5.5.1 Command not implemented"),
        (
            "530 Must issue a STARTTLS command first",
            "530 5.7.0 Must issue a STARTTLS command first",
        ),
        ("554 Transaction failed", "554 5.7.0 Transaction failed"),
        # aiosmtpd's "Error: " prefix goes; the words after it stay
        ("500 Error: bad syntax", "500 5.5.2 bad syntax"),
        (
            '500 Error: command "XYZZY" not recognized',
            '500 5.5.2 command "XYZZY" not recognized',
        ),
        ("503 Error: need MAIL command", "503 5.5.1 need MAIL command"),
        ("501 Error: ", "501 5.5.4"),
        (
            "500 Line too long (see RFC5321 4.5.3.1.6)",
            "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)",
        ),
        # replies that already carry an enhanced code are left as they are
        ("250 2.1.0 Sender OK", "250 2.1.0 Sender OK"),
        ("250 2.0.0", "250 2.0.0"),
        ("550 5.7.1 Refused by policy", "550 5.7.1 Refused by policy"),
        ("451 4.3.0 Try again later", "451 4.3.0 Try again later"),
        ("552 5.3.4 Too big", "552 5.3.4 Too big"),
        ("235 2.7.0 Authentication successful", "235 2.7.0 Authentication successful"),
        (
            "535 5.7.8 Authentication credentials invalid",
            "535 5.7.8 Authentication credentials invalid",
        ),
        ("250 2.123.456 odd but valid", "250 2.123.456 odd but valid"),
        # the greeting and the DATA go-ahead are left without one (as Postfix does)
        ("220 relay.test ESMTP smtpguard", "220 relay.test ESMTP smtpguard"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("354 Error: x", "354 Error: x"),
        # continuation lines of a multi-line reply are left alone
        ("250-relay.test", "250-relay.test"),
        ("250-SIZE 52428800", "250-SIZE 52428800"),
        ("250-PIPELINING", "250-PIPELINING"),
        ("500-Error: first line", "500-Error: first line"),
        # codes with no known default are not guessed at
        ("334 ", "334 "),
        ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
        ("538 Encryption required", "538 Encryption required"),
    ],
)
def test_when_reply_lacks_enhanced_code_then_default_added(text: str, expected: str) -> None:
    assert with_enhanced_code(text) == expected


@pytest.mark.parametrize(
    "name",
    [name for name in dir(replies) if name.startswith("R") and name[1:4].isdigit()],
)
def test_when_reply_is_one_of_ours_then_unchanged(name: str) -> None:
    text = getattr(replies, name)
    assert with_enhanced_code(text) == text


@pytest.mark.parametrize("code", sorted(replies.ENHANCED_DEFAULTS))
def test_when_default_enhanced_code_then_its_class_matches_the_reply(code: str) -> None:
    # RFC 3463: the class digit of the enhanced code is the first digit of the reply
    assert replies.ENHANCED_DEFAULTS[code][0] == code[0]
    assert with_enhanced_code(f"{code} text").startswith(
        f"{code} {replies.ENHANCED_DEFAULTS[code]} "
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<a@b>", ("a@b", "")),
        ("<>", ("", "")),
        ("  <a@b>  ", ("a@b", "")),
        ("<user@council.example>", ("user@council.example", "")),
        ("<a@b> SIZE=10", ("a@b", "SIZE=10")),
        ("<a@b> SIZE=10 BODY=8BITMIME", ("a@b", "SIZE=10 BODY=8BITMIME")),
        ("<a@b>   SIZE=10   BODY=8BITMIME  ", ("a@b", "SIZE=10   BODY=8BITMIME")),
        ("<> SIZE=1000", ("", "SIZE=1000")),
        ("<a@b> SMTPUTF8", ("a@b", "SMTPUTF8")),
        # RFC 5321 4.1.2 source routes are accepted and dropped (appendix C)
        ("<@x:a@b>", ("a@b", "")),
        ("<@x,@y:a@b>", ("a@b", "")),
        ("<@x.example,@y.example:a@b> BODY=7BIT", ("a@b", "BODY=7BIT")),
        # quoted local parts: ">" and spaces inside quotes do not end the path
        ('<"a>b"@c>', ('"a>b"@c', "")),
        ('<"a b"@c> BODY=7BIT', ('"a b"@c', "BODY=7BIT")),
        ('<"a\\">b"@c>', ('"a\\">b"@c', "")),
        ('<"@x:y"@c>', ('"@x:y"@c', "")),
        ("<j\u00f6rg@b\u00fccher.example>", ("j\u00f6rg@b\u00fccher.example", "")),
        # refused: not a path at all
        ("a@b", None),
        ("", None),
        ("   ", None),
        ("a@b>", None),
        ("SIZE=10 <a@b>", None),
        ("<a@b", None),
        ("<", None),
        ("<@x,@y:a@b", None),
        ('<"a>b@c>', None),
        ('<"a@b> SIZE=10', None),
    ],
)
def test_when_split_path_then_address_and_parameters(
    text: str, expected: tuple[str, str] | None
) -> None:
    assert _split_path(text) == expected


@pytest.mark.parametrize("text", ["<@x:>", "<@x,@y:>"])
def test_when_source_route_has_no_mailbox_then_refused(text: str) -> None:
    assert _split_path(text) is None
