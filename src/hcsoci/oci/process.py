"""The runtime-spec ``process`` object: what to run inside a container."""

from __future__ import annotations

import msgspec

__all__ = ["Box", "LinuxCapabilities", "POSIXRlimit", "Process", "User"]


class _Struct(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """Base of every runtime-spec struct: camelCase JSON keys, unset fields omitted."""


class Box(_Struct):
    """A terminal size, in characters."""

    height: int = 0
    width: int = 0


class User(_Struct):
    """The user a process runs as (runtime-spec ``process.user``)."""

    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: list[int] | None = None
    username: str = ""


class LinuxCapabilities(_Struct):
    """Capability sets of a Linux process."""

    bounding: list[str] | None = None
    effective: list[str] | None = None
    inheritable: list[str] | None = None
    permitted: list[str] | None = None
    ambient: list[str] | None = None


class POSIXRlimit(_Struct):
    """One resource limit (``RLIMIT_NOFILE``...)."""

    type: str
    hard: int
    soft: int


class Process(_Struct):
    """A process to run: args, env, cwd, user, terminal and Linux attributes."""

    cwd: str = "/"
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
    oom_score_adj: int | None = None
    selinux_label: str = ""
