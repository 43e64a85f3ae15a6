"""Garbage collection: release what a killed controller left behind.

Every container row names its *controller*: the process that created it and is
responsible for releasing it (pid plus its start time from ``/proc/PID/stat``,
so a recycled pid is not mistaken for the controller).  When that process is
gone, nobody will ever release the container's resources, so :func:`collect`
does: it rebuilds the :class:`~hcsoci.resources.Resources` from the state store
and releases them, which kills the runc container (``delete --force``),
unmounts, frees loop devices and removes the bundle.  Containers handed over to
the user by the CLI (controller pid 0) are left for ``hcsoci delete``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hcsoci import container_table
from hcsoci.context import Context
from hcsoci.controller import controller_alive
from hcsoci.errors import NotFoundError
from hcsoci.paths import check_id
from hcsoci.resources import load_resources, release_resources
from hcsoci.store import Store, open_store

__all__ = ["ContainerRecordInfo", "collect", "orphans", "release_container"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerRecordInfo:
    """One container row, as gc sees it."""

    id: str
    state: str
    controller_pid: int
    controller_start: int


def release_container(ctx: Context, container_id: str, store: Store | None = None) -> None:
    """Release everything recorded for ``container_id`` and drop its row.

    A container in a utility VM whose controller process still runs is
    released by that process (:mod:`hcsoci.uvm.service`), asked over its socket.

    Raises :class:`~hcsoci.errors.NotFoundError` for an unknown id and
    :class:`~hcsoci.resources.ReleaseError` when something could not be released
    (what failed stays recorded for another try).
    """
    check_id(container_id, "container id")
    store = store or open_store()
    from hcsoci import resource_kinds  # noqa: F401 - registers every kind, for load_resources

    row = container_table.get(store, container_id)
    held = store.query("SELECT 1 FROM resources WHERE owner_id = ? LIMIT 1", (container_id,))
    if row is None and not held:
        raise NotFoundError(f"container id: {container_id!r} does not exist")
    if row is not None and row.host and _served(row.controller_pid, row.controller_start):
        # A VM container whose controller process lives: it holds the VM, it releases.
        from hcsoci.uvm.remote import delete_container

        delete_container(container_id, force=True, store=store)
        return
    resources = load_resources(container_id, store)
    host = row.host if row is not None else ""
    vm = _open_host_vm(ctx, host) if host else None
    try:
        release_resources(ctx, resources, vm, True)
    finally:
        if vm is not None:
            vm.detach()
    container_table.delete(store, container_id)


def _served(controller_pid: int, controller_start: int) -> bool:
    """Whether a live process (not the user: pid 0) controls the row."""
    return controller_pid > 0 and controller_alive(controller_pid, controller_start)


def _open_host_vm(ctx: Context, vm_id: str) -> Any:
    """A handle on the utility VM a container lives in, or None when that VM is gone.

    Released without a VM, a VM container's in-guest records are no-ops (the
    guest went with its VM); with a VM still running, they are undone in it.
    """
    from hcsoci import uvm  # only when a VM container is released

    try:
        return uvm.open_vm(ctx, vm_id)
    except NotFoundError:
        return None


def orphans(store: Store | None = None) -> list[ContainerRecordInfo]:
    """Containers whose controller is dead (their resources are nobody's)."""
    store = store or open_store()
    found = []
    for row in container_table.list_rows(store):
        info = ContainerRecordInfo(row.id, row.state, row.controller_pid, row.controller_start)
        if not controller_alive(info.controller_pid, info.controller_start):
            found.append(info)
    # Resource records whose container row was already dropped (a release cut short, or
    # a VM container's records written by an older version): every kind, since a
    # container's row is always written before its first resource.
    for record in store.query(
        "SELECT DISTINCT owner_id FROM resources WHERE owner_id NOT IN (SELECT id FROM containers)"
    ):
        found.append(ContainerRecordInfo(record["owner_id"], "released", 0, 0))
    return found


def collect(ctx: Context, store: Store | None = None) -> list[str]:
    """Release every container whose controller died; returns their ids.

    A container that fails to release is logged and left recorded, and the
    others are still collected; the last error is raised at the end.
    """
    store = store or open_store()
    collected: list[str] = []
    failure: Exception | None = None
    for info in orphans(store):
        log.info("collecting container %s (state %s)", info.id, info.state)
        try:
            release_container(ctx, info.id, store)
        except NotFoundError:
            continue  # someone else collected it meanwhile
        except Exception as err:  # keep collecting the rest
            log.error("gc of container %s failed: %s", info.id, err)
            failure = err
            continue
        collected.append(info.id)
    if failure is not None:
        raise failure
    return collected
