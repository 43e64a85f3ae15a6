"""Network-namespace system calls through libc: open a namespace file, enter one, make one.

Standard library only (the runtime CLI imports it on an engine's path);
``os.setns`` and ``os.unshare`` are Python 3.12's.  ``setns`` and ``unshare``
act on the calling thread.
"""

from __future__ import annotations

import ctypes
import fcntl
import os

from hcsoci.errors import NotFoundError

__all__ = ["CLONE_NEWNET", "enter_netns", "libc_error", "open_netns", "unshare_netns"]

CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace it is

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def libc_error(what: str) -> OSError:
    """The ``OSError`` of the libc call that just failed, its message starting with ``what``."""
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def open_netns(path: str) -> int:
    """A descriptor of the network namespace at ``path``.

    Raises :class:`NotFoundError` when ``path`` is missing or not a network namespace.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"network namespace {path} does not exist") from None
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        kind = -1
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise NotFoundError(f"{path} is not a network namespace (nothing is mounted on it)")
    return fd


def enter_netns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` (``setns``)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise libc_error("setns")


def unshare_netns(what: str = "unshare") -> None:
    """Give the calling thread a new network namespace of its own (``unshare``)."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        raise libc_error(what)
