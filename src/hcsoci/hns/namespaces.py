"""Namespaces: named network namespaces that endpoints are added to and removed from.

Adding an endpoint puts its veth side into the namespace, named ``eth0``,
``eth1``... (the lowest free), with the endpoint's address, a default route
via its gateway (for the first one), and ``lo`` up.  The first time, the veth
pair is born there (the peer created inside the namespace); afterwards the
existing interface is moved in.  Removing brings the interface back out under
its own name with its MAC, the pair intact; its address is applied again on
the next add.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import uuid

from hcsoci.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, StateError
from hcsoci.hns import netlink
from hcsoci.hns.endpoints import endpoint_alias, ensure_endpoint_links
from hcsoci.hns.model import Namespace
from hcsoci.hns.state import ENDPOINT_QUERY, READY, busy_error, owner, store

__all__ = [
    "NAMESPACE_PREFIX",
    "add_namespace_endpoint",
    "create_namespace",
    "get_namespace",
    "get_namespace_endpoints",
    "list_namespaces",
    "namespace_path",
    "remove_namespace",
    "remove_namespace_endpoint",
]

log = logging.getLogger(__name__)

NAMESPACE_PREFIX = "hcsoci-"
"""Namespaces live at ``/var/run/netns/hcsoci-<id>``."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def namespace_path(namespace_id: str) -> str:
    """Where namespace ``namespace_id`` is bound: what a spec's network namespace points at."""
    return f"{netlink.NETNS_RUN_DIR}/{NAMESPACE_PREFIX}{namespace_id}"


def create_namespace(namespace_id: str = "") -> str:
    """Create a named network namespace (with ``lo`` up) and return its id.

    It outlives this process, like an HNS namespace, until :func:`remove_namespace`.
    ``namespace_id`` lets a caller record the id before the namespace exists.
    """
    namespace_id = namespace_id or str(uuid.uuid4())
    if not _ID.fullmatch(namespace_id):
        raise InvalidArgumentError(
            f"namespace id {namespace_id!r}: use 1 to 128 characters from A-Z a-z 0-9 _ . -"
        )
    path = namespace_path(namespace_id)
    pid, start = owner()
    with store().transaction() as db:
        if db.execute("SELECT 1 FROM hns_namespaces WHERE id = ?", (namespace_id,)).fetchone():
            raise AlreadyExistsError(f"namespace {namespace_id} exists already")
        db.execute(
            "INSERT INTO hns_namespaces (id, path, state, owner_pid, owner_start)"
            " VALUES (?, ?, 'creating', ?, ?)",
            (namespace_id, path, pid, start),
        )
    try:
        netlink.create_netns(path)
    except FileExistsError:
        store().execute("DELETE FROM hns_namespaces WHERE id = ?", (namespace_id,))
        raise AlreadyExistsError(f"namespace {namespace_id}: {path} exists already") from None
    except BaseException:
        store().execute("DELETE FROM hns_namespaces WHERE id = ?", (namespace_id,))
        raise
    store().execute("UPDATE hns_namespaces SET state = ? WHERE id = ?", (READY, namespace_id))
    log.debug("created namespace %s at %s", namespace_id, path)
    return namespace_id


def remove_namespace(namespace_id: str) -> None:
    """Remove a namespace; its endpoints are brought back out first, intact.

    A namespace that vanished underneath is forgotten (its endpoints' veth
    pairs, destroyed with it, are recreated).
    """
    pid, start = owner()
    with store().transaction() as db:
        row = _namespace_row(db, namespace_id)
        if row["state"] != READY:
            raise busy_error("namespace", row)
        db.execute(
            "UPDATE hns_namespaces SET state = 'deleting', owner_pid = ?, owner_start = ?"
            " WHERE id = ?",
            (pid, start, namespace_id),
        )
    try:
        dismantle_namespace(row)
    except BaseException:
        store().execute("UPDATE hns_namespaces SET state = ? WHERE id = ?", (READY, namespace_id))
        raise
    log.debug("removed namespace %s", namespace_id)


