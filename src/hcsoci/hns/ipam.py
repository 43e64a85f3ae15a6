"""Address management: subnets, gateways, free addresses and endpoint MACs.

Pure functions; the state store serialises allocations (see :mod:`hcsoci.hns.state`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

from hcsoci.errors import InvalidArgumentError, StateError

__all__ = [
    "MAX_PREFIX_LENGTH",
    "SubnetFullError",
    "endpoint_mac",
    "first_free_address",
    "gateway_of",
    "overlapping",
    "parse_subnet",
]

MAX_PREFIX_LENGTH = 30
"""Longest usable prefix: a /30 holds the gateway and one endpoint."""


class SubnetFullError(StateError):
    """Every host address of a network's subnet is taken."""


def parse_subnet(value: str, field: str = "subnet") -> ipaddress.IPv4Network:
    """Parse an IPv4 CIDR such as ``10.201.3.0/24``; refuse host bits and tiny subnets."""
    if "/" not in value:
        raise InvalidArgumentError(f"{field} {value!r}: expected CIDR notation like 10.201.3.0/24")
    try:
        subnet = ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        raise InvalidArgumentError(f"{field} {value!r}: {err}") from None
    if not isinstance(subnet, ipaddress.IPv4Network):
        raise InvalidArgumentError(f"{field} {value!r}: only IPv4 subnets are supported")
    if subnet.prefixlen > MAX_PREFIX_LENGTH:
        raise InvalidArgumentError(
            f"{field} {value!r}: prefix /{subnet.prefixlen} leaves no room for a gateway "
            f"and an endpoint (at most /{MAX_PREFIX_LENGTH})"
        )
    return subnet


def gateway_of(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The subnet's first host address, which the network's bridge holds."""
    return subnet.network_address + 1


def overlapping(
    subnet: ipaddress.IPv4Network, others: Iterable[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network | None:
    """The first of ``others`` that overlaps ``subnet``, or None."""
    for other in others:
        if subnet.overlaps(other):
            return other
    return None


def first_free_address(
    network_id: str, subnet: ipaddress.IPv4Network, used: Iterable[str]
) -> ipaddress.IPv4Address:
    """The lowest host address of ``subnet`` that is neither the gateway nor ``used``.

    Raises :class:`SubnetFullError` naming the network when there is none.
    """
    taken = {ipaddress.IPv4Address(address) for address in used}
    taken.add(gateway_of(subnet))
    for candidate in subnet.hosts():
        if candidate not in taken:
            return candidate
    raise SubnetFullError(
        f"network {network_id}: subnet {subnet} is full "
        f"({subnet.num_addresses - 2} host addresses, gateway included, all taken)"
    )


def endpoint_mac(endpoint_id: str) -> str:
    """A stable, unicast, locally administered MAC address derived from ``endpoint_id``."""
    digest = bytearray(hashlib.sha256(endpoint_id.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02  # clear multicast bit, set locally-administered bit
    return ":".join(f"{byte:02x}" for byte in digest)
