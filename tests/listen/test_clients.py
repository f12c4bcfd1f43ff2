"""Which clients may relay: `ClientAllowlist.allows(peername)`.

`peername` is whatever the transport reports: `(host, port)` for IPv4,
`(host, port, flowinfo, scope_id)` for IPv6, a path string (often empty) for a
UNIX socket, or None. Anything that is not a readable IP address is refused.
"""

from __future__ import annotations

import ipaddress

import pytest

from smtpguard.listen.clients import ClientAllowlist


def allowlist(*cidrs: str) -> ClientAllowlist:
    return ClientAllowlist(ipaddress.ip_network(cidr) for cidr in cidrs)


MIXED = allowlist("127.0.0.0/8", "10.1.0.0/16", "::1/128", "2001:db8:1::/48", "fe80::/64")


@pytest.mark.parametrize(
    "peer, expected",
    [
        pytest.param(("127.0.0.1", 40000), True, id="v4-loopback"),
        pytest.param(("127.255.255.254", 1), True, id="v4-top-of-loopback"),
        pytest.param(("10.1.200.3", 25), True, id="v4-in-16"),
        pytest.param(("10.2.0.1", 25), False, id="v4-next-16"),
        pytest.param(("10.0.255.255", 25), False, id="v4-just-below"),
        pytest.param(("192.0.2.1", 25), False, id="v4-outside"),
        pytest.param(("0.0.0.0", 25), False, id="v4-unspecified"),
        pytest.param(("::1", 40000, 0, 0), True, id="v6-loopback-4-tuple"),
        pytest.param(("::1", 40000), True, id="v6-loopback-2-tuple"),
        pytest.param(("2001:db8:1:ffff::9", 25, 0, 0), True, id="v6-in-48"),
        pytest.param(("2001:DB8:1::A", 25, 0, 0), True, id="v6-upper-case"),
        pytest.param(("2001:db8:2::1", 25, 0, 0), False, id="v6-next-48"),
        pytest.param(("::2", 25, 0, 0), False, id="v6-next-to-loopback"),
        pytest.param(("::", 25, 0, 0), False, id="v6-unspecified"),
        pytest.param(("::ffff:127.0.0.1", 25, 0, 0), True, id="v4-mapped-loopback"),
        pytest.param(("::ffff:10.1.0.9", 25, 0, 0), True, id="v4-mapped-in-16"),
        pytest.param(("::ffff:10.0.0.1", 25, 0, 0), False, id="v4-mapped-outside"),
        pytest.param(("::ffff:7f00:1", 25, 0, 0), True, id="v4-mapped-hex-spelling"),
        pytest.param(("fe80::1%eth0", 25, 0, 2), True, id="v6-zone-index-in"),
        pytest.param(("fe80::1%2", 25, 0, 2), True, id="v6-numeric-zone-index-in"),
        pytest.param(("fe80:0:0:1::1%eth0", 25, 0, 2), False, id="v6-zone-index-out"),
        pytest.param(("192.0.2.1%eth0", 25), False, id="v4-with-zone-out"),
    ],
)
def test_when_peer_address_then_allowed_only_inside_a_listed_network(
    peer: tuple[object, ...], expected: bool
) -> None:
    assert MIXED.allows(peer) is expected


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty-string"),
        pytest.param("127.0.0.1", id="bare-string-not-tuple"),
        pytest.param("/run/smtpguard/smtpguard.sock", id="unix-socket-path"),
        pytest.param(b"127.0.0.1", id="bytes"),
        pytest.param((), id="empty-tuple"),
        pytest.param(("",), id="empty-host"),
        pytest.param(("", 0), id="empty-host-with-port"),
        pytest.param(("not-an-ip", 25), id="not-an-ip"),
        pytest.param(("localhost", 25), id="host-name"),
        pytest.param(("127.0.0.1/8", 25), id="network-not-address"),
        pytest.param(("127.0.0.01", 25), id="leading-zero-octet"),
        pytest.param((" 127.0.0.1", 25), id="leading-space"),
        pytest.param(("%eth0", 25), id="only-zone"),
        pytest.param((None, 25), id="host-none"),
        pytest.param((2130706433, 25), id="host-as-integer"),
        pytest.param((b"127.0.0.1", 25), id="host-as-bytes"),
        pytest.param(["127.0.0.1", 25], id="list-not-tuple"),
        pytest.param(object(), id="object"),
    ],
)
def test_when_peer_is_not_an_ip_address_then_refused(peer: object) -> None:
    assert allowlist("0.0.0.0/0", "::/0").allows(peer) is False


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(("127.0.0.1", 25), id="v4"),
        pytest.param(("::1", 25, 0, 0), id="v6"),
        pytest.param(("::ffff:127.0.0.1", 25, 0, 0), id="v4-mapped"),
        pytest.param(None, id="none"),
    ],
)
def test_when_allowlist_empty_then_everyone_refused(peer: object) -> None:
    assert ClientAllowlist([]).allows(peer) is False


@pytest.mark.parametrize(
    "cidrs, peer, expected",
    [
        # an IPv6 network never matches an IPv4 client, whatever the bits
        pytest.param(("::/0",), ("127.0.0.1", 25), False, id="v6-everything-vs-v4"),
        pytest.param(("::/96",), ("0.0.0.1", 25), False, id="v4-compatible-range-vs-v4"),
        pytest.param(("::7f00:0/104",), ("127.0.0.1", 25), False, id="same-low-bits-vs-v4"),
        # an IPv4 network never matches a (non-mapped) IPv6 client
        pytest.param(("0.0.0.0/0",), ("::1", 25, 0, 0), False, id="v4-everything-vs-v6"),
        pytest.param(
            ("0.0.0.0/0",), ("2001:db8::1", 25, 0, 0), False, id="v4-everything-vs-global-v6"
        ),
        pytest.param(("0.0.0.0/0",), ("::7f00:1", 25, 0, 0), False, id="v4-vs-v4-compatible"),
        pytest.param(("127.0.0.0/8",), ("64:ff9b::7f00:1", 25, 0, 0), False, id="v4-vs-nat64"),
        pytest.param(("127.0.0.0/8",), ("2002:7f00:1::1", 25, 0, 0), False, id="v4-vs-6to4"),
        # sanity: each family still matches itself
        pytest.param(("::/0",), ("2001:db8::1", 25, 0, 0), True, id="v6-everything-vs-v6"),
        pytest.param(("0.0.0.0/0",), ("192.0.2.1", 25), True, id="v4-everything-vs-v4"),
    ],
)
def test_when_network_family_differs_from_client_then_no_match(
    cidrs: tuple[str, ...], peer: tuple[object, ...], expected: bool
) -> None:
    assert allowlist(*cidrs).allows(peer) is expected


def test_when_built_from_a_generator_then_networks_are_kept() -> None:
    networks = (ipaddress.ip_network(c) for c in ("127.0.0.0/8", "::1/128"))
    allow = ClientAllowlist(networks)
    # a one-shot iterable must not be exhausted by the first check
    assert allow.allows(("127.0.0.1", 1))
    assert allow.allows(("127.0.0.1", 1))
    assert allow.allows(("::1", 1, 0, 0))
