"""What hcsoci records for a container an engine made through hcsoci-runc.

Before runc is asked to create anything, the container gets, as every hcsoci
container does, its row in the ``containers`` table and its resource journal
(see :mod:`hcsoci.resources`): ``container-record`` (the row) and
``runtime-container`` (runc's state under hcsoci's root, undone with
``runc delete --force``).  So ``hcsoci list`` shows it, ``hcsoci delete``
releases it, and ``hcsoci gc`` does when its controller died.  The controller
is the process that called the runtime to create it -- the engine's shim or
conmon, which outlive every runtime call and wait for the container -- not
this short-lived program.

The engine's bundle is the engine's: nothing of it is recorded for release.

The two journal records are written here as the JSON that
:class:`hcsoci.create.ContainerRecord` and :class:`hcsoci.create.RuntimeContainer`
decode from, because importing msgspec and the create flow would cost each
engine call tens of milliseconds; ``tests/test_runtime_cli.py`` proves
``hcsoci.gc`` releases what is written here.  A marker file per container
(``<root>/hcsoci-runc/<id>``) lets ``delete`` of a container that is already
gone answer without opening the store.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from hcsoci import container_table
from hcsoci.controller import process_start_time
from hcsoci.errors import AlreadyExistsError
from hcsoci.paths import child, make_private_dir
from hcsoci.store import Store

__all__ = [
    "OWNER",
    "RUNTIME",
    "caller_identity",
    "forget",
    "has_marker",
    "marker",
    "record",
    "set_created",
]

OWNER = "hcsoci-runc"
RUNTIME = "runc"
_CONTAINER_RECORD = "container-record"
_RUNTIME_CONTAINER = "runtime-container"
_OWN_KINDS = frozenset((_CONTAINER_RECORD, _RUNTIME_CONTAINER))


def marker(root: Path, container_id: str) -> Path:
    """The marker file of ``container_id`` under the state root ``root``."""
    return child(root / "hcsoci-runc", container_id, "container id")


def has_marker(root: Path, container_id: str) -> bool:
    """Whether hcsoci-runc recorded ``container_id`` and has not forgotten it yet."""
    return os.path.lexists(marker(root, container_id))


def caller_identity() -> tuple[int, int]:
    """(pid, start time) of the process that called this runtime: the container's controller."""
    parent = os.getppid()
    return parent, process_start_time(parent) or 0


def record(store: Store, root: Path, container_id: str, bundle: Path, runc_root: Path) -> None:
    """Record the container before runc creates it: marker, row, journal.

    The marker is made exclusively, so of two creates of one id only one
    records; the other gets :class:`~hcsoci.errors.AlreadyExistsError` and
    touches nothing of the first.  A marker without a row is stale (``hcsoci
    gc`` released the container) and is taken over.
    """
    make_private_dir(root / "hcsoci-runc")
    path = marker(root, container_id)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        if container_table.get(store, container_id) is not None:
            raise AlreadyExistsError(f"container with id exists: {container_id}") from None
        fd = os.open(path, flags & ~os.O_EXCL, 0o600)  # stale: hcsoci gc released it
    os.close(fd)
    try:
        container_table.insert(
            store, container_id, OWNER, "", bundle, RUNTIME, controller=caller_identity()
        )
    except AlreadyExistsError:  # the row decides; a marker left by the loser is stale
        raise AlreadyExistsError(f"container with id exists: {container_id}") from None
    journal = [
        (_CONTAINER_RECORD, {"container_id": container_id}),
        (
            _RUNTIME_CONTAINER,
            {"container_id": container_id, "runtime": RUNTIME, "root": str(runc_root)},
        ),
    ]
    with store.transaction() as conn:
        for kind, data in journal:
            conn.execute(
                "INSERT INTO resources (owner_id, kind, data) VALUES (?, ?, ?)",
                (container_id, kind, json.dumps(data).encode()),
            )


def set_created(store: Store, container_id: str, init_pid: int, state: str = "created") -> None:
    """runc created the container (``running`` after ``run --detach``); its init is ``init_pid``."""
    container_table.set_state(store, container_id, state, init_pid)


def forget(store: Store, root: Path, container_id: str) -> None:
    """Drop the records of a container runc no longer holds.

    A container hcsoci itself created (its journal holds mounts, a bundle...)
    is released through :func:`hcsoci.gc.release_container`.
    """
    kinds = {
        row["kind"]
        for row in store.query("SELECT kind FROM resources WHERE owner_id = ?", (container_id,))
    }
    if kinds <= _OWN_KINDS:
        with store.transaction() as conn:
            conn.execute("DELETE FROM resources WHERE owner_id = ?", (container_id,))
        container_table.delete(store, container_id)
    else:
        from hcsoci.context import background
        from hcsoci.gc import release_container

        release_container(background(), container_id, store)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker(root, container_id))
