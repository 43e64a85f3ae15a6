"""SCSI disks hot-plugged into a utility VM (virtio-scsi).

Every VM boots with one virtio-scsi controller (``scsi0``).  Adding a disk
opens the image file as a QEMU block node (``blockdev-add``), plugs a
``scsi-hd`` on it at the first free target, and has the agent mount the disk
at the guest path.  The same host file attached twice shares one disk and
counts references, as hcsshim does for layers shared by several containers.
Attachments and their counts are recorded in the VM's device registry
(:mod:`hcsoci.uvm.devices`), so a handle in another process knows them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hcsoci.context import Context
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError
from hcsoci.resources import Resource
from hcsoci.uvm.devices import DeviceRecords

if TYPE_CHECKING:
    from hcsoci.uvm.vm import UtilityVM

__all__ = ["SCSIAttachment", "SCSIController", "SCSIControllerFullError", "VMSCSIDisk"]

log = logging.getLogger(__name__)

CONTROLLER_ID = "scsi0"


class SCSIControllerFullError(HcsociError):
    """Every target of the VM's SCSI controller is in use."""


@dataclass
class SCSIAttachment:
    """A disk image attached to the VM's SCSI controller."""

    host_path: str
    uvm_path: str
    read_only: bool
    target: int
    lun: int = 0
    controller: int = 0
    ref_count: int = field(default=1, compare=False)


class VMSCSIDisk(Resource, kw_only=True):
    """A SCSI disk a container's creation attached to its utility VM (one reference)."""

    kind = "uvm-scsi"
    in_vm = True
    vm_id: str
    host_path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        if vm is None or vm.id() != self.vm_id:
            return  # the VM is gone, and its disks with it
        if vm.find_scsi(self.host_path) is not None:
            vm.remove_scsi(ctx, self.host_path)


class SCSIController:
    """The attachments of one VM's virtio-scsi controller."""

    def __init__(self, vm: UtilityVM, capacity: int) -> None:
        self._vm = vm
        self.capacity = capacity
        self._lock = threading.RLock()
        self._by_path: dict[str, SCSIAttachment] = {}
        self._records = DeviceRecords(vm.store, vm.id(), "scsi")

    def load(self) -> None:
        """Take over the attachments recorded by the VM's other handles."""
        with self._lock:
            self._by_path = {
                key: SCSIAttachment(**data) for key, data in self._records.load().items()
            }

    @staticmethod
    def qemu_args() -> list[str]:
        """The controller's QEMU arguments."""
        return ["-device", f"virtio-scsi-pci,id={CONTROLLER_ID}"]

    def attachments(self) -> list[SCSIAttachment]:
        """The attached disks, by target."""
        with self._lock:
            return sorted(self._by_path.values(), key=lambda a: a.target)

    def find(self, host_path: str) -> SCSIAttachment | None:
        """The attachment of ``host_path``, if attached."""
        with self._lock:
            return self._by_path.get(_key(host_path))

    def add(self, ctx: Context, host_path: str, uvm_path: str, read_only: bool) -> SCSIAttachment:
        """Attach ``host_path`` and mount it at ``uvm_path`` ('' attaches without mounting)."""
        path = Path(host_path)
        if not path.exists():
            raise NotFoundError(f"add_scsi: host_path {host_path!r} does not exist")
        if not path.is_file() and not path.is_block_device():
            raise InvalidArgumentError(f"add_scsi: host_path {host_path!r} is not a disk image")
        if uvm_path and not uvm_path.startswith("/"):
            raise InvalidArgumentError(f"add_scsi: uvm_path {uvm_path!r} is not absolute")
        key = _key(host_path)
        with self._lock:
            existing = self._by_path.get(key)
            if existing is not None:
                if uvm_path and existing.uvm_path != uvm_path:
                    raise InvalidArgumentError(
                        f"add_scsi: {host_path!r} is attached at {existing.uvm_path!r} "
                        f"already, not at uvm_path {uvm_path!r}"
                    )
                existing.ref_count += 1
                self._save(existing)
                return existing
            used = {a.target for a in self._by_path.values()}
            free = next((t for t in range(self.capacity) if t not in used), None)
            if free is None:
                raise SCSIControllerFullError(
                    f"add_scsi: SCSI controller {CONTROLLER_ID} of VM {self._vm.id()} is full "
                    f"({self.capacity} disks; UVMOptions.scsi_luns)"
                )
            attachment = SCSIAttachment(key, uvm_path, read_only, free)
            self._by_path[key] = attachment
            try:
                self._save(attachment)  # claimed before anything is plugged
                self._plug(ctx, attachment)
            except BaseException:
                try:
                    self._unplug(ctx, attachment, mounted=False)
                finally:
                    del self._by_path[key]
                    self._records.delete(key)
                raise
        log.debug("attached SCSI disk", extra={"vm": self._vm.id(), "path": key, "target": free})
        return attachment

    def _plug(self, ctx: Context, attachment: SCSIAttachment) -> None:
        node = f"scsi-node{attachment.target}"
        self._vm.qmp(
            "blockdev-add",
            {
                "driver": "raw",
                "node-name": node,
                "read-only": attachment.read_only,
                "file": {
                    "driver": "file",
                    "filename": attachment.host_path,
                    "read-only": attachment.read_only,
                },
            },
        )
        self._vm.device_add(
            {
                "driver": "scsi-hd",
                "id": f"scsi-dev{attachment.target}",
                "drive": node,
                "bus": f"{CONTROLLER_ID}.0",
                "channel": 0,
                "scsi-id": attachment.target,
                "lun": attachment.lun,
            }
        )
        if attachment.uvm_path:
            self._vm.gcs_request(
                ctx,
                "mount_scsi",
                {
                    "target": attachment.target,
                    "lun": attachment.lun,
                    "target_path": attachment.uvm_path,
                    "read_only": attachment.read_only,
                },
            )

    def remove(self, ctx: Context, host_path: str) -> None:
        """Drop one reference; the last one unmounts and unplugs the disk."""
        key = _key(host_path)
        with self._lock:
            attachment = self._by_path.get(key)
            if attachment is None:
                raise NotFoundError(
                    f"remove_scsi: {host_path!r} is not attached to VM {self._vm.id()}"
                )
            attachment.ref_count -= 1
            if attachment.ref_count > 0:
                self._save(attachment)
                return
            try:
                self._unplug(ctx, attachment, mounted=bool(attachment.uvm_path))
            finally:
                del self._by_path[key]
                self._records.delete(key)

    def _save(self, attachment: SCSIAttachment) -> None:
        self._records.save(attachment.host_path, dataclasses.asdict(attachment))

    def _unplug(self, ctx: Context, attachment: SCSIAttachment, mounted: bool) -> None:
        if self._vm.is_running():
            if mounted:
                self._vm.gcs_request(
                    ctx, "unmount", {"target": attachment.uvm_path, "remove_dir": True}
                )
            self._vm.gcs_request(
                ctx, "remove_scsi_device", {"target": attachment.target, "lun": attachment.lun}
            )
        if self._vm.device_del(f"scsi-dev{attachment.target}"):
            self._vm.blockdev_del(f"scsi-node{attachment.target}")

    def clear(self) -> None:
        """Forget every attachment (the VM is gone)."""
        with self._lock:
            self._by_path.clear()
            self._records.clear()


def _key(host_path: str) -> str:
    return str(Path(host_path).resolve())
