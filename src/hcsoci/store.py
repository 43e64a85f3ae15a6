"""The durable state store: SQLite (WAL) under the state root.

Everything hcsoci allocates is written here *before* it is allocated, so that a
controller killed halfway can be cleaned up by another process (``hcsoci gc``).
Several processes may use the store at once; writes go through
``BEGIN IMMEDIATE`` transactions and a generous busy timeout.

The schema lives here, in one place, so a newcomer can read every table the
project keeps.  Each table belongs to one concept module: ``containers`` and
``resources`` to :mod:`hcsoci.create` / :mod:`hcsoci.resources`; the
``hns_*`` tables to :mod:`hcsoci.hns`; ``vms`` to :mod:`hcsoci.uvm`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_ROOT", "Store", "open_store", "state_root"]

DEFAULT_ROOT = "/run/hcsoci"

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id              TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    host            TEXT NOT NULL DEFAULT '',   -- '' for this machine, else a utility VM id
    bundle          TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,              -- creating, created, running, stopped
    controller_pid  INTEGER NOT NULL,           -- owning process; 0: handed to the user (CLI)
    controller_start INTEGER NOT NULL DEFAULT 0, -- /proc/PID/stat start time: pid reuse guard
    created_at      REAL NOT NULL,
    runtime         TEXT NOT NULL DEFAULT '',   -- OCI runtime (runc, crun) for host containers
    init_pid        INTEGER NOT NULL DEFAULT 0  -- host pid of the init once started
);

CREATE TABLE IF NOT EXISTS resources (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id    TEXT NOT NULL,      -- the container (or other object) holding it
    kind        TEXT NOT NULL,      -- see hcsoci.resources.Resource.kind
    data        BLOB NOT NULL       -- the resource record, JSON
);
CREATE INDEX IF NOT EXISTS resources_owner ON resources(owner_id, id);

CREATE TABLE IF NOT EXISTS vms (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    state       TEXT NOT NULL,              -- created, running
    state_dir   TEXT NOT NULL,              -- sockets, console log, Plan9 slot mounts
    pid         INTEGER NOT NULL DEFAULT 0, -- qemu
    pid_start   INTEGER NOT NULL DEFAULT 0, -- /proc/PID/stat start time: pid reuse guard
    accel       TEXT NOT NULL DEFAULT '',
    options     TEXT NOT NULL,              -- UVMOptions, JSON
    created_at  REAL NOT NULL,
    controller_pid   INTEGER NOT NULL DEFAULT 0,  -- the creating process; 0: handed over
    controller_start INTEGER NOT NULL DEFAULT 0
);

-- Devices hot-plugged into a VM (hcsoci.uvm.devices): any handle of the VM knows them.
CREATE TABLE IF NOT EXISTS vm_devices (
    vm_id       TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- scsi, plan9, netns, nic
    key         TEXT NOT NULL,              -- host path, slot, namespace id, endpoint id
    data        TEXT NOT NULL,              -- the device's record, JSON
    PRIMARY KEY (vm_id, kind, key)
);

-- hcsoci.hns: networks, namespaces, endpoints (IP allocations and membership).
-- state: ready, or the transition in progress (creating, deleting, attaching,
-- detaching) by owner_pid/owner_start; gc finishes transitions whose owner died.
CREATE TABLE IF NOT EXISTS hns_networks (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,              -- bridge or nat
    subnet      TEXT NOT NULL,              -- IPv4 CIDR
    gateway     TEXT NOT NULL,
    bridge      TEXT NOT NULL UNIQUE,       -- bridge interface name
    dns_servers TEXT NOT NULL DEFAULT '',   -- comma separated
    state       TEXT NOT NULL,
    owner_pid   INTEGER NOT NULL DEFAULT 0,
    owner_start INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS hns_namespaces (
    id          TEXT PRIMARY KEY,
    path        TEXT NOT NULL UNIQUE,       -- /var/run/netns/NAME
    state       TEXT NOT NULL,
    owner_pid   INTEGER NOT NULL DEFAULT 0,
    owner_start INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS hns_endpoints (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    network_id  TEXT NOT NULL REFERENCES hns_networks(id),
    ip_address  TEXT NOT NULL,
    mac_address TEXT NOT NULL,
    host_interface TEXT NOT NULL UNIQUE,    -- veth side on the bridge
    interface   TEXT NOT NULL UNIQUE,       -- other side's name outside any namespace
    namespace_id TEXT REFERENCES hns_namespaces(id),
    namespace_interface TEXT NOT NULL DEFAULT '',  -- eth0, eth1... inside namespace_id
    state       TEXT NOT NULL,
    owner_pid   INTEGER NOT NULL DEFAULT 0,
    owner_start INTEGER NOT NULL DEFAULT 0,
    UNIQUE (network_id, ip_address)
);
CREATE INDEX IF NOT EXISTS hns_endpoints_namespace ON hns_endpoints(namespace_id);
"""


def state_root() -> Path:
    """The state root: ``$HCSOCI_ROOT``, or ``/run/hcsoci``."""
    return Path(os.environ.get("HCSOCI_ROOT") or DEFAULT_ROOT)


class Store:
    """One SQLite connection to the state database, safe to share between threads."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else state_root()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.path = self.root / "state.db"
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as conn:
            for statement in _split_statements(_SCHEMA):
                conn.execute(statement)
            _add_missing_columns(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, else rolled back."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run a read-only statement and return every row."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        """Run one write statement in its own transaction; returns ``lastrowid``."""
        with self.transaction() as conn:
            return conn.execute(sql, params).lastrowid or 0

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


# Columns added after a table first shipped: a state root made by an older
# version gets them on open (CREATE TABLE IF NOT EXISTS leaves old tables alone).
_ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("vms", "controller_pid", "INTEGER NOT NULL DEFAULT 0"),
    ("vms", "controller_start", "INTEGER NOT NULL DEFAULT 0"),
]


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, column, declaration in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _split_statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""


_stores: dict[tuple[str, int], Store] = {}
_stores_lock = threading.Lock()


def open_store(root: Path | str | None = None) -> Store:
    """The process-wide store for ``root`` (default: :func:`state_root`)."""
    path = str(Path(root) if root is not None else state_root())
    key = (path, os.getpid())  # a forked child must not reuse its parent's connection
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(path)
        return store
