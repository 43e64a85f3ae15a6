"""The durable registry of a utility VM's hot-plugged devices.

Each device manager of a VM (Plan9 slots, SCSI targets, guest network
namespaces and their NICs) keeps its state in memory for speed and writes
every change through to the ``vm_devices`` table of the state store, claiming
a slot, target or name *before* the device is plugged.  A handle from
``open_vm`` in another process loads the table and so knows what is plugged:
it can release devices the creating process added and never picks a slot or
target already in use.  The rows go when the VM's state is removed.
"""

from __future__ import annotations

import json
from typing import Any

from hcsoci.store import Store

__all__ = ["DeviceRecords", "forget_vm_devices"]


class DeviceRecords:
    """The ``vm_devices`` rows of one VM and one kind of device, keyed by a string."""

    def __init__(self, store: Store, vm_id: str, kind: str) -> None:
        self._store = store
        self._vm_id = vm_id
        self._kind = kind

    def save(self, key: str, record: dict[str, Any]) -> None:
        """Record (or replace) the device ``key``."""
        self._store.execute(
            "INSERT OR REPLACE INTO vm_devices (vm_id, kind, key, data) VALUES (?, ?, ?, ?)",
            (self._vm_id, self._kind, key, json.dumps(record)),
        )

    def delete(self, key: str) -> None:
        """Forget the device ``key`` (tolerates none)."""
        self._store.execute(
            "DELETE FROM vm_devices WHERE vm_id = ? AND kind = ? AND key = ?",
            (self._vm_id, self._kind, key),
        )

    def load(self) -> dict[str, dict[str, Any]]:
        """Every recorded device of this kind, by key, in the order they were recorded."""
        rows = self._store.query(
            "SELECT key, data FROM vm_devices WHERE vm_id = ? AND kind = ? ORDER BY rowid",
            (self._vm_id, self._kind),
        )
        return {row["key"]: json.loads(row["data"]) for row in rows}

    def clear(self) -> None:
        """Forget every device of this kind (the VM is gone)."""
        self._store.execute(
            "DELETE FROM vm_devices WHERE vm_id = ? AND kind = ?", (self._vm_id, self._kind)
        )


def forget_vm_devices(store: Store, vm_id: str) -> None:
    """Drop every device row of VM ``vm_id``."""
    store.execute("DELETE FROM vm_devices WHERE vm_id = ?", (vm_id,))
