"""UVMOptions: what a utility VM is made of (hcsshim's ``OptionsLCOW``)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from hcsoci.errors import InvalidArgumentError

__all__ = ["ACCELERATORS", "LAYER_DEVICES", "TEMPLATE_MODES", "UVMOptions"]

ACCELERATORS = ("auto", "kvm", "tcg")
LAYER_DEVICES = ("scsi", "vpmem")
TEMPLATE_MODES = ("auto", "never", "require")
"""Values of ``UVMOptions.template``."""
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")


@dataclass
class UVMOptions:
    """Options of :func:`hcsoci.uvm.create`.

    ``accel`` is ``auto`` (KVM when a probe boot under it works here, else TCG;
    the verdict is cached with the boot assets), ``kvm`` or ``tcg``.
    ``boot_timeout`` bounds the time from QEMU start to a guest agent that
    answers.  ``plan9_slots`` is how many Plan9 shares can be added at once
    (QEMU can only hot-plug a share whose file-system device was declared at
    boot); ``scsi_luns`` is the capacity of the VM's SCSI controller.
    ``layer_device`` is how a container's read-only layers reach the guest:
    ``"scsi"`` disks, or ``"vpmem"`` (virtio-pmem devices mounted with DAX,
    falling back to SCSI when the ``vpmem_slots`` are all taken; see
    :mod:`hcsoci.uvm.vpmem` and docs/uvm.md for which is faster here).
    """

    id: str = ""
    owner: str = ""
    memory_mb: int = 1024
    cpu_count: int = 0
    """Virtual CPUs; 0 (the default) is 2 under KVM and 1 under TCG, where a
    second vCPU livelocks the guest now and then (docs/uvm.md, "One vCPU under TCG")."""
    accel: str = "auto"
    boot_timeout: float = 120.0
    request_timeout: float = 60.0
    console_log: str = ""
    """Where the guest's serial console goes; default ``<state root>/uvm/<id>/console.log``."""
    assets_dir: str = ""
    """Boot asset cache; default ``$HCSOCI_ASSETS`` or ``/var/lib/hcsoci/uvm``."""
    plan9_slots: int = 8
    scsi_luns: int = 64
    layer_device: str = "scsi"
    vpmem_slots: int = 16
    kernel_args: str = ""
    heartbeat_interval: float = 2.0
    """Seconds between the host's pings of a silent guest agent while anything waits on it."""
    heartbeat_misses: int = 15
    """Pings in a row gone unanswered (about ``(heartbeat_misses + 1) * heartbeat_interval``
    seconds of silence) after which the bridge is declared dead and every waiter gets an error.
    Above the guest kernel's 21 s RCU stall report, which can end a two-vCPU TCG guest's
    stall (docs/uvm.md, "One vCPU under TCG"): such a stall is a delay, not a dead VM."""
    template: str = "auto"
    """Restore from a saved template instead of booting (:mod:`hcsoci.uvm.template`):
    ``auto`` restores a template matching these options and the assets when one
    exists and otherwise boots (saving that boot as the template), ``never``
    always boots, ``require`` restores or fails to start."""
    restore_timeout: float = 30.0
    """Seconds a restore may take to a guest agent that answers before it is
    abandoned for a boot (``auto``) or the start fails (``require``)."""

    def validated(self) -> UVMOptions:
        """A copy with defaults filled in; raises InvalidArgumentError naming a bad field."""
        uvm_id = self.id or "uvm-" + secrets.token_hex(6)
        if not _ID.fullmatch(uvm_id):
            raise InvalidArgumentError(
                f"UVMOptions.id: {uvm_id!r} must be 1-48 characters of [A-Za-z0-9_.-]"
            )
        checks: list[tuple[str, object, bool]] = [
            ("memory_mb", self.memory_mb, 128 <= self.memory_mb <= 65536),
            ("cpu_count", self.cpu_count, 0 <= self.cpu_count <= 64),
            ("accel", self.accel, self.accel in ACCELERATORS),
            ("boot_timeout", self.boot_timeout, self.boot_timeout > 0),
            ("request_timeout", self.request_timeout, self.request_timeout > 0),
            ("plan9_slots", self.plan9_slots, 0 <= self.plan9_slots <= 64),
            ("scsi_luns", self.scsi_luns, 1 <= self.scsi_luns <= 256),
            ("layer_device", self.layer_device, self.layer_device in LAYER_DEVICES),
            ("vpmem_slots", self.vpmem_slots, 0 <= self.vpmem_slots <= 64),
            ("heartbeat_interval", self.heartbeat_interval, 0 < self.heartbeat_interval <= 3600),
            ("heartbeat_misses", self.heartbeat_misses, 1 <= self.heartbeat_misses <= 1000),
            ("template", self.template, self.template in TEMPLATE_MODES),
            ("restore_timeout", self.restore_timeout, self.restore_timeout > 0),
        ]
        for name, value, ok in checks:
            if not ok:
                raise InvalidArgumentError(f"UVMOptions.{name}: invalid value {value!r}")
        copy = UVMOptions(**vars(self))
        copy.id = uvm_id
        return copy
