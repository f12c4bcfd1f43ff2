"""Which clients may relay: an explicit CIDR allowlist, nothing else."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAllowlist:
    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)

    def allows(self, peer: object) -> bool:
        """`peer` is the transport's peername; anything unreadable is refused."""
        if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
            return False
        host = peer[0].split("%", 1)[0]  # drop an IPv6 zone index
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(
            address.version == network.version and address in network for network in self._networks
        )