def dismantle_namespace(row: sqlite3.Row) -> None:
    """Bring every endpoint out of a namespace, unbind it and forget it."""
    for endpoint in _endpoint_rows(row["id"]):
        _set_endpoint_state(endpoint["id"], "detaching")
        finish_detach(endpoint, row["path"], remaining=())
    netlink.remove_netns(row["path"])
    store().execute("DELETE FROM hns_namespaces WHERE id = ?", (row["id"],))


def _namespace_row(db: sqlite3.Connection, namespace_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM hns_namespaces WHERE id = ?", (namespace_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"namespace {namespace_id} not found")
    return row


def _require_namespace(namespace_id: str) -> sqlite3.Row:
    rows = store().query("SELECT * FROM hns_namespaces WHERE id = ?", (namespace_id,))
    if not rows:
        raise NotFoundError(f"namespace {namespace_id} not found")
    return rows[0]


def _endpoint_rows(namespace_id: str) -> list[sqlite3.Row]:
    rows = store().query(ENDPOINT_QUERY + " WHERE e.namespace_id = ?", (namespace_id,))
    return sorted(rows, key=lambda r: _interface_number(r["namespace_interface"]))


def _interface_number(name: str) -> int:
    return int(name[3:]) if name.startswith("eth") and name[3:].isdigit() else 1 << 30


def _set_endpoint_state(endpoint_id: str, state: str) -> None:
    pid, start = owner()
    store().execute(
        "UPDATE hns_endpoints SET state = ?, owner_pid = ?, owner_start = ? WHERE id = ?",
        (state, pid, start, endpoint_id),
    )


def add_namespace_endpoint(namespace_id: str, endpoint_id: str) -> None:
    """Put endpoint ``endpoint_id`` into namespace ``namespace_id`` and configure it there.

    Adding an endpoint to the namespace it is in already does nothing; one in
    another namespace is refused.  On failure the endpoint is left as it was.
    """
    pid, start = owner()
    with store().transaction() as db:
        namespace = _namespace_row(db, namespace_id)
        endpoint = db.execute(ENDPOINT_QUERY + " WHERE e.id = ?", (endpoint_id,)).fetchone()
        if endpoint is None:
            raise NotFoundError(f"endpoint {endpoint_id} not found")
        if namespace["state"] != READY:
            raise busy_error("namespace", namespace)
        if endpoint["state"] != READY:
            raise busy_error("endpoint", endpoint)
        if endpoint["namespace_id"] == namespace_id:
            return
        if endpoint["namespace_id"] is not None:
            raise StateError(
                f"endpoint {endpoint_id} is already in namespace {endpoint['namespace_id']}; "
                f"remove it from there before adding it to namespace {namespace_id}"
            )
        taken = {
            row["namespace_interface"]
            for row in db.execute(
                "SELECT namespace_interface FROM hns_endpoints WHERE namespace_id = ?",
                (namespace_id,),
            )
        }
        interface = next(f"eth{n}" for n in range(len(taken) + 1) if f"eth{n}" not in taken)
        db.execute(
            "UPDATE hns_endpoints SET state = 'attaching', namespace_id = ?,"
            " namespace_interface = ?, owner_pid = ?, owner_start = ? WHERE id = ?",
            (namespace_id, interface, pid, start, endpoint_id),
        )
    try:
        if not netlink.is_netns(namespace["path"]):
            raise NotFoundError(
                f"namespace {namespace_id} vanished: {namespace['path']} is no longer a "
                "network namespace (remove_namespace forgets it)"
            )
        netlink.attach_interface(
            namespace["path"],
            endpoint["interface"],
            interface,
            endpoint["ip_address"],
            int(endpoint["subnet"].rsplit("/", 1)[1]),
            endpoint["gateway"],
            host_interface=endpoint["host_interface"],
            mac=endpoint["mac_address"],
            bridge=endpoint["bridge"],
            alias=endpoint_alias(endpoint_id),
        )
    except BaseException:
        store().execute(
            "UPDATE hns_endpoints SET state = ?, namespace_id = NULL, namespace_interface = ''"
            " WHERE id = ?",
            (READY, endpoint_id),
        )
        raise
    store().execute("UPDATE hns_endpoints SET state = ? WHERE id = ?", (READY, endpoint_id))
    log.debug("added endpoint %s to namespace %s as %s", endpoint_id, namespace_id, interface)


def remove_namespace_endpoint(namespace_id: str, endpoint_id: str) -> None:
    """Bring endpoint ``endpoint_id`` out of namespace ``namespace_id``, intact.

    :class:`NotFoundError` when either is unknown or the endpoint is not in
    that namespace.  If the namespace vanished underneath, the endpoint is
    detached all the same and its veth pair recreated.
    """
    with store().transaction() as db:
        namespace = _namespace_row(db, namespace_id)
        endpoint = db.execute(ENDPOINT_QUERY + " WHERE e.id = ?", (endpoint_id,)).fetchone()
        if endpoint is None:
            raise NotFoundError(f"endpoint {endpoint_id} not found")
        if endpoint["namespace_id"] != namespace_id:
            raise NotFoundError(f"endpoint {endpoint_id} is not in namespace {namespace_id}")
        if endpoint["state"] != READY:
            raise busy_error("endpoint", endpoint)
        pid, start = owner()
        db.execute(
            "UPDATE hns_endpoints SET state = 'detaching', owner_pid = ?, owner_start = ?"
            " WHERE id = ?",
            (pid, start, endpoint_id),
        )
    remaining = [
        (row["namespace_interface"], row["gateway"])
        for row in _endpoint_rows(namespace_id)
        if row["id"] != endpoint_id
    ]
    try:
        finish_detach(endpoint, namespace["path"], remaining)
    except BaseException:
        _set_endpoint_state(endpoint_id, READY)
        raise
    log.debug("removed endpoint %s from namespace %s", endpoint_id, namespace_id)


def finish_detach(
    endpoint: sqlite3.Row, path: str, remaining: list[tuple[str, str]] | tuple[()]
) -> None:
    """Move an endpoint's interface out of ``path`` (if there) and mark it detached.

    If it was not there (its namespace vanished, ``path`` is empty, or a killed
    attach never made it), the veth pair is recreated in this namespace.  Also
    how gc finishes a detach a killed process left halfway.
    """
    vanished = not netlink.is_netns(path)
    moved = (
        bool(endpoint["namespace_interface"])
        and not vanished
        and netlink.detach_interface(
            path, endpoint["namespace_interface"], endpoint["interface"], remaining
        )
    )
    if not moved:
        ensure_endpoint_links(endpoint, rebuild=vanished)
    store().execute(
        "UPDATE hns_endpoints SET state = ?, namespace_id = NULL, namespace_interface = ''"
        " WHERE id = ?",
        (READY, endpoint["id"]),
    )


def get_namespace_endpoints(namespace_id: str) -> list[str]:
    """Ids of the endpoints in namespace ``namespace_id``, ``eth0``'s first."""
    _require_namespace(namespace_id)
    return [row["id"] for row in _endpoint_rows(namespace_id)]


def get_namespace(namespace_id: str) -> Namespace:
    """Namespace ``namespace_id`` with its endpoints; :class:`NotFoundError` if unknown."""
    row = _require_namespace(namespace_id)
    return Namespace(
        id=row["id"],
        path=row["path"],
        endpoints=[r["id"] for r in _endpoint_rows(namespace_id)],
    )


def list_namespaces() -> list[Namespace]:
    """Every namespace this state root knows, with its endpoints."""
    rows = store().query("SELECT id FROM hns_namespaces ORDER BY id")
    return [get_namespace(row["id"]) for row in rows]
