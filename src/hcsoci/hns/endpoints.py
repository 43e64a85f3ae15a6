"""Endpoints: a veth pair on a network with an allocated address and a stable MAC."""

from __future__ import annotations

import logging
import sqlite3
import uuid

from hcsoci.errors import AlreadyExistsError, NotFoundError, StateError
from hcsoci.hns import netlink
from hcsoci.hns.ipam import endpoint_mac, first_free_address, parse_subnet
from hcsoci.hns.model import Endpoint
from hcsoci.hns.networks import check_name
from hcsoci.hns.state import (
    ENDPOINT_QUERY,
    READY,
    busy_error,
    endpoint_from_row,
    owner,
    store,
)

__all__ = [
    "create_endpoint",
    "delete_endpoint",
    "get_endpoint_by_id",
    "get_endpoint_by_name",
    "list_endpoints",
]

log = logging.getLogger(__name__)


def create_endpoint(network_id: str, name: str = "", endpoint_id: str = "") -> Endpoint:
    """Create an endpoint on network ``network_id`` with the lowest free address.

    ``name`` defaults to the endpoint's id; ``endpoint_id`` (default: a new
    uuid) lets a caller record the id before the endpoint exists.  Like an HNS
    endpoint, it is a record (address, MAC, interface names) until it is first
    added to a namespace: its veth pair is born then, the peer directly inside
    the namespace, which spares the kernel a namespace move (an RCU barrier,
    ~20 ms).  Once brought back out, the pair stays in this namespace with its
    host side on the bridge until the endpoint is deleted.
    """
    endpoint_id = endpoint_id or str(uuid.uuid4())
    check_name("endpoint id", endpoint_id)
    name = name or endpoint_id
    check_name("endpoint", name)
    token = endpoint_id.replace("-", "")[:10]
    host_interface, interface = "hcv" + token, "hcp" + token
    mac = endpoint_mac(endpoint_id)
    pid, start = owner()
    with store().transaction() as db:
        network = db.execute("SELECT * FROM hns_networks WHERE id = ?", (network_id,)).fetchone()
        if network is None:
            raise NotFoundError(f"network {network_id} not found")
        if db.execute("SELECT 1 FROM hns_endpoints WHERE id = ?", (endpoint_id,)).fetchone():
            raise AlreadyExistsError(f"endpoint {endpoint_id} exists already")
        if network["state"] != READY:
            raise busy_error("network", network)
        taken = db.execute("SELECT id FROM hns_endpoints WHERE name = ?", (name,)).fetchone()
        if taken is not None:
            raise AlreadyExistsError(f"endpoint name {name!r} is taken by endpoint {taken['id']}")
        used = [
            row["ip_address"]
            for row in db.execute(
                "SELECT ip_address FROM hns_endpoints WHERE network_id = ?", (network_id,)
            )
        ]
        address = first_free_address(network_id, parse_subnet(network["subnet"]), used)
        db.execute(
            "INSERT INTO hns_endpoints (id, name, network_id, ip_address, mac_address,"
            " host_interface, interface, state, owner_pid, owner_start)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                endpoint_id,
                name,
                network_id,
                str(address),
                mac,
                host_interface,
                interface,
                READY,
                pid,
                start,
            ),
        )
    log.debug("created endpoint %s %s on network %s", endpoint_id, address, network_id)
    return get_endpoint_by_id(endpoint_id)


def endpoint_alias(endpoint_id: str) -> str:
    """The interface alias (``ifalias``) of both sides of an endpoint's veth pair."""
    return f"hcsoci endpoint {endpoint_id}"


