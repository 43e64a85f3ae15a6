"""Read-only layers as virtual persistent memory (hcsshim's vPMEM, here ``virtio-pmem``).

A layer image is mapped into the guest's physical address space as a
``virtio-pmem-pci`` device over a read-only, private ``memory-backend-file``:
QEMU opens the file read-only, and the guest mounts the ext4 inside with DAX
(its page cache skipped: the guest reads the mapping itself).  The VM is
started with memory-hotplug slots for them (``UVMOptions.vpmem_slots``, used
when ``UVMOptions.layer_device`` is ``"vpmem"``).

QEMU cannot unplug a virtio memory device.  So a device whose last reference
goes is unmounted in the guest and *parked*: it keeps its slot, and a later
attach of the same image mounts it again without plugging anything.  When
every slot holds a device, :class:`VPMemFullError` says so and the caller
falls back to SCSI.  Devices are recorded in the VM's device registry
(:mod:`hcsoci.uvm.devices`), so a handle in another process knows them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcsoci.context import Context
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError
from hcsoci.resources import Resource
from hcsoci.uvm.devices import DeviceRecords

if TYPE_CHECKING:
    from hcsoci.uvm.vm import UtilityVM

__all__ = [
    "VPMEM_ALIGNMENT",
    "VPMEM_MAX_MB",
    "VMVPMemDevice",
    "VPMemDevice",
    "VPMemDevices",
    "VPMemFullError",
    "memory_argument",
]

log = logging.getLogger(__name__)

VPMEM_ALIGNMENT = 2 << 20
"""Size granularity of an image on a vPMEM device (a huge page: the guest maps it in those)."""

VPMEM_MAX_MB = 64 * 1024
"""Address space reserved above the VM's memory for vPMEM devices (nothing is allocated)."""


class VPMemFullError(HcsociError):
    """Every vPMEM slot of the VM holds a device (or the image does not fit the space left)."""


@dataclass
class VPMemDevice:
    """A layer image on one of the VM's vPMEM devices."""

    host_path: str
    index: int
    size: int
    pci_slot: int = -1
    uvm_path: str = ""
    """Where it is mounted in the guest; empty while parked."""
    dax: bool = False
    plugged: bool = False
    """Whether QEMU has the device (then it stays, for the VM's life)."""
    ref_count: int = field(default=0, compare=False)


class VMVPMemDevice(Resource, kw_only=True):
    """A vPMEM device a container's creation attached to its utility VM (one reference)."""

    kind = "uvm-vpmem"
    in_vm = True
    vm_id: str
    host_path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        if vm is None or vm.id() != self.vm_id:
            return  # the VM is gone, and its devices with it
        device = vm.vpmem.find(self.host_path)
        if device is not None and device.ref_count > 0:
            vm.vpmem.remove(ctx, self.host_path)


def memory_argument(memory_mb: int, slots: int) -> str:
    """QEMU's ``-m`` value: with hot-plug slots (and their address space) when ``slots``."""
    if slots <= 0:
        return str(memory_mb)
    return f"{memory_mb},slots={slots},maxmem={memory_mb + VPMEM_MAX_MB}M"


