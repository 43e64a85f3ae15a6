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

from hcsoci.controller import controller_identity
from hcsoci.errors import AlreadyExistsError
from hcsoci.store import Store

TYPE_CHECKING = (
    False  # the hcsoci-runc runtime writes rows: typing and pathlib cost it milliseconds
)
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ContainerRow", "delete", "get", "hand_over", "insert", "list_rows", "set_state"]


class ContainerRow:
    """One row of the ``containers`` table (a plain class: a ``NamedTuple`` or a dataclass
    would cost the ``hcsoci-runc`` runtime milliseconds of imports per call)."""

    __slots__ = (
        "bundle",
        "controller_pid",
        "controller_start",
        "created_at",
        "host",
        "id",
        "init_pid",
        "owner",
        "runtime",
        "state",
    )  # fmt: skip

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

    def __init__(self, row: sqlite3.Row) -> None:
        for name in self.__slots__:
            setattr(self, name, row[name])

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ContainerRow({fields})"


def insert(
    store: Store,
    container_id: str,
    owner: str,
    host: str,
    bundle: Path | str,
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
    return ContainerRow(rows[0]) if rows else None


def list_rows(store: Store, host: str | None = None) -> list[ContainerRow]:
    """Every row, oldest first; with ``host``, only the containers of that host."""
    if host is None:
        rows = store.query("SELECT * FROM containers ORDER BY created_at")
    else:
        rows = store.query("SELECT * FROM containers WHERE host = ? ORDER BY created_at", (host,))
    return [ContainerRow(row) for row in rows]


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
