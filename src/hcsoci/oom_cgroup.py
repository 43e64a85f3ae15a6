"""A container's memory limit held by a parent cgroup of ours, so an OOM kill is still
countable after the runtime removed the container's own cgroup.

runc removes the container's cgroup as its init exits, and with it the
cgroup's OOM counters (``memory.oom_control``'s ``oom_kill`` on cgroup v1,
``memory.events`` on v2).  So the limit goes on a cgroup made for the
container, one level above the runtime's (``cgroupsPath`` =
``/hcsoci/<id>/ctr``): the kernel charges the container's pages to it too,
the OOM killer runs for *its* limit, and what it reports outlives the
runtime's cgroup.  :class:`LimitCgroup` is the record (released by removing
the directories, in every hierarchy the runtime created them in);
:class:`OomCounter` counts the OOM events of the limit.

On cgroup v1 the ``oom_kill`` counter is kept in the *victim's* cgroup only
(the runtime's, gone with it), so the counter is an eventfd registered on the
parent's ``memory.oom_control`` (``cgroup.event_control``) before the
container starts: the kernel signals it each time the limit puts the cgroup
under OOM.  On v2 the parent's ``memory.events`` ``oom_kill`` is hierarchical.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hcsoci.errors import HcsociError
from hcsoci.paths import check_id
from hcsoci.resources import Resource

if TYPE_CHECKING:
    from hcsoci.context import Context
    from hcsoci.uvm import UtilityVM

__all__ = ["CGROUP_ROOT", "LimitCgroup", "OomCounter", "cgroup_parent", "runtime_cgroups_path"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
_PARENT = "hcsoci"


def cgroup_parent(container_id: str) -> str:
    """``/hcsoci/<id>``: the cgroup (relative to each hierarchy's root) holding the limit."""
    return f"/{_PARENT}/{check_id(container_id, 'container id')}"


def runtime_cgroups_path(container_id: str) -> str:
    """The ``linux.cgroupsPath`` for the runtime: a child of :func:`cgroup_parent`."""
    return f"{cgroup_parent(container_id)}/ctr"


def _hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies: each v1 controller directory, or the v2 root."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    found = []
    with contextlib.suppress(OSError):
        for entry in sorted(CGROUP_ROOT.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and (entry / "cgroup.procs").exists():
                found.append(entry)
    return found


def _memory_dir(container_id: str) -> Path:
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    base = CGROUP_ROOT if v2 else CGROUP_ROOT / "memory"
    return base / cgroup_parent(container_id).lstrip("/")


class LimitCgroup(Resource, kw_only=True):
    """The parent cgroup holding a container's memory limit (see the module)."""

    kind = "limit-cgroup"
    container_id: str

    def create(self, memory: int) -> None:
        """Make the memory cgroup and set its limit (memory and, with swap, memory+swap)."""
        path = _memory_dir(self.container_id)
        path.mkdir(parents=True, exist_ok=True)
        v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
        try:
            if v2:
                (path.parent / "cgroup.subtree_control").write_text("+memory")
                (path / "cgroup.subtree_control").write_text("+memory")
                (path / "memory.max").write_text(str(memory))
                with contextlib.suppress(FileNotFoundError):
                    (path / "memory.swap.max").write_text("0")
                return
            (path / "memory.limit_in_bytes").write_text(str(memory))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting
                (path / "memory.memsw.limit_in_bytes").write_text(str(memory))
        except OSError as err:
            raise HcsociError(f"memory: cgroup {path}: {err.strerror or err}") from None

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        relative = cgroup_parent(self.container_id).lstrip("/")
        for hierarchy in _hierarchies():
            for leaf in (f"{relative}/ctr", relative):
                try:
                    os.rmdir(hierarchy / leaf)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    if err.errno == errno.EBUSY:
                        raise HcsociError(
                            f"cgroup {hierarchy / leaf} still has processes"
                        ) from None
                    raise


class OomCounter:
    """Counts the OOM events of a :class:`LimitCgroup`'s limit; owns an eventfd on v1."""

    def __init__(self, container_id: str) -> None:
        self._path = _memory_dir(container_id)
        self._eventfd = -1
        self._count = 0
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            return  # v2: memory.events is read instead
        control = os.open(self._path / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            (self._path / "cgroup.event_control").write_text(f"{self._eventfd} {control}")
        except OSError as err:
            self.close()
            raise HcsociError(f"memory: OOM notification on {self._path}: {err}") from None
        finally:
            os.close(control)

    def count(self) -> int:
        """OOM events of the limit so far."""
        if self._eventfd < 0:
            with contextlib.suppress(OSError):
                for line in (self._path / "memory.events").read_text().splitlines():
                    field, _, value = line.partition(" ")
                    if field == "oom_kill" and value.strip().isdigit():
                        return int(value)
            return self._count
        with contextlib.suppress(BlockingIOError):
            self._count += os.eventfd_read(self._eventfd)
        return self._count

    def close(self) -> None:
        """Close the eventfd (before the cgroup goes: its removal signals it too)."""
        if self._eventfd >= 0:
            os.close(self._eventfd)
            self._eventfd = -1
