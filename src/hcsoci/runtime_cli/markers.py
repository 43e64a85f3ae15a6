"""One marker file per container hcsoci-runc created: ``<root>/hcsoci-runc/<id>``.

The marker is the first thing ``create`` makes (before runc is started) and
the last thing ``delete`` removes, so a call that finds neither a marker nor
runc's state knows the container is gone without opening the store (the
forced ``delete`` containerd's shim sends after every ``delete``).  Made
exclusively, it also settles which of two creates of one id goes ahead.
Standard library only: this is on the engines' fast path.  Ids are checked
(:func:`hcsoci.ids.check_id`) before they get here, so one never holds a ``/``.
"""

from __future__ import annotations

import os

__all__ = ["age", "exists", "make", "path", "remove"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def path(root: str, container_id: str) -> str:
    """The marker of ``container_id`` under the state root ``root``."""
    return os.path.join(root, "hcsoci-runc", container_id)


def exists(root: str, container_id: str) -> bool:
    """Whether ``container_id`` has a marker."""
    return os.path.lexists(path(root, container_id))


def age(root: str, container_id: str) -> float:
    """Seconds since the marker was made (infinite when there is none)."""
    import time

    try:
        return time.time() - os.lstat(path(root, container_id)).st_mtime
    except FileNotFoundError:
        return float("inf")


def make(root: str, container_id: str, *, take_over: bool = False) -> bool:
    """Make the marker (0600, its directory 0700); False when it existed already.

    With ``take_over`` an existing marker (a stale one) is reused.
    """
    os.makedirs(os.path.join(root, "hcsoci-runc"), mode=0o700, exist_ok=True)
    flags = _FLAGS if take_over else _FLAGS | os.O_EXCL
    try:
        fd = os.open(path(root, container_id), flags, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def remove(root: str, container_id: str) -> None:
    """Remove the marker; a missing one is fine."""
    try:
        os.unlink(path(root, container_id))
    except FileNotFoundError:
        return
