"""Reclaiming what a killed controller left half-done (``hcsoci gc`` calls :func:`gc`).

Every HNS row is written before its kernel object is made, stamped with the
process changing it.  A row still in a transition whose process is gone is
finished or undone here: half-created objects are destroyed, half-deleted
ones deleted, endpoints caught moving between namespaces are brought back
out.  Namespaces that vanished underneath are forgotten, and endpoint veth
pairs destroyed with them are recreated.  (A detached endpoint with no veth
pair at all is not repaired: that is the state of one never added to a
namespace, whose pair is born at its first add.)  Rows of live processes are
never touched, and nothing outside this state root's records is.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable

from hcsoci.context import Context
from hcsoci.errors import HcsociError
from hcsoci.hns import netlink
from hcsoci.hns.endpoints import destroy_endpoint_links
from hcsoci.hns.namespaces import dismantle_namespace, finish_detach
from hcsoci.hns.networks import destroy_network
from hcsoci.hns.state import ENDPOINT_QUERY, READY, network_from_row, owner_alive, store

__all__ = ["gc"]

log = logging.getLogger(__name__)


def _abandoned(row: sqlite3.Row) -> bool:
    return row["state"] != READY and not owner_alive(row["owner_pid"], row["owner_start"])


def gc(ctx: Context) -> list[str]:
    """Reclaim HNS objects left by dead processes; returns what was done, one line each.

    Stops early (between objects) when ``ctx`` is done.  Failures are logged and
    the object is left for the next run.
    """
    done: list[str] = []

    def attempt(what: str, action: Callable[[], object]) -> None:
        if ctx.err() is not None:
            return
        try:
            action()
        except (HcsociError, OSError) as err:
            log.error("gc: %s failed: %s", what, err)
            return
        done.append(what)

    for endpoint in store().query(ENDPOINT_QUERY):
        if not _abandoned(endpoint):
            continue
        if endpoint["state"] in ("creating", "deleting"):
            attempt(
                f"deleted half-{endpoint['state'][:-3]}ed endpoint {endpoint['id']}",
                functools.partial(_drop_endpoint, endpoint),
            )
        else:  # attaching / detaching: converge on "detached"
            attempt(
                f"brought endpoint {endpoint['id']} out of namespace {endpoint['namespace_id']}",
                functools.partial(_detach, endpoint),
            )

    for namespace in store().query("SELECT * FROM hns_namespaces"):
        if _abandoned(namespace):
            attempt(
                f"removed namespace {namespace['id']} left {namespace['state']}",
                functools.partial(dismantle_namespace, namespace),
            )
        elif namespace["state"] == READY and not netlink.is_netns(namespace["path"]):
            attempt(
                f"forgot vanished namespace {namespace['id']}",
                functools.partial(dismantle_namespace, namespace),
            )

    for network in store().query("SELECT * FROM hns_networks"):
        if _abandoned(network):
            attempt(
                f"removed network {network['id']} left {network['state']}",
                functools.partial(_drop_network, network),
            )

    for line in done:
        log.info("gc: %s", line)
    return done


def _drop_endpoint(endpoint: sqlite3.Row) -> None:
    destroy_endpoint_links(endpoint)
    store().execute("DELETE FROM hns_endpoints WHERE id = ?", (endpoint["id"],))


def _detach(endpoint: sqlite3.Row) -> None:
    rows = store().query(
        "SELECT path FROM hns_namespaces WHERE id = ?", (endpoint["namespace_id"],)
    )
    finish_detach(endpoint, rows[0]["path"] if rows else "", remaining=())


def _drop_network(row: sqlite3.Row) -> None:
    destroy_network(network_from_row(row))
    store().execute("DELETE FROM hns_networks WHERE id = ?", (row["id"],))