def ensure_endpoint_links(row: sqlite3.Row, rebuild: bool = False) -> None:
    """Recreate a detached endpoint's veth pair if it is gone (always, with ``rebuild``).

    A veth pair dies with the namespace holding one side, so an endpoint whose
    namespace vanished underneath comes back out this way, with the same names
    and MAC.  The kernel destroys a namespace asynchronously (or not at all while
    a process still lives in it), so such an endpoint is rebuilt unconditionally.
    """
    if not rebuild and netlink.links_exist(row["host_interface"], row["interface"]):
        return
    netlink.delete_link(row["host_interface"])
    netlink.delete_link(row["interface"])
    bridge = row["bridge"] if "bridge" in row.keys() else _bridge_of(row["network_id"])  # noqa: SIM118
    log.warning("recreating the veth pair of endpoint %s", row["id"])
    netlink.create_veth(
        row["host_interface"],
        row["interface"],
        row["mac_address"],
        bridge,
        endpoint_alias(row["id"]),
    )


def _bridge_of(network_id: str) -> str:
    rows = store().query("SELECT bridge FROM hns_networks WHERE id = ?", (network_id,))
    if not rows:
        raise NotFoundError(f"network {network_id} not found")
    return str(rows[0]["bridge"])


def delete_endpoint(endpoint_id: str) -> None:
    """Delete an endpoint and free its address.

    Refused while the endpoint is in a live namespace (remove it from there
    first); an endpoint whose namespace vanished is deleted.
    """
    pid, start = owner()
    with store().transaction() as db:
        row = db.execute("SELECT * FROM hns_endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"endpoint {endpoint_id} not found")
        if row["state"] != READY:
            raise busy_error("endpoint", row)
        if row["namespace_id"] is not None:
            path = db.execute(
                "SELECT path FROM hns_namespaces WHERE id = ?", (row["namespace_id"],)
            ).fetchone()["path"]
            if netlink.is_netns(path):
                raise StateError(
                    f"endpoint {endpoint_id} is in namespace {row['namespace_id']}: "
                    "remove it from the namespace first"
                )
        db.execute(
            "UPDATE hns_endpoints SET state = 'deleting', owner_pid = ?, owner_start = ?"
            " WHERE id = ?",
            (pid, start, endpoint_id),
        )
    try:
        destroy_endpoint_links(row)
    except BaseException:
        store().execute("UPDATE hns_endpoints SET state = ? WHERE id = ?", (READY, endpoint_id))
        raise
    store().execute("DELETE FROM hns_endpoints WHERE id = ?", (endpoint_id,))
    log.debug("deleted endpoint %s", endpoint_id)


def destroy_endpoint_links(row: sqlite3.Row) -> None:
    """Delete an endpoint's veth pair (either side takes the other along).

    An endpoint never added to a namespace has none: nothing is waited for.
    """
    if not netlink.delete_link(row["host_interface"]):
        netlink.delete_link(row["interface"])


def get_endpoint_by_id(endpoint_id: str) -> Endpoint:
    """The endpoint ``endpoint_id``; :class:`NotFoundError` if there is none."""
    rows = store().query(ENDPOINT_QUERY + " WHERE e.id = ?", (endpoint_id,))
    if not rows:
        raise NotFoundError(f"endpoint {endpoint_id} not found")
    return endpoint_from_row(rows[0])


def get_endpoint_by_name(name: str) -> Endpoint:
    """The endpoint called ``name``; :class:`NotFoundError` if there is none."""
    rows = store().query(ENDPOINT_QUERY + " WHERE e.name = ?", (name,))
    if not rows:
        raise NotFoundError(f"endpoint named {name!r} not found")
    return endpoint_from_row(rows[0])


def list_endpoints(network_id: str = "") -> list[Endpoint]:
    """Every endpoint (of ``network_id`` when given), by network then address."""
    where, params = (" WHERE e.network_id = ?", (network_id,)) if network_id else ("", ())
    rows = store().query(ENDPOINT_QUERY + where, params)
    return sorted(
        (endpoint_from_row(row) for row in rows),
        key=lambda e: (e.virtual_network_name, tuple(int(p) for p in e.ip_address.split("."))),
    )
