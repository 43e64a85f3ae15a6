"""The runtime-spec ``process`` object: what to run inside a container."""

from __future__ import annotations

import msgspec

from hcsoci.oci.base import Int64, SpecStruct, UInt32, UInt64

__all__ = [
    "Box",
    "CPUAffinity",
    "IOPriority",
    "LinuxCapabilities",
    "POSIXRlimit",
    "Process",
    "Scheduler",
    "User",
]


def _root_dir() -> str:
    return "/"


class Box(SpecStruct):
    """A terminal size, in characters."""

    height: UInt32 = 0
    width: UInt32 = 0


class User(SpecStruct):
    """The user a process runs as (runtime-spec ``process.user``)."""

    # uid and gid are REQUIRED keys in config.json: a default_factory keeps them
    # encoded even when 0 (omit_defaults only drops plain defaults).
    uid: UInt32 = msgspec.field(default_factory=int)
    gid: UInt32 = msgspec.field(default_factory=int)
    umask: UInt32 | None = None
    additional_gids: list[UInt32] | None = None
    username: str = ""


class LinuxCapabilities(SpecStruct):
    """Capability sets of a Linux process (names like ``CAP_KILL``)."""

    bounding: list[str] | None = None
    effective: list[str] | None = None
    inheritable: list[str] | None = None
    permitted: list[str] | None = None
    ambient: list[str] | None = None


class POSIXRlimit(SpecStruct):
    """One resource limit (``RLIMIT_NOFILE``...)."""

    type: str
    hard: UInt64
    soft: UInt64


class Scheduler(SpecStruct):
    """``sched_setattr(2)`` parameters of the process."""

    policy: str
    nice: int = 0
    priority: int = 0
    flags: list[str] | None = None
    runtime: UInt64 = 0
    deadline: UInt64 = 0
    period: UInt64 = 0


class IOPriority(SpecStruct):
    """``ioprio_set(2)`` class and priority of the process."""

    class_: str = msgspec.field(name="class")
    priority: int = 0


class CPUAffinity(SpecStruct):
    """CPU sets for ``runc exec``'d processes: before and after joining the cgroup."""

    initial: str = ""
    final: str = ""


class Process(SpecStruct):
    """A process to run: args, env, cwd, user, terminal and Linux attributes."""

    # cwd is REQUIRED in config.json (runc refuses a spec without it): keep it encoded.
    cwd: str = msgspec.field(default_factory=_root_dir)
    args: list[str] | None = None
    env: list[str] | None = None
    terminal: bool = False
    console_size: Box | None = None
    user: User = msgspec.field(default_factory=User)
    command_line: str = ""
    capabilities: LinuxCapabilities | None = None
    rlimits: list[POSIXRlimit] | None = None
    no_new_privileges: bool = False
    apparmor_profile: str = ""
    oom_score_adj: Int64 | None = None
    scheduler: Scheduler | None = None
    selinux_label: str = ""
    io_priority: IOPriority | None = None
    exec_cpu_affinity: CPUAffinity | None = msgspec.field(default=None, name="execCPUAffinity")
