"""Host mounts and loop devices, and the resource records that undo them.

A container's virtual disks (``virtual-disk``, ``automanage-virtual-disk``
mounts: an ext4 image file) are attached to a loop device with the
``LOOP_CTL_GET_FREE`` / ``LOOP_CONFIGURE`` ioctls and mounted on the host inside
the bundle; the container then gets a bind mount of that directory.  The loop
device is configured with ``LO_FLAGS_AUTOCLEAR``: the kernel detaches it when its
last user (our fd, then the mount) goes away, so even a controller killed
between attaching and mounting leaks no loop device.

Mounting and unmounting call ``mount(2)`` / ``umount2(2)`` directly: they sit on
every container's create and release path, where spawning ``mount`` would cost
milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import re
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hcsoci.context import Context
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError
from hcsoci.resources import Resource

if TYPE_CHECKING:
    from hcsoci.uvm import UtilityVM

__all__ = [
    "AutomanagedFile",
    "HostMount",
    "LoopDevice",
    "MountError",
    "attach_loop_device",
    "detach_loop_device",
    "is_mounted",
    "loop_devices_backed_by",
    "mount",
    "mount_points",
    "mounts_under",
    "unescape_mountinfo",
    "unmount",
]

log = logging.getLogger(__name__)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
_LO_NAME_SIZE = 64

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(HcsociError):
    """A mount or unmount failed; the message names what and why."""


def mount(source: str, target: str | Path, fstype: str, flags: int = 0, data: str = "") -> None:
    """``mount(2)``: raises :class:`MountError` naming the target and the kernel's reason."""
    if (
        _libc.mount(
            source.encode(),
            os.fsencode(target),
            fstype.encode(),
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise MountError(f"mount {fstype} {source!r} on {str(target)!r}: {os.strerror(err)}")


def unmount(target: str | Path) -> None:
    """Unmount ``target``; fine when it is not mounted or gone.  Busy: detach lazily."""
    path = os.fsencode(target)
    while True:
        if _libc.umount2(path, UMOUNT_NOFOLLOW) == 0:
            continue  # mounts may be stacked: peel them all
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        if err == errno.EBUSY:
            if _libc.umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
                continue
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
        raise MountError(f"unmount {str(target)!r}: {os.strerror(err)}")


def mount_points() -> list[str]:
    """Every mount point in this mount namespace, in mount order."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        return [unescape_mountinfo(line.split(" ", 5)[4]) for line in mountinfo]


def mounts_under(directory: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``directory`` in this mount namespace, in mount order."""
    base = os.path.realpath(directory)
    return [p for p in mount_points() if p == base or p.startswith(base + "/")]


def is_mounted(target: str | Path) -> bool:
    """Whether ``target`` is a mount point in this mount namespace."""
    return os.path.realpath(target) in mount_points()


def unescape_mountinfo(field: str) -> str:
    """A path as ``/proc/self/mountinfo`` writes it (``\\040`` for a space) made plain."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# --- loop devices ---


def attach_loop_device(backing_file: str | Path, read_only: bool = False) -> tuple[str, int]:
    """Attach ``backing_file`` to a free loop device (autoclear).

    Returns ``(device path, open fd)``.  Keep the fd open until the device is
    mounted, then close it: from then on the mount holds the device and
    unmounting frees it.
    """
    flags = os.O_RDONLY if read_only else os.O_RDWR
    backing_fd = os.open(backing_file, flags | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):  # another process may take the free device first
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                device_fd = _open_loop_device(device, read_only)
                try:
                    fcntl.ioctl(
                        device_fd, LOOP_CONFIGURE, _loop_config(backing_fd, backing_file, read_only)
                    )
                except OSError as err:
                    os.close(device_fd)
                    if err.errno == errno.EBUSY:
                        continue
                    raise MountError(
                        f"loop device for {str(backing_file)!r}: {err.strerror}"
                    ) from err
                return device, device_fd
            raise MountError(f"loop device for {str(backing_file)!r}: no free loop device")
        finally:
            os.close(control)
    finally:
        os.close(backing_fd)


def _open_loop_device(device: str, read_only: bool) -> int:
    deadline = time.monotonic() + 2.0
    while True:  # a device node just created by LOOP_CTL_GET_FREE may lag behind
        try:
            return os.open(device, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _loop_config(backing_fd: int, backing_file: str | Path, read_only: bool) -> bytes:
    name = os.fsencode(os.path.abspath(backing_file))[: _LO_NAME_SIZE - 1]
    lo_flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    # struct loop_info64: 5 x u64, 4 x u32, file_name[64], crypt_name[64], key[32], 2 x u64
    info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, lo_flags, name, b"", b"", 0, 0)
    # struct loop_config: u32 fd, u32 block_size, loop_info64 info, u64 reserved[8]
    return struct.pack("=II", backing_fd, 0) + info + bytes(64)


def loop_devices_backed_by(backing_file: str | Path) -> list[str]:
    """Loop devices whose backing file is ``backing_file`` (from sysfs)."""
    wanted = os.path.abspath(backing_file)
    devices = []
    try:
        entries = os.listdir("/sys/block")
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.startswith("loop"):
            continue
        try:
            backing = Path(f"/sys/block/{entry}/loop/backing_file").read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if backing.removesuffix(" (deleted)") == wanted:
            devices.append(f"/dev/{entry}")
    return devices


def detach_loop_device(device: str) -> None:
    """``LOOP_CLR_FD``; fine when the device is already free or gone."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as err:
        if err.errno != errno.ENXIO:  # ENXIO: not attached
            raise
    finally:
        os.close(fd)


# --- resource records ---


class HostMount(Resource, kw_only=True):
    """A mount on the host (a virtual disk's file system inside the bundle)."""

    kind = "host-mount"
    target: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        unmount(self.target)


class LoopDevice(Resource, kw_only=True):
    """A loop device over ``backing_file``; ``device`` is learnt once attached."""

    kind = "loop-device"
    backing_file: str
    device: str = ""

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        # Autoclear normally frees it with its mount; this catches a device that was
        # attached but never mounted by a controller that then died.
        devices = loop_devices_backed_by(self.backing_file)
        for device in devices:
            if not self.device or device == self.device:
                detach_loop_device(device)


class AutomanagedFile(Resource, kw_only=True):
    """A file hcsoci owns once the container is created (``automanage-virtual-disk``)."""

    kind = "automanaged-file"
    path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def check_virtual_disk(field: str, source: str) -> Path:
    """Validate a virtual disk's image file path; returns it absolute."""
    if not source:
        raise InvalidArgumentError(f"{field}: a virtual disk needs a source image file")
    path = Path(source)
    if not path.is_absolute():
        raise InvalidArgumentError(f"{field}: {source!r} is not an absolute path")
    if not path.exists():
        raise NotFoundError(f"{field}: {source!r} does not exist")
    if not path.is_file():
        raise InvalidArgumentError(f"{field}: {source!r} is not a regular file")
    return path