class VPMemDevices:
    """The vPMEM devices of one VM (``capacity`` slots; 0 when the VM has none)."""

    def __init__(self, vm: UtilityVM, capacity: int) -> None:
        self._vm = vm
        self.capacity = capacity
        self._lock = threading.RLock()
        self._by_path: dict[str, VPMemDevice] = {}
        self._records = DeviceRecords(vm.store, vm.id(), "vpmem")

    def load(self) -> None:
        """Take over the devices recorded by the VM's other handles."""
        with self._lock:
            self._by_path = {key: VPMemDevice(**data) for key, data in self._records.load().items()}

    def devices(self) -> list[VPMemDevice]:
        """The plugged devices (mounted or parked), by slot."""
        with self._lock:
            return sorted(self._by_path.values(), key=lambda d: d.index)

    def find(self, host_path: str) -> VPMemDevice | None:
        """The device holding ``host_path``, if one does."""
        with self._lock:
            return self._by_path.get(_key(host_path))

    def can_add(self, host_path: str) -> bool:
        """Whether :meth:`add` of ``host_path`` would find (or make) a device for it."""
        with self._lock:
            if _key(host_path) in self._by_path:
                return True
            if len(self._by_path) >= self.capacity:
                return False
            used = sum(d.size for d in self._by_path.values())
            try:
                size = os.path.getsize(host_path)
            except OSError:
                return False
            return used + size <= VPMEM_MAX_MB << 20

    def add(self, ctx: Context, host_path: str, uvm_path: str) -> VPMemDevice:
        """Map the ext4 image ``host_path`` read-only and mount it at ``uvm_path`` (ref-counted)."""
        path = Path(host_path)
        if not path.is_file():
            raise NotFoundError(f"add_vpmem: host_path {host_path!r} is not an image file")
        if not uvm_path.startswith("/"):
            raise InvalidArgumentError(f"add_vpmem: uvm_path {uvm_path!r} is not absolute")
        size = path.stat().st_size
        if size == 0 or size % VPMEM_ALIGNMENT:
            raise InvalidArgumentError(
                f"add_vpmem: {host_path!r} is {size} bytes, not a multiple of "
                f"{VPMEM_ALIGNMENT >> 20} MiB"
            )
        key = _key(host_path)
        with self._lock:
            device = self._by_path.get(key)
            if device is not None and device.ref_count > 0:
                if device.uvm_path != uvm_path:
                    raise InvalidArgumentError(
                        f"add_vpmem: {host_path!r} is mounted at {device.uvm_path!r} "
                        f"already, not at uvm_path {uvm_path!r}"
                    )
                device.ref_count += 1
                self._save(device)
                return device
            if device is None:
                if not self.can_add(host_path):
                    raise VPMemFullError(
                        f"add_vpmem: the {self.capacity} vPMEM slots of VM {self._vm.id()} "
                        "are in use (UVMOptions.vpmem_slots)"
                    )
                used = {d.index for d in self._by_path.values()}
                index = next(i for i in range(self.capacity) if i not in used)
                device = VPMemDevice(key, index, size)
                self._by_path[key] = device
                self._save(device)  # claimed before anything is plugged
                try:
                    self._plug(device)
                except BaseException:
                    if not device.plugged:  # nothing plugged that could not be taken back
                        del self._by_path[key]
                        self._records.delete(key)
                    raise
            self._mount(ctx, device, uvm_path)
        log.debug("mounted vPMEM device", extra={"vm": self._vm.id(), "path": key})
        return device

    def _plug(self, device: VPMemDevice) -> None:
        memory = f"vpmem-mem{device.index}"
        self._vm.qmp(
            "object-add",
            {
                "qom-type": "memory-backend-file",
                "id": memory,
                "mem-path": device.host_path,
                "size": device.size,
                "share": False,
                "readonly": True,
            },
        )
        try:
            self._vm.device_add(
                {"driver": "virtio-pmem-pci", "id": f"vpmem-dev{device.index}", "memdev": memory}
            )
        except BaseException:
            self._vm.qmp("object-del", {"id": memory})
            raise
        device.plugged = True
        self._save(device)
        device.pci_slot = _pci_slot(self._vm.qmp("query-pci"), f"vpmem-dev{device.index}")
        self._save(device)

    def _mount(self, ctx: Context, device: VPMemDevice, uvm_path: str) -> None:
        result = self._vm.gcs_request(
            ctx, "mount_pmem", {"slot": device.pci_slot, "target_path": uvm_path}
        )
        device.uvm_path, device.dax, device.ref_count = uvm_path, bool(result.get("dax")), 1
        self._save(device)

    def remove(self, ctx: Context, host_path: str) -> None:
        """Drop one reference; the last one unmounts the image and parks the device."""
        key = _key(host_path)
        with self._lock:
            device = self._by_path.get(key)
            if device is None or device.ref_count <= 0:
                raise NotFoundError(
                    f"remove_vpmem: {host_path!r} is not mounted in VM {self._vm.id()}"
                )
            device.ref_count -= 1
            if device.ref_count == 0:
                target, device.uvm_path = device.uvm_path, ""
                if self._vm.is_running():
                    self._vm.gcs_request(ctx, "unmount", {"target": target, "remove_dir": True})
            self._save(device)

    def _save(self, device: VPMemDevice) -> None:
        self._records.save(device.host_path, dataclasses.asdict(device))

    def clear(self) -> None:
        """Forget every device (the VM is gone)."""
        with self._lock:
            self._by_path.clear()
            self._records.clear()


def _pci_slot(buses: Any, qdev_id: str) -> int:
    """The slot of ``qdev_id`` on the root bus, where QEMU hot-plugs it (and the agent looks)."""
    for bus in buses:
        if bus.get("bus") != 0:
            continue
        for device in bus.get("devices", []):
            if device.get("qdev_id") == qdev_id:
                return int(device["slot"])
    raise HcsociError(f"query-pci: device {qdev_id!r} is not on the root PCI bus")


def _key(host_path: str) -> str:
    return str(Path(host_path).resolve())
