"""The state store's schema versions, and how a process leaves its connections."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from hcsoci import store as store_module
from hcsoci.store import SCHEMA_VERSION, Store

SCHEMA_DIGEST = "000490439e6ba3aa196302d6b00263ef0cdfc1bc2069d724b04287f9ed42f9c8"


def test_a_changed_schema_has_a_new_version() -> None:
    """A database at SCHEMA_VERSION is opened without running the schema: a schema
    changed without a new version would leave older databases without it."""
    schema = store_module._SCHEMA + repr(store_module._ADDED_COLUMNS)
    digest = hashlib.sha256(schema.encode()).hexdigest()
    assert (SCHEMA_VERSION, digest) == (2, SCHEMA_DIGEST), (
        "the schema changed: bump SCHEMA_VERSION, then put the new digest and version here"
    )


def tables_and_columns(path: Path) -> dict[str, set[str]]:
    with sqlite3.connect(path) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return {
            table: {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for table in tables
            if not table.startswith("sqlite_")
        }


def test_an_older_database_gets_every_table_and_column(tmp_path: Path) -> None:
    current = tmp_path / "current"
    Store(current).close()
    expected = tables_and_columns(current / "state.db")

    old = tmp_path / "old"
    Store(old).close()
    with sqlite3.connect(old / "state.db") as conn:  # as version 1 left some databases
        conn.execute("DROP TABLE hns_endpoints")
        conn.execute("ALTER TABLE vms DROP COLUMN controller_start")
        conn.execute("PRAGMA user_version=1")
    assert tables_and_columns(old / "state.db") != expected

    Store(old).close()
    assert tables_and_columns(old / "state.db") == expected
    with sqlite3.connect(old / "state.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_current_database_opens_while_another_process_writes(tmp_path: Path) -> None:
    """Opening a current store takes no write lock: it does not wait for a writer."""
    Store(tmp_path).close()
    writer = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    opened: list[Store] = []
    opener = threading.Thread(target=lambda: opened.append(Store(tmp_path)), daemon=True)
    try:
        opener.start()
        opener.join(10)
        assert opened, "opening the store waited for another writer"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        opener.join(70)
        for store in opened:
            store.close()


def test_a_runtime_exit_closes_the_store(tmp_path: Path) -> None:
    """hcsoci-runc leaves out the interpreter's teardown; its store still closes, so the
    last connection checkpoints and removes the WAL."""
    program = (
        "import sys\n"
        "from hcsoci.store import open_store\n"
        "from hcsoci.runtime_cli.main import exit_at_once\n"
        "store = open_store(sys.argv[1])\n"
        "with store.transaction() as conn:\n"
        "    conn.execute(\"INSERT INTO resources (owner_id, kind, data) VALUES ('c', 'k', '')\")\n"
        "exit_at_once(7)\n"
    )
    ran = subprocess.run([sys.executable, "-c", program, str(tmp_path)], check=False, timeout=60)
    assert ran.returncode == 7
    assert not (tmp_path / "state.db-wal").exists()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT owner_id FROM resources").fetchall() == [("c",)]
