"""Secure defaults for a new container, as ``runc spec`` writes them."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from hcsoci.errors import InvalidArgumentError
from hcsoci.oci.process import LinuxCapabilities, POSIXRlimit, Process, User
from hcsoci.oci.seccomp import default_seccomp
from hcsoci.oci.spec import (
    Linux,
    LinuxDeviceCgroup,
    LinuxNamespace,
    LinuxResources,
    Mount,
    Root,
    Spec,
)
from hcsoci.oci.validation import KNOWN_CAPABILITIES

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_ENV",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_NAMESPACES",
    "DEFAULT_READONLY_PATHS",
    "OCI_VERSION",
    "default_mounts",
    "default_spec",
    "with_capabilities",
]

OCI_VERSION = "1.0.2-dev"
"""The runtime-spec version written into new specs (the one Debian's runc speaks)."""

DEFAULT_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TERM=xterm",
)
DEFAULT_CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
DEFAULT_NAMESPACES = ("pid", "network", "ipc", "uts", "mount")
DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    # Masked by newer runc releases (information leaks: CVE-2020-8694 and the like).
    "/proc/interrupts",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def default_mounts() -> list[Mount]:
    """The kernel filesystems every container gets: /proc, /dev, /dev/pts, /dev/shm,
    /dev/mqueue, /sys and a read-only /sys/fs/cgroup."""
    return [
        Mount(destination="/proc", type="proc", source="proc"),
        Mount(
            destination="/dev",
            type="tmpfs",
            source="tmpfs",
            options=["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        Mount(
            destination="/dev/pts",
            type="devpts",
            source="devpts",
            options=["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        Mount(
            destination="/dev/shm",
            type="tmpfs",
            source="shm",
            options=["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        Mount(
            destination="/dev/mqueue",
            type="mqueue",
            source="mqueue",
            options=["nosuid", "noexec", "nodev"],
        ),
        Mount(
            destination="/sys",
            type="sysfs",
            source="sysfs",
            options=["nosuid", "noexec", "nodev", "ro"],
        ),
        Mount(
            destination="/sys/fs/cgroup",
            type="cgroup",
            source="cgroup",
            options=["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]


def default_spec(args: Sequence[str] | None = None, *, terminal: bool = False) -> Spec:
    """A new spec with the defaults ``runc spec`` writes.

    Namespaces pid, network, ipc, uts and mount; only ``CAP_AUDIT_WRITE``,
    ``CAP_KILL`` and ``CAP_NET_BIND_SERVICE``; ``no_new_privileges``;
    ``RLIMIT_NOFILE`` 1024; masked and read-only ``/proc`` and ``/sys`` paths;
    every device denied in the device cgroup; a read-only ``rootfs``; the
    default seccomp filter for those capabilities (:func:`default_seccomp`),
    as docker, podman and containerd's CRI apply one.

    Differences from ``runc spec``: ``args`` replaces ``["sh"]``; ``terminal``
    is False unless asked for (a library's caller usually relays pipes);
    the hostname is ``hcsoci``; two more paths are masked, as newer runc does;
    ``linux.seccomp`` is set (``runc spec`` has none).  Each call returns a new
    object, free to modify: change the capabilities with
    :func:`with_capabilities` (which recomputes the filter), turn the filter
    off with ``spec.linux.seccomp = None``.
    """
    capabilities = list(DEFAULT_CAPABILITIES)
    return Spec(
        oci_version=OCI_VERSION,
        process=Process(
            terminal=terminal,
            user=User(uid=0, gid=0),
            args=list(args) if args is not None else ["sh"],
            env=list(DEFAULT_ENV),
            cwd="/",
            capabilities=LinuxCapabilities(
                bounding=list(capabilities),
                effective=list(capabilities),
                permitted=list(capabilities),
                ambient=list(capabilities),
            ),
            rlimits=[POSIXRlimit(type="RLIMIT_NOFILE", hard=1024, soft=1024)],
            no_new_privileges=True,
        ),
        root=Root(path="rootfs", readonly=True),
        hostname="hcsoci",
        mounts=default_mounts(),
        linux=Linux(
            resources=LinuxResources(devices=[LinuxDeviceCgroup(allow=False, access="rwm")]),
            namespaces=[LinuxNamespace(type=name) for name in DEFAULT_NAMESPACES],
            masked_paths=list(DEFAULT_MASKED_PATHS),
            readonly_paths=list(DEFAULT_READONLY_PATHS),
            seccomp=default_seccomp(capabilities),
        ),
    )


def with_capabilities(spec: Spec, capabilities: Sequence[str]) -> Spec:
    """A copy of ``spec`` whose process holds exactly ``capabilities``, filter included.

    The bounding, effective, permitted and ambient sets all become
    ``capabilities`` (as :func:`default_spec` sets them; the inheritable set
    is left as it was).  The seccomp filter follows, the way docker resolves
    its profile at create time: when ``spec.linux.seccomp`` is the default
    filter of the old bounding set (with or without ``compat_abis``), it
    becomes ``default_seccomp(capabilities)``, so that adding ``CAP_SYS_ADMIN``
    opens mounts and namespaces, as in docker; no filter
    (``None``) stays none, and a custom filter is kept as it is (re-resolve a
    profile file with :func:`load_seccomp_profile` and the new set).  Raises
    :class:`~hcsoci.errors.InvalidArgumentError` for an unknown capability name.
    """
    if spec.process is None:
        raise InvalidArgumentError("spec.process: is None, so it has no capabilities to set")
    default_seccomp(capabilities)  # checks the names before anything changes
    result = copy.deepcopy(spec)
    assert result.process is not None
    old = result.process.capabilities
    old_bounding = [
        name
        for name in (old.bounding or () if old is not None else ())
        if name in KNOWN_CAPABILITIES
    ]
    names = list(dict.fromkeys(capabilities))
    result.process.capabilities = LinuxCapabilities(
        bounding=list(names),
        effective=list(names),
        permitted=list(names),
        inheritable=list(old.inheritable) if old is not None and old.inheritable else None,
        ambient=list(names),
    )
    linux = result.linux
    if linux is not None and linux.seccomp is not None:
        for compat_abis in (False, True):
            if linux.seccomp == default_seccomp(old_bounding, compat_abis=compat_abis):
                linux.seccomp = default_seccomp(capabilities, compat_abis=compat_abis)
                break
    return result
