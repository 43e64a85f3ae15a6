"""Private directories and files (what only root may read), as a leaf module: no ``pathlib``.

:func:`make_private_dir` and :func:`write_private_file` are re-exported by
:mod:`hcsoci.paths`, where the rules for every path hcsoci makes live; they
are defined here so the state store, which the ``hcsoci-runc`` runtime opens
on every ``create`` and ``delete``, costs an engine call no ``pathlib`` or
``re`` (as :mod:`hcsoci.ids` does for the id rule).
"""

from __future__ import annotations

import errno
import os
import stat

from hcsoci.errors import UnsafePathError

TYPE_CHECKING = False  # typing and pathlib are imported by type checkers only
if TYPE_CHECKING:
    from pathlib import Path
    from typing import TypeVar

    PathOrStr = TypeVar("PathOrStr", str, Path)

__all__ = ["DATA_DIRECTORY", "make_private_dir", "write_private_file"]

DATA_DIRECTORY = "/var/lib/hcsoci"
"""Where hcsoci keeps what outlives a boot (:data:`hcsoci.paths.DATA_ROOT`, as a string)."""


def make_private_dir(path: PathOrStr, *, exist_ok: bool = True) -> PathOrStr:
    """Create ``path`` with mode 0700, and each missing parent too; returns it.

    The parents created on the way are 0700 as well (``mkdir -p`` would leave
    them 0755).  An existing ``path`` that others may read or traverse (made
    by an older version) is tightened to 0700; one that others may *write* is
    refused with :class:`~hcsoci.errors.UnsafePathError`: it is not a place
    for private state.  When ``path`` lies inside :data:`DATA_DIRECTORY`, that
    directory is kept 0700 too.
    """
    where = os.path.abspath(path)
    missing: list[str] = []
    current = where
    while not os.path.exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if directory == where and not exist_ok:
                raise
            continue
        os.chmod(directory, 0o700)  # the umask may have taken bits off; never added any
    if not missing and not exist_ok:
        raise FileExistsError(errno.EEXIST, "already exists", where)
    _keep_private(where)
    if where.startswith(DATA_DIRECTORY + os.sep):
        _keep_private(DATA_DIRECTORY)
    return path


def _keep_private(path: str) -> None:
    mode = os.stat(path).st_mode
    if not stat.S_ISDIR(mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
    if mode & 0o022:
        raise UnsafePathError(
            f"{path!r} is writable by other users (mode {stat.S_IMODE(mode):o}): "
            "hcsoci keeps its state only in a private directory"
        )
    if mode & 0o077:
        os.chmod(path, 0o700)


def write_private_file(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` (created or truncated), readable by root alone (0600).

    A symlink at ``path`` is refused rather than written through.  ``mode`` is
    for a file that a container's own user must read through a bind mount; its
    directory still keeps everyone else out.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, mode)
        file.write(data)
