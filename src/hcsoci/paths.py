"""Ids, and the host paths made from them: checked, private, and removed without surprises.

Every object a caller names (a container, a utility VM, an image's scratch
folder) ends up as a directory under the state root.  The rules here are the
only way such a path is made or removed:

* :func:`check_id` (defined in the leaf :mod:`hcsoci.ids`) applies the one id
  rule (runc's: a letter or digit, then up to 127 of letters, digits,
  ``_ . -``), so an id is never empty, never ``.`` or ``..``, never holds a
  ``/`` and never starts with ``-`` (a flag to runc);
* :func:`child` joins a checked id onto its parent and proves the result stays
  inside it, even when something on the way is a symlink;
* :func:`make_private_dir` (defined in the leaf :mod:`hcsoci.private`)
  creates a directory, and every parent it has to create on the way,
  readable and traversable by root alone (0700);
* :func:`write_private_file` (from :mod:`hcsoci.private` too) writes a file
  only root can read (a spec holds the process's environment, secrets included);
* :func:`remove_tree` removes a tree without recursion in Python (a 10,000-deep
  tree is fine), follows no symlink, and refuses to cross into another mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

from hcsoci.errors import UnsafePathError
from hcsoci.ids import check_id
from hcsoci.private import DATA_DIRECTORY, make_private_dir, write_private_file

__all__ = [
    "DATA_ROOT",
    "ID_PATTERN",
    "UnsafePathError",
    "check_id",
    "child",
    "make_private_dir",
    "remove_tree",
    "write_private_file",
]

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""The id rule of runc and the OCI tools, matched whole."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def child(parent: Path | str, name: str, field: str) -> Path:
    """``parent / name`` for a valid id ``name``, proven to stay inside ``parent``.

    The proof resolves symlinks: when ``parent / name`` exists as a symlink (or
    ``parent`` itself has been swapped for one that leads elsewhere), the path
    is refused with :class:`UnsafePathError` instead of being used.
    """
    check_id(name, field)
    parent = Path(parent)
    path = parent / name
    real_parent = os.path.realpath(parent)
    if os.path.lexists(path) and (
        os.path.islink(path) or os.path.realpath(path) != os.path.join(real_parent, name)
    ):
        raise UnsafePathError(f"{field}: {str(path)!r} leads outside {str(parent)!r}")
    return path


DATA_ROOT = Path(DATA_DIRECTORY)
"""Where hcsoci keeps what outlives a boot by default: images, VM boot assets, layer images."""


def remove_tree(path: Path | str) -> None:
    """Remove ``path`` and everything below it; a missing ``path`` is fine.

    Depth does not matter: the walk keeps one directory open at a time and
    climbs back through ``..``, checking it arrives where it left.  A symlink is
    removed, never followed, and a directory on another device (a mount) is
    refused with :class:`UnsafePathError` before anything under it is touched.
    """
    path = Path(os.path.abspath(path))
    try:
        parent_fd = os.open(path.parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        try:
            top = os.lstat(path.name, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(top.st_mode):
            os.unlink(path.name, dir_fd=parent_fd)
            return
        _remove_directory(parent_fd, path, top)
    finally:
        os.close(parent_fd)


def _remove_directory(parent_fd: int, path: Path, top: os.stat_result) -> None:
    device = top.st_dev
    # One frame per directory being emptied: its identity, its name in its
    # parent, and the subdirectories still to visit.  No descriptor is kept per
    # level, so the depth is bounded by memory, not by RLIMIT_NOFILE.
    frames: list[tuple[tuple[int, int], str, list[str]]] = []
    fd = _open_directory(parent_fd, path.name, path, device)
    try:
        frames.append(((top.st_dev, top.st_ino), path.name, _clear_files(fd)))
        while frames:
            _, name, pending = frames[-1]
            if pending:
                sub = pending.pop()
                try:
                    sub_fd = _open_directory(fd, sub, path, device)
                except FileNotFoundError:
                    continue
                os.close(fd)
                fd = sub_fd
                sub_stat = os.fstat(fd)
                frames.append(((sub_stat.st_dev, sub_stat.st_ino), sub, _clear_files(fd)))
                continue
            frames.pop()
            if frames:
                up = os.open("..", _DIR_FLAGS, dir_fd=fd)
                up_stat = os.fstat(up)
                if (up_stat.st_dev, up_stat.st_ino) != frames[-1][0]:
                    os.close(up)
                    raise UnsafePathError(f"{str(path)!r}: the tree moved while it was removed")
                os.close(fd)
                fd = up
                _remove_empty(fd, name, frames[-1][2])
            else:
                os.close(fd)
                fd = -1
                _remove_empty(parent_fd, name, None)
    finally:
        if fd >= 0:
            os.close(fd)


def _open_directory(dir_fd: int, name: str, top: Path, device: int) -> int:
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    if os.fstat(fd).st_dev != device:
        os.close(fd)
        raise UnsafePathError(f"{str(top)!r}: {name!r} below it is another mount; not removed")
    return fd


def _clear_files(fd: int) -> list[str]:
    """Unlink every non-directory in ``fd``; return the subdirectories' names."""
    directories = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                directories.append(entry.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
    return directories


def _remove_empty(dir_fd: int, name: str, pending: list[str] | None) -> None:
    """rmdir ``name``; when something appeared in it meanwhile, visit it again."""
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or pending is None:
            raise
        pending.append(name)  # refilled while we were below: empty it once more
