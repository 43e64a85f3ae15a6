"""The ``containers`` table of the state store: every statement on it, in one place.

A row is written when a container's creation begins, before anything is
allocated (state ``creating``), and names its *controller* (see
:mod:`hcsoci.controller`) and its host: ``''`` for this machine, else the id of
the utility VM it lives in.  The lifecycle moves it to ``created``,
``running`` (with the init's pid) and ``stopped``; the CLI hands it over to the
user (controller pid 0); releasing the container deletes it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

from hcsoci.controller import controller_identity
from hcsoci.errors import AlreadyExistsError
from hcsoci.store import Store

__all__ = ["ContainerRow", "delete", "get", "hand_over", "insert", "list_rows", "set_state"]


class ContainerRow(NamedTuple):
    """One row of the ``containers`` table (a tuple: dataclasses would cost the
    ``hcsoci-runc`` runtime ~10 ms of imports per call)."""

    id: str
    owner: str
    host: str
    """'' for this machine, else the utility VM's id."""
    bundle: str
    state: str
    controller_pid: int
    controller_start: int
    created_at: float
    runtime: str
    init_pid: int


def _row(row: sqlite3.Row) -> ContainerRow:
    return ContainerRow(
        id=row["id"],
        owner=row["owner"],
        host=row["host"],
        bundle=row["bundle"],
        state=row["state"],
        controller_pid=row["controller_pid"],
        controller_start=row["controller_start"],
        created_at=row["created_at"],
        runtime=row["runtime"],
        init_pid=row["init_pid"],
    )


def insert(
    store: Store,
    container_id: str,
    owner: str,
    host: str,
    bundle: Path,
    runtime: str,
    controller: tuple[int, int] | None = None,
) -> None:
    """The row of a container whose creation begins.

    Its controller is this process, or ``controller`` (pid, start time): the
    ``hcsoci-runc`` runtime names the engine's shim, which outlives it.
    """
    pid, start = controller if controller is not None else controller_identity()
    try:
        store.execute(
            "INSERT INTO containers (id, owner, host, bundle, state, controller_pid,"
            " controller_start, created_at, runtime) VALUES (?, ?, ?, ?, 'creating', ?, ?, ?, ?)",
            (container_id, owner, host, str(bundle), pid, start, time.time(), runtime),
        )
    except sqlite3.IntegrityError as err:
        raise AlreadyExistsError(
            f"CreateOptions.id: container {container_id!r} already exists"
        ) from err


def get(store: Store, container_id: str) -> ContainerRow | None:
    """The row of ``container_id``, or None."""
    rows = store.query("SELECT * FROM containers WHERE id = ?", (container_id,))
    return _row(rows[0]) if rows else None


def list_rows(store: Store, host: str | None = None) -> list[ContainerRow]:
    """Every row, oldest first; with ``host``, only the containers of that host."""
    if host is None:
        rows = store.query("SELECT * FROM containers ORDER BY created_at")
    else:
        rows = store.query("SELECT * FROM containers WHERE host = ? ORDER BY created_at", (host,))
    return [_row(row) for row in rows]


def set_state(store: Store, container_id: str, state: str, init_pid: int | None = None) -> None:
    """Record the lifecycle's state (and the init's pid when it starts)."""
    if init_pid is None:
        store.execute("UPDATE containers SET state = ? WHERE id = ?", (state, container_id))
    else:
        store.execute(
            "UPDATE containers SET state = ?, init_pid = ? WHERE id = ?",
            (state, init_pid, container_id),
        )


def hand_over(store: Store, container_id: str) -> None:
    """Give the container to the user: gc leaves it alone, ``hcsoci delete`` releases it."""
    store.execute(
        "UPDATE containers SET controller_pid = 0, controller_start = 0 WHERE id = ?",
        (container_id,),
    )


def delete(store: Store, container_id: str) -> None:
    """Drop the row (the container is released)."""
    store.execute("DELETE FROM containers WHERE id = ?", (container_id,))
