"""Networks: a Linux bridge holding the subnet's gateway, optionally NATed."""

from __future__ import annotations

import ipaddress
import logging
import re
import uuid
from collections.abc import Sequence

from hcsoci.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, StateError
from hcsoci.hns import firewall, netlink
from hcsoci.hns.ipam import endpoint_mac, gateway_of, overlapping, parse_subnet
from hcsoci.hns.model import NETWORK_TYPES, Network, NetworkType
from hcsoci.hns.state import READY, busy_error, network_from_row, owner, store

__all__ = [
    "create_network",
    "delete_network",
    "get_network",
    "get_network_by_id",
    "get_network_by_name",
    "list_networks",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(kind: str, name: str) -> None:
    """Refuse names that are empty, too long or not plain ``[A-Za-z0-9_.-]``."""
    if not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"{kind} name {name!r}: use 1 to 64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )


def create_network(
    name: str,
    subnet: str,
    type: NetworkType = "bridge",
    dns_servers: Sequence[str] = (),
) -> Network:
    """Create a network: a bridge holding the first host address of ``subnet``.

    ``type="nat"`` also masquerades traffic from the subnet that leaves the host
    (and turns on IPv4 forwarding).  Refuses a taken name and a subnet that
    overlaps another network or an address of this host.
    """
    check_name("network", name)
    if type not in NETWORK_TYPES:
        raise InvalidArgumentError(f"network type {type!r}: expected one of {NETWORK_TYPES}")
    parsed = parse_subnet(subnet)
    for server in dns_servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgumentError(f"dns server {server!r} is not an IP address") from None
    _refuse_host_overlap(parsed)
    network_id = str(uuid.uuid4())
    network = Network(
        id=network_id,
        name=name,
        type=type,
        subnet=str(parsed),
        gateway=str(gateway_of(parsed)),
        bridge=firewall.BRIDGE_PREFIX + network_id.replace("-", "")[:10],
        dns_server_list=list(dns_servers),
    )
    pid, start = owner()
    with store().transaction() as db:
        taken = db.execute("SELECT id FROM hns_networks WHERE name = ?", (name,)).fetchone()
        if taken is not None:
            raise AlreadyExistsError(f"network name {name!r} is taken by network {taken['id']}")
        rows = db.execute("SELECT id, name, subnet FROM hns_networks").fetchall()
        by_subnet = {ipaddress.IPv4Network(row["subnet"]): row for row in rows}
        clash = overlapping(parsed, by_subnet)
        if clash is not None:
            other = by_subnet[clash]
            raise InvalidArgumentError(
                f"subnet {subnet!r} overlaps subnet {clash} of network {other['name']} "
                f"({other['id']})"
            )
        db.execute(
            "INSERT INTO hns_networks (id, name, type, subnet, gateway, bridge, dns_servers,"
            " state, owner_pid, owner_start) VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', ?, ?)",
            (
                network.id,
                name,
                type,
                network.subnet,
                network.gateway,
                network.bridge,
                ",".join(dns_servers),
                pid,
                start,
            ),
        )
    try:
        build_network(network)
    except BaseException:
        store().execute("DELETE FROM hns_networks WHERE id = ?", (network.id,))
        raise
    store().execute("UPDATE hns_networks SET state = ? WHERE id = ?", (READY, network.id))
    log.info(
        "created network %s (%s) %s on %s", network.name, network.id, network.subnet, network.bridge
    )
    return network


def _refuse_host_overlap(subnet: ipaddress.IPv4Network) -> None:
    for interface, address in netlink.host_ipv4_networks():
        if subnet.overlaps(address):
            raise InvalidArgumentError(
                f"subnet {str(subnet)!r} overlaps {address} already on host interface {interface}"
            )


def build_network(network: Network) -> None:
    """Make the kernel objects of ``network``; nothing is left behind on failure."""
    prefix_length = int(network.subnet.rsplit("/", 1)[1])
    try:
        netlink.create_bridge(
            network.bridge,
            endpoint_mac("network:" + network.id),
            network.gateway,
            prefix_length,
            alias=f"hcsoci network {network.id}",
        )
        if network.type == "nat":
            firewall.enable_forwarding()
        firewall.add_network_rules(network.bridge, network.subnet, network.type == "nat")
    except BaseException:
        destroy_network(network)
        raise


def destroy_network(network: Network) -> None:
    """Remove the kernel objects of ``network``; already-gone ones are fine."""
    firewall.remove_network_rules(network.bridge)
    netlink.delete_link(network.bridge)


def delete_network(network_id: str) -> None:
    """Delete a network.  Refused while it has endpoints."""
    pid, start = owner()
    with store().transaction() as db:
        row = db.execute("SELECT * FROM hns_networks WHERE id = ?", (network_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"network {network_id} not found")
        if row["state"] != READY:
            raise busy_error("network", row)
        endpoints = [
            r["id"]
            for r in db.execute(
                "SELECT id FROM hns_endpoints WHERE network_id = ? ORDER BY id", (network_id,)
            )
        ]
        if endpoints:
            raise StateError(
                f"network {network_id} ({row['name']}) still has {len(endpoints)} endpoint(s): "
                f"{', '.join(endpoints)}; delete them first"
            )
        db.execute(
            "UPDATE hns_networks SET state = 'deleting', owner_pid = ?, owner_start = ?"
            " WHERE id = ?",
            (pid, start, network_id),
        )
    network = network_from_row(row)
    try:
        destroy_network(network)
    except BaseException:
        store().execute("UPDATE hns_networks SET state = ? WHERE id = ?", (READY, network_id))
        raise
    store().execute("DELETE FROM hns_networks WHERE id = ?", (network_id,))
    log.info("deleted network %s (%s)", network.name, network.id)


def list_networks() -> list[Network]:
    """Every network, by name."""
    rows = store().query("SELECT * FROM hns_networks ORDER BY name")
    return [network_from_row(row) for row in rows]


def get_network_by_id(network_id: str) -> Network:
    """The network ``network_id``; :class:`NotFoundError` if there is none."""
    rows = store().query("SELECT * FROM hns_networks WHERE id = ?", (network_id,))
    if not rows:
        raise NotFoundError(f"network {network_id} not found")
    return network_from_row(rows[0])


def get_network_by_name(name: str) -> Network:
    """The network called ``name``; :class:`NotFoundError` if there is none."""
    rows = store().query("SELECT * FROM hns_networks WHERE name = ?", (name,))
    if not rows:
        raise NotFoundError(f"network named {name!r} not found")
    return network_from_row(rows[0])


def get_network(id_or_name: str) -> Network:
    """The network with this id, else with this name."""
    rows = store().query(
        "SELECT * FROM hns_networks WHERE id = ? OR name = ? ORDER BY id = ? DESC",
        (id_or_name, id_or_name, id_or_name),
    )
    if not rows:
        raise NotFoundError(f"network {id_or_name!r} not found (no such id or name)")
    return network_from_row(rows[0])
