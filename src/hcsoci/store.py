"""The durable state store: SQLite (WAL) under the state root.

Everything hcsoci allocates is written here *before* it is allocated, so that a
controller killed halfway can be cleaned up by another process (``hcsoci gc``).
Several processes may use the store at once; writes go through
``BEGIN IMMEDIATE`` transactions and a generous busy timeout.

The schema lives here, in one place, so a newcomer can read every table the
project keeps.  Each table belongs to one concept module: ``containers`` to
:mod:`hcsoci.container_table`, ``resources`` to :mod:`hcsoci.resources`; the
``hns_*`` tables to :mod:`hcsoci.hns`; ``vms`` and ``vm_devices`` to :mod:`hcsoci.uvm`.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
from contextlib import contextmanager, suppress

from hcsoci.errors import HcsociError, UnsafePathError
from hcsoci.private import make_private_dir

# typing, collections.abc and pathlib are imported by type checkers only: the
# hcsoci-runc runtime opens the store on every create and delete, and each costs it
# milliseconds (state_root() imports pathlib when called).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

__all__ = ["DEFAULT_ROOT", "Store", "StoreError", "open_store", "state_root"]

DEFAULT_ROOT = "/run/hcsoci"

SCHEMA_VERSION = 2
"""The schema's version (SQLite's ``user_version``): a database at it is opened without
running the schema, so every change to ``_SCHEMA`` or ``_ADDED_COLUMNS`` bumps it
(``tests/test_store.py`` holds the schema's digest to remind)."""

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
    from pathlib import Path

    return Path(_state_root())


def _state_root() -> str:
    return os.environ.get("HCSOCI_ROOT") or DEFAULT_ROOT


class StoreError(HcsociError):
    """The state database is missing, empty, damaged or unreadable: hcsoci will not guess."""


_SQLITE_MAGIC = b"SQLite format 3\x00"
# What the state root holds while the store records something: if any of these has
# entries but state.db is gone, a fresh empty store would orphan them silently.
_LIVE_DIRS = ("containers", "uvm", "runc", "crun")


class Store:
    """One SQLite connection to the state database, safe to share between threads.

    The root and the database are private to root (0700 / 0600).  A database
    that is missing while the root still holds containers or VMs, empty,
    unreadable, or not SQLite raises :class:`StoreError` naming the file and
    what to do, instead of being replaced by a fresh, empty one.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = os.fspath(root) if root is not None else _state_root()
        """The state root (a string)."""
        self.path = os.path.join(self.root, "state.db")
        """The database file (a string)."""
        try:
            make_private_dir(self.root)  # a root made by an older version was 0711
        except UnsafePathError as err:
            raise StoreError(f"state root: {err}") from err
        except OSError as err:
            raise StoreError(f"state root {self.root!r}: {err.strerror or err}") from err
        if not self._check_file():
            self._initialise()
        self._lock = threading.RLock()
        self._conn = self._connect(self.path)
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def _check_file(self) -> bool:
        """Whether state.db exists and looks like ours; raise when it is damaged or lost."""
        where = self.path
        try:
            with open(self.path, "rb") as file:
                header = file.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            held = self._held_without_store()
            if held:
                raise StoreError(
                    f"state store {where!r} is missing while {', '.join(held)} still exist: "
                    "restore the file, or unmount and remove those by hand; hcsoci will not "
                    "start an empty store over them"
                ) from None
            return False
        except IsADirectoryError:
            raise StoreError(f"state store {where!r} is a directory, not a database") from None
        except OSError as err:
            raise StoreError(f"state store {where!r}: cannot read it: {err.strerror}") from err
        if not header:
            raise StoreError(
                f"state store {where!r} is empty (0 bytes): the record of what hcsoci "
                "allocated is lost; restore the file, or move it away after releasing "
                "what the state root holds by hand"
            )
        if header != _SQLITE_MAGIC:
            raise StoreError(
                f"state store {where!r} is not an SQLite database (damaged or replaced): "
                "restore the file; hcsoci will not overwrite it"
            )
        return True

    def _held_without_store(self) -> list[str]:
        held = []
        for name in _LIVE_DIRS:
            directory = os.path.join(self.root, name)
            with suppress(OSError):
                if os.path.isdir(directory) and os.listdir(directory):
                    held.append(directory)
        return held

    def _initialise(self) -> None:
        """Make a new database beside the final name, then rename it in: never half-made."""
        staging = os.path.join(self.root, f"state.db.new-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                os.unlink(f"{staging}{suffix}")
        os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        conn = self._connect(staging)
        conn.close()  # the last connection checkpoints the WAL into the file
        try:
            os.link(staging, self.path)  # fails if another process made the store meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(staging)

    def _connect(self, path: str) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA foreign_keys=ON")
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                _upgrade(conn)
        except sqlite3.DatabaseError as err:
            raise self._error(err) from err
        return conn

    def _error(self, err: sqlite3.Error) -> HcsociError:
        return StoreError(f"state store {self.path!r}: {err}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, else rolled back.

        A damaged database raises :class:`StoreError`; constraint violations
        (``sqlite3.IntegrityError``) reach the caller as they are.
        """
        with self._lock, self._damage_reported():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run a read-only statement and return every row."""
        with self._lock, self._damage_reported():
            return self._conn.execute(sql, params).fetchall()

    @contextmanager
    def _damage_reported(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as err:
            raise self._error(err) from err

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


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring a new or older database to :data:`SCHEMA_VERSION`, in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # not raced
            for statement in _split_statements(_SCHEMA):
                conn.execute(statement)
            _add_missing_columns(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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


def _close_stores() -> None:
    """At exit: close this process's stores (the last connection checkpoints the WAL)."""
    with _stores_lock:
        for key, store in list(_stores.items()):
            if key[1] == os.getpid():
                store.close()
            del _stores[key]


atexit.register(_close_stores)


def open_store(root: Path | str | None = None) -> Store:
    """The process-wide store for ``root`` (default: :func:`state_root`)."""
    path = os.path.normpath(os.fspath(root) if root is not None else _state_root())
    key = (path, os.getpid())  # a forked child must not reuse its parent's connection
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(path)
        return store
