"""Hypervisor isolation: the utility VM (QEMU) that hosts containers.

>>> from hcsoci import context, command
>>> from hcsoci.uvm import UVMOptions, create
>>> vm = create(context.background(), UVMOptions())      # doctest: +SKIP
>>> vm.start(context.background())                        # doctest: +SKIP
>>> command(vm, "uname", "-r").output()                   # doctest: +SKIP
"""

from hcsoci.uvm.assets import BootAssets, build_assets, load_assets
from hcsoci.uvm.options import UVMOptions
from hcsoci.uvm.plan9 import Plan9Share, VMPlan9Share
from hcsoci.uvm.scsi import SCSIAttachment, SCSIControllerFullError, VMSCSIDisk
from hcsoci.uvm.vm import (
    UtilityVM,
    UVMStartError,
    create,
    ensure_template,
    hand_over_vm,
    list_vms,
    open_vm,
    reap_dead_vms,
    remove_vm,
)

__all__ = [
    "BootAssets",
    "Plan9Share",
    "SCSIAttachment",
    "SCSIControllerFullError",
    "UVMOptions",
    "UVMStartError",
    "UtilityVM",
    "VMPlan9Share",
    "VMSCSIDisk",
    "build_assets",
    "create",
    "ensure_template",
    "list_vms",
    "load_assets",
    "open_vm",
    "reap_dead_vms",
    "hand_over_vm",
    "remove_vm",
]
