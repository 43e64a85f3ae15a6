"""Published ports: a host port forwarded to a container's endpoint (``docker run -p``).

``-p [IP:]HOSTPORT:PORT[/tcp|/udp]`` becomes a DNAT map element in the
container network's own nftables table (see :func:`hcsoci.hns.firewall.add_port_forward`):
traffic to ``HOSTPORT`` on any local address -- or on ``IP`` only -- from this
machine (loopback included) or arriving at it goes to the endpoint's
``address:PORT``.  Each forward is a :class:`PublishedPort` resource of the
container, removed with it.  Unlike other resources it is recorded right
*after* it is made: the release of a record whose forward failed would remove
the forward of whichever container holds that port.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hcsoci.errors import InvalidArgumentError
from hcsoci.resources import Resource, Resources

if TYPE_CHECKING:
    from hcsoci.context import Context
    from hcsoci.hns import Endpoint, Network
    from hcsoci.uvm import UtilityVM

__all__ = ["PortMapping", "PortInUseError", "PublishedPort", "parse_publish", "publish"]

_PUBLISH = re.compile(r"(?:(?P<ip>[0-9.]+):)?(?P<host>\d+):(?P<port>\d+)(?:/(?P<proto>tcp|udp))?")


class PortInUseError(InvalidArgumentError):
    """The host port is taken (by a listener on this machine or another published port)."""


@dataclass(frozen=True)
class PortMapping:
    """One ``-p`` value, checked."""

    host_ip: str
    host_port: int
    port: int
    protocol: str
    text: str

    def check_free(self) -> None:
        """Refuse a host port something on this machine listens on already."""
        kind = socket.SOCK_STREAM if self.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((self.host_ip or "0.0.0.0", self.host_port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise PortInUseError(
                        f"--publish: {self.text!r}: host port {self.host_port}/{self.protocol} "
                        "is already in use"
                    ) from None
                raise InvalidArgumentError(f"--publish: {self.text!r}: {err.strerror}") from None


def parse_publish(value: str, field: str = "--publish") -> PortMapping:
    """``[IP:]HOSTPORT:PORT[/tcp|/udp]`` (IPv4; ports 1-65535)."""
    match = _PUBLISH.fullmatch(value.strip())
    if match is None:
        raise InvalidArgumentError(f"{field}: {value!r} is not [IP:]HOSTPORT:PORT[/tcp|/udp]")
    host_ip = match.group("ip") or ""
    if host_ip:
        try:
            address = ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise InvalidArgumentError(
                f"{field}: {value!r}: {host_ip!r} is not an IPv4 address"
            ) from None
        host_ip = "" if address.is_unspecified else str(address)
    host_port, port = int(match.group("host")), int(match.group("port"))
    for number in (host_port, port):
        if not 1 <= number <= 65535:
            raise InvalidArgumentError(f"{field}: {value!r}: port {number} is not 1-65535")
    mapping = PortMapping(host_ip, host_port, port, match.group("proto") or "tcp", value)
    mapping.check_free()
    return mapping


class PublishedPort(Resource, kw_only=True):
    """A host port forwarded into the container (a DNAT map element)."""

    kind = "hns-published-port"
    bridge: str
    protocol: str
    host_ip: str
    host_port: int

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        from hcsoci.hns.firewall import remove_port_forward

        remove_port_forward(self.bridge, self.protocol, self.host_ip, self.host_port)


def publish(
    resources: Resources, network: Network, endpoint: Endpoint, mappings: list[PortMapping]
) -> None:
    """Forward each mapping's host port to ``endpoint``, each recorded in ``resources``."""
    from hcsoci.hns.firewall import FirewallError, add_port_forward

    for mapping in mappings:
        mapping.check_free()
        record = PublishedPort(
            bridge=network.bridge,
            protocol=mapping.protocol,
            host_ip=mapping.host_ip,
            host_port=mapping.host_port,
        )
        try:
            add_port_forward(
                network.bridge, mapping.protocol, mapping.host_ip, mapping.host_port,
                endpoint.ip_address, mapping.port,
            )  # fmt: skip
        except FirewallError as err:
            if "already published" in str(err):
                raise PortInUseError(f"--publish: {mapping.text!r}: {err}") from None
            raise
        resources.add(record)
