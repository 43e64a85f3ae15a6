"""Plan9 (virtio-9p) shares of host directories into a utility VM.

QEMU 7.2 has no QMP command that creates a 9p file-system device (``fsdev``)
at run time, only ``device_add virtio-9p-pci`` for an fsdev declared on the
command line.  But the fsdev opens its directory when the *device* is
realized, not at boot.  So each VM boots with a pool of fsdev *slots*, each
pointing at an empty directory under the VM's state directory.  Adding a
share bind-mounts the host path onto a free slot directory (read-only if
asked), then hot-plugs a virtio-9p-pci device on that slot; the agent mounts
its tag at the guest path.  A ``restrict``-ed share gets a small read-only
tmpfs in the slot holding bind mounts of just the allowed files of one
directory, so the guest sees nothing else and cannot add files.  The shares
are recorded in the VM's device registry (:mod:`hcsoci.uvm.devices`), so a
handle in another process knows which slots are taken.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hcsoci.context import Context
from hcsoci.errors import InvalidArgumentError, NotFoundError, StateError
from hcsoci.mounts import MS_BIND, MS_RDONLY, mount, mounts_under, unmount
from hcsoci.resources import Resource
from hcsoci.uvm.devices import DeviceRecords

if TYPE_CHECKING:
    from hcsoci.uvm.vm import UtilityVM

__all__ = ["Plan9Share", "Plan9Slots", "VMPlan9Share"]

log = logging.getLogger(__name__)

MS_REMOUNT = 0x20


@dataclass(frozen=True)
class Plan9Share:
    """A host directory (or some files of one) shared into the VM."""

    name: str
    """The share's 9p mount tag, unique in its VM."""
    host_path: str
    uvm_path: str
    read_only: bool
    restrict: bool
    allowed_names: tuple[str, ...]
    slot: int


class VMPlan9Share(Resource, kw_only=True):
    """A Plan9 share a container's creation added to its utility VM."""

    kind = "uvm-plan9"
    in_vm = True
    vm_id: str
    name: str = ""

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        if vm is None or vm.id() != self.vm_id or not self.name:
            return  # the VM is gone, and its shares with it
        share = vm.find_plan9(self.name)
        if share is not None:
            vm.remove_plan9(ctx, share)


