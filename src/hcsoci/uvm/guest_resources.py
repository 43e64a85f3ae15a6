"""What a container in a utility VM records: the resource kinds that live in the guest.

Each is a :class:`~hcsoci.resources.Resource` written before the allocation it
names, released through the VM when it still runs (a VM that is gone took
them with it), so ``release_resources`` and ``hcsoci gc`` undo a half-made
VM container as they do a host one.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex

from hcsoci.cmd import ExitError, command
from hcsoci.context import Context
from hcsoci.errors import HcsociError
from hcsoci.resources import Resource
from hcsoci.uvm.vm import UtilityVM

__all__ = ["ScratchImage", "VMGuestContainer", "VMGuestDir", "VMGuestMount", "guest_run"]


def guest_run(ctx: Context, vm: UtilityVM, script: str, stdin: bytes | None = None) -> bytes:
    """Run ``sh -c script`` in the guest; its stdout, or an error carrying its stderr."""
    cmd = command(vm, "sh", "-c", script)
    cmd.context = ctx
    stderr = io.BytesIO()
    cmd.stderr = stderr
    if stdin is not None:
        cmd.stdin = io.BytesIO(stdin)
    try:
        return cmd.output()
    except ExitError as err:
        detail = stderr.getvalue().decode(errors="replace").strip()
        raise HcsociError(f"in utility VM {vm.id()}: {script!r}: {detail or err}") from err


class _InVM(Resource, kw_only=True):
    in_vm = True
    vm_id: str

    def _vm(self, vm: UtilityVM | None) -> UtilityVM | None:
        if vm is None or vm.id() != self.vm_id or not vm.is_running():
            return None  # the VM is gone, and this with it
        return vm


class VMGuestDir(_InVM, kw_only=True):
    """A directory in the guest (the container's root); removed when nothing is mounted below."""

    kind = "uvm-guest-dir"
    path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        live = self._vm(vm)
        if live is None:
            return
        path = shlex.quote(self.path)
        guest_run(
            ctx,
            live,
            f"if grep -qF ' '{path}/ /proc/self/mounts; then "
            f"echo {path} still has mounts >&2; exit 1; fi; rm -rf {path}",
        )


class VMGuestMount(_InVM, kw_only=True):
    """A mount the agent made in the guest (the overlay rootfs)."""

    kind = "uvm-guest-mount"
    target: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        live = self._vm(vm)
        if live is not None:
            live.gcs_request(ctx, "unmount", {"target": self.target, "remove_dir": False})


class VMGuestContainer(_InVM, kw_only=True):
    """The container in the guest (the agent's ``delete_container``: ``runc delete --force``)."""

    kind = "uvm-guest-container"
    container_id: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        live = self._vm(vm)
        if live is not None:
            live.gcs.delete_container(ctx, self.container_id)


class ScratchImage(Resource, kw_only=True):
    """The scratch disk image this creation made in the scratch folder."""

    kind = "uvm-scratch-image"
    path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
