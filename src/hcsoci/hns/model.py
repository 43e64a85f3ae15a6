"""The HNS objects: networks, endpoints and namespaces, as plain records.

They mirror hcsshim's ``HNSNetwork``, ``HNSEndpoint`` and ``Namespace`` with
snake_case fields.  They are snapshots: the state store holds the truth.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["NETWORK_TYPES", "Endpoint", "Namespace", "Network", "NetworkType"]

NetworkType = Literal["bridge", "nat"]
NETWORK_TYPES: tuple[NetworkType, ...] = ("bridge", "nat")


class Network(msgspec.Struct, kw_only=True):
    """A virtual network: a Linux bridge holding the gateway address of ``subnet``.

    A ``nat`` network also masquerades traffic from its subnet leaving the host.
    """

    id: str
    name: str
    type: NetworkType
    subnet: str
    """The IPv4 subnet, in CIDR notation (``10.201.3.0/24``)."""
    gateway: str
    """The gateway address: the subnet's first host address, held by the bridge."""
    bridge: str
    """The bridge interface's name."""
    dns_server_list: list[str] = msgspec.field(default_factory=list)
    """DNS servers handed to the network's endpoints."""


class Endpoint(msgspec.Struct, kw_only=True):
    """An endpoint (``HNSEndpoint``): a veth pair on a network, with an address and a MAC.

    The host side, :attr:`host_interface`, is a port of the network's bridge.  The
    other side is :attr:`interface` while the endpoint is in no namespace; in a
    namespace it is named :attr:`namespace_interface` (``eth0``, ``eth1``...).
    The pair is born when the endpoint is first added to a namespace, the peer
    directly inside it; before that the endpoint is only this record.
    """

    id: str
    name: str
    virtual_network: str
    """The id of the network the endpoint belongs to."""
    virtual_network_name: str
    mac_address: str
    """The namespace-side MAC: locally administered, derived from :attr:`id`."""
    ip_address: str
    prefix_length: int
    gateway_address: str
    dns_server_list: list[str] = msgspec.field(default_factory=list)
    namespace: str = ""
    """The id of the namespace holding the endpoint, or ``""``."""
    host_interface: str = ""
    interface: str = ""
    namespace_interface: str = ""
    """The interface's name inside :attr:`namespace` (``""`` when in none)."""


class Namespace(msgspec.Struct, kw_only=True):
    """A named network namespace (``/var/run/netns/NAME``) that outlives its creator."""

    id: str
    path: str
    """The nsfs bind mount: what a container's spec points its network namespace at."""
    endpoints: list[str] = msgspec.field(default_factory=list)
    """Ids of the endpoints in the namespace, in interface order (``eth0`` first)."""