class Plan9Slots:
    """The pool of boot-time fsdev slots of one VM and the shares that use them."""

    def __init__(self, vm: UtilityVM, directory: Path, count: int) -> None:
        self._vm = vm
        self.directory = directory
        self.count = count
        self._lock = threading.Lock()
        self._shares: dict[int, Plan9Share] = {}
        self._records = DeviceRecords(vm.store, vm.id(), "plan9")

    def load(self) -> None:
        """Take over the shares recorded by the VM's other handles."""
        shares = {}
        for data in self._records.load().values():
            share = Plan9Share(**{**data, "allowed_names": tuple(data["allowed_names"])})
            shares[share.slot] = share
        with self._lock:
            self._shares = shares

    def slot_dir(self, slot: int) -> Path:
        """The host directory behind fsdev slot ``slot``."""
        return self.directory / f"slot{slot}"

    def prepare(self) -> list[str]:
        """Create the slot directories; the QEMU arguments that declare the slots."""
        args = []
        for slot in range(self.count):
            path = self.slot_dir(slot)
            path.mkdir(parents=True, exist_ok=True)
            args += [
                "-fsdev",
                f"local,id=p9slot{slot},path={path},security_model=none,multidevs=remap",
            ]
        return args

    def shares(self) -> list[Plan9Share]:
        """The shares in place, by slot."""
        with self._lock:
            return [self._shares[slot] for slot in sorted(self._shares)]

    def find(self, name: str) -> Plan9Share | None:
        """The share with mount tag ``name``, if any."""
        with self._lock:
            return next((s for s in self._shares.values() if s.name == name), None)

    def add(
        self,
        ctx: Context,
        host_path: str,
        uvm_path: str,
        read_only: bool,
        restrict: bool,
        allowed_names: list[str] | tuple[str, ...],
    ) -> Plan9Share:
        """Share ``host_path`` at ``uvm_path`` in the guest (see :meth:`UtilityVM.add_plan9`)."""
        source = Path(host_path)
        if not source.is_dir():
            kind = "a directory" if source.exists() else "an existing directory"
            if not source.exists():
                raise NotFoundError(f"add_plan9: host_path {host_path!r} does not exist")
            raise InvalidArgumentError(f"add_plan9: host_path {host_path!r} is not {kind}")
        if not uvm_path.startswith("/"):
            raise InvalidArgumentError(f"add_plan9: uvm_path {uvm_path!r} is not absolute")
        names = tuple(allowed_names)
        if restrict:
            if not names:
                raise InvalidArgumentError("add_plan9: restrict needs allowed_names")
            for name in names:
                if not name or "/" in name or name in (".", ".."):
                    raise InvalidArgumentError(f"add_plan9: allowed_names entry {name!r}")
                if not (source / name).exists():
                    raise NotFoundError(
                        f"add_plan9: allowed name {name!r} not found in {host_path!r}"
                    )
        with self._lock:
            free = [s for s in range(self.count) if s not in self._shares]
            if not free:
                raise StateError(
                    f"add_plan9: all {self.count} Plan9 slots of VM {self._vm.id()} are in use "
                    "(UVMOptions.plan9_slots)"
                )
            slot = free[0]
            share = Plan9Share(
                name=f"p9s{slot}",
                host_path=str(source.resolve()),
                uvm_path=uvm_path,
                read_only=read_only,
                restrict=restrict,
                allowed_names=names,
                slot=slot,
            )
            self._shares[slot] = share  # claimed before anything is allocated
        try:
            self._records.save(str(slot), dataclasses.asdict(share))
            self._bind(share)
            self._vm.device_add(
                {
                    "driver": "virtio-9p-pci",
                    "id": f"p9dev{slot}",
                    "fsdev": f"p9slot{slot}",
                    "mount_tag": share.name,
                }
            )
            self._vm.gcs_request(
                ctx,
                "mount_plan9",
                {
                    "tag": share.name,
                    "target": uvm_path,
                    "read_only": read_only,
                    "cache": "none" if not read_only else "loose",
                },
            )
        except BaseException:
            self._teardown(ctx, share, guest_mounted=False)
            raise
        log.debug("added Plan9 share", extra={"vm": self._vm.id(), "share": share.name})
        return share

    def _bind(self, share: Plan9Share) -> None:
        target = self.slot_dir(share.slot)
        if not share.restrict:
            mount(share.host_path, target, "", MS_BIND)
            if share.read_only:
                mount("", target, "", MS_BIND | MS_REMOUNT | MS_RDONLY)
            return
        mount("tmpfs", target, "tmpfs", 0, "mode=0755,size=64k")
        for name in share.allowed_names:
            source = Path(share.host_path) / name
            entry = target / name
            if source.is_dir():
                entry.mkdir()
            else:
                entry.touch()
            mount(str(source), entry, "", MS_BIND)
            if share.read_only:
                mount("", entry, "", MS_BIND | MS_REMOUNT | MS_RDONLY)
        mount("", target, "", MS_REMOUNT | MS_RDONLY, "mode=0755")

    def remove(self, ctx: Context, share: Plan9Share) -> None:
        """Unmount the share in the guest, unplug it and drop its host bind mounts."""
        with self._lock:
            if self._shares.get(share.slot) != share:
                raise NotFoundError(
                    f"remove_plan9: no share {share.name!r} ({share.host_path}) in VM "
                    f"{self._vm.id()}"
                )
        self._teardown(ctx, share, guest_mounted=True)

    def _teardown(self, ctx: Context, share: Plan9Share, guest_mounted: bool) -> None:
        try:
            if guest_mounted and self._vm.is_running():
                self._vm.gcs_request(
                    ctx, "unmount", {"target": share.uvm_path, "remove_dir": False}
                )
            self._vm.device_del(f"p9dev{share.slot}")
        finally:
            self.unbind(share.slot)
            with self._lock:
                self._shares.pop(share.slot, None)
            self._records.delete(str(share.slot))

    def unbind(self, slot: int) -> None:
        """Remove every host mount on a slot directory (tolerates none)."""
        for mount_point in reversed(mounts_under(self.slot_dir(slot))):
            unmount(mount_point)

    def unbind_all(self) -> None:
        """Remove the host mounts of every slot (the VM is gone)."""
        for slot in range(self.count):
            self.unbind(slot)
        with self._lock:
            self._shares.clear()
        self._records.clear()
