"""Which clients may relay: an explicit CIDR allowlist, nothing else."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_REMEMBERED = 4096


class ClientAllowlist:
    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)
        self._decided: dict[str, bool] = {}  # the same few mail servers connect all day

    def allows(self, peer: object) -> bool:
        """`peer` is the transport's peername; anything unreadable is refused."""
        if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
            return False
        decided = self._decided.get(peer[0])
        if decided is None:
            decided = self._decide(peer[0])
            if len(self._decided) >= _REMEMBERED:
                self._decided.clear()
            self._decided[peer[0]] = decided
        return decided

    def _decide(self, peer_host: str) -> bool:
        host = peer_host.split("%", 1)[0]  # drop an IPv6 zone index
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(
            address.version == network.version and address in network for network in self._networks
        )
