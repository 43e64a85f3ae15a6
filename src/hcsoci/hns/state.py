"""HNS rows in the state store, and who owns a row while it is being changed.

A row is written *before* its kernel object is made, in a transitional state
(``creating``, ``attaching``, ``detaching``, ``deleting``) stamped with the
process doing it.  Another process that finds a transition whose owner is
still alive reports the object busy; if the owner died, :func:`hcsoci.hns.gc`
finishes or undoes the transition.
"""

from __future__ import annotations

import sqlite3

from hcsoci.controller import controller_alive, controller_identity
from hcsoci.errors import StateError
from hcsoci.hns.model import Endpoint, Network
from hcsoci.store import Store, open_store

__all__ = [
    "ENDPOINT_QUERY",
    "READY",
    "busy_error",
    "endpoint_from_row",
    "network_from_row",
    "owner",
    "owner_alive",
    "store",
]

READY = "ready"


def store() -> Store:
    """The process-wide state store (``$HCSOCI_ROOT``)."""
    return open_store()


def owner() -> tuple[int, int]:
    """``(pid, start time)`` of this process, to stamp rows in transition."""
    return controller_identity()


def owner_alive(pid: int, start: int) -> bool:
    """True while the process that stamped a row is still running."""
    return pid > 0 and controller_alive(pid, start)


def busy_error(kind: str, row: sqlite3.Row) -> StateError:
    """The error for touching an object another operation is changing (or left half-done)."""
    if owner_alive(row["owner_pid"], row["owner_start"]):
        return StateError(
            f"{kind} {row['id']} is busy: process {row['owner_pid']} is {row['state']} it"
        )
    return StateError(
        f"{kind} {row['id']} was left {row['state']} by process {row['owner_pid']}, which "
        "died: run `hcsoci gc` to reclaim it"
    )


def _split(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def network_from_row(row: sqlite3.Row) -> Network:
    """A :class:`Network` snapshot of an ``hns_networks`` row."""
    return Network(
        id=row["id"],
        name=row["name"],
        type=row["type"],
        subnet=row["subnet"],
        gateway=row["gateway"],
        bridge=row["bridge"],
        dns_server_list=_split(row["dns_servers"]),
    )


ENDPOINT_QUERY = """
SELECT e.*, n.name AS network_name, n.subnet, n.gateway, n.dns_servers, n.bridge
FROM hns_endpoints e JOIN hns_networks n ON n.id = e.network_id
"""
"""Endpoint rows joined with what they inherit from their network."""


def endpoint_from_row(row: sqlite3.Row) -> Endpoint:
    """An :class:`Endpoint` snapshot of an :data:`ENDPOINT_QUERY` row."""
    return Endpoint(
        id=row["id"],
        name=row["name"],
        virtual_network=row["network_id"],
        virtual_network_name=row["network_name"],
        mac_address=row["mac_address"],
        ip_address=row["ip_address"],
        prefix_length=int(row["subnet"].rsplit("/", 1)[1]),
        gateway_address=row["gateway"],
        dns_server_list=_split(row["dns_servers"]),
        namespace=row["namespace_id"] or "",
        host_interface=row["host_interface"],
        interface=row["interface"],
        namespace_interface=row["namespace_interface"],
    )
