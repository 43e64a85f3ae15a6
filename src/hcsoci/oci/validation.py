"""Semantic checks of a decoded spec: what the types alone cannot say.

Every failure is a :class:`SpecError` naming the JSON path of the offending
field and its value, e.g. ``$.mounts[2].destination: must be an absolute path
(got 'tmp')``.  The checks are those a runtime would otherwise reject later and
less clearly (runc's own validation), plus contradictions between sections:
a hostname without a UTS namespace, id mappings without a user namespace,
``net.*`` sysctls without a network namespace.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from hcsoci.errors import InvalidArgumentError
from hcsoci.oci.process import Process
from hcsoci.oci.spec import Hooks, IDMapping, Linux, Mount, Spec, Windows

__all__ = [
    "KNOWN_CAPABILITIES",
    "NAMESPACE_TYPES",
    "RLIMIT_TYPES",
    "SECCOMP_ACTIONS",
    "SECCOMP_ARCHITECTURES",
    "SECCOMP_OPERATORS",
    "SpecError",
    "validate_spec",
]

NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})

KNOWN_CAPABILITIES = frozenset(
    "CAP_" + name
    for name in [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
)

RLIMIT_TYPES = frozenset(
    "RLIMIT_" + name
    for name in [
        "AS",
        "CORE",
        "CPU",
        "DATA",
        "FSIZE",
        "LOCKS",
        "MEMLOCK",
        "MSGQUEUE",
        "NICE",
        "NOFILE",
        "NPROC",
        "RSS",
        "RTPRIO",
        "RTTIME",
        "SIGPENDING",
        "STACK",
    ]
)

SECCOMP_ACTIONS = frozenset(
    "SCMP_ACT_" + name
    for name in [
        "KILL",
        "KILL_PROCESS",
        "KILL_THREAD",
        "TRAP",
        "ERRNO",
        "TRACE",
        "ALLOW",
        "LOG",
        "NOTIFY",
    ]
)
"""The seccomp actions runc knows (``SCMP_ACT_*``)."""
SECCOMP_OPERATORS = frozenset(
    "SCMP_CMP_" + name for name in ["NE", "LT", "LE", "EQ", "GE", "GT", "MASKED_EQ"]
)
"""The seccomp argument comparisons (``SCMP_CMP_*``)."""
SECCOMP_ARCHITECTURES = frozenset(
    "SCMP_ARCH_" + name
    for name in [
        "X86",
        "X86_64",
        "X32",
        "ARM",
        "AARCH64",
        "MIPS",
        "MIPS64",
        "MIPS64N32",
        "MIPSEL",
        "MIPSEL64",
        "MIPSEL64N32",
        "PPC",
        "PPC64",
        "PPC64LE",
        "S390",
        "S390X",
        "PARISC",
        "PARISC64",
        "RISCV64",
    ]
)
"""The libseccomp architecture names (``SCMP_ARCH_*``) a filter may list."""
_PROPAGATIONS = frozenset(
    {"shared", "slave", "private", "unbindable", "rshared", "rslave", "rprivate", "runbindable"}
)
_DEVICE_TYPES = frozenset({"c", "b", "u", "p"})
_SCHED_POLICIES = frozenset(
    "SCHED_" + name for name in ["OTHER", "FIFO", "RR", "BATCH", "ISO", "IDLE", "DEADLINE"]
)
_IOPRIO_CLASSES = frozenset({"IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"})
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_OCI_VERSION = re.compile(r"^1\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
_BIND_OPTIONS = frozenset({"bind", "rbind"})
# Mount types whose source is a host path that must be given.
_SOURCE_REQUIRED_TYPES = frozenset({"bind", "virtual-disk", "automanage-virtual-disk"})


def _show(value: Any) -> str:
    try:
        if isinstance(value, msgspec.Struct):
            value = msgspec.to_builtins(value)
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"
    return text if len(text) <= 120 else text[:117] + "..."


class SpecError(InvalidArgumentError):
    """A spec is malformed or contradictory.

    ``path`` is the JSON path of the offending field (``$.process.args[0]``) and
    ``value`` its value (``None`` when the field is missing or unknown).
    """

    def __init__(self, path: str, problem: str, value: Any = None, *, show_value: bool = True):
        self.path = path
        self.problem = problem
        self.value = value
        message = f"invalid OCI spec: {path}: {problem}"
        if show_value:
            message += f" (value: {_show(value)})"
        super().__init__(message)


def validate_spec(spec: Spec) -> None:
    """Check ``spec`` for values and combinations a runtime would reject.

    Raises :class:`SpecError` for the first problem found.
    """
    if not _OCI_VERSION.match(spec.oci_version):
        raise SpecError(
            "$.ociVersion", "must be a runtime-spec 1.x semantic version", spec.oci_version
        )
    if spec.process is not None:
        _validate_process(spec.process, "$.process")
    layered = spec.windows is not None and bool(spec.windows.layer_folders)
    if spec.root is not None and not spec.root.path and not layered:
        # With layer folders the root is made from them (hcsshim's callers send "").
        raise SpecError("$.root.path", "must not be empty", spec.root.path)
    for index, mount in enumerate(spec.mounts or ()):
        _validate_mount(mount, f"$.mounts[{index}]")
    if spec.hooks is not None:
        _validate_hooks(spec.hooks)
    for key in spec.annotations or {}:
        if not key:
            raise SpecError("$.annotations", "keys must not be empty", key)
    namespaces = _validate_linux(spec.linux) if spec.linux is not None else set()
    for field in ("hostname", "domainname"):
        value = getattr(spec, field)
        if value and "uts" not in namespaces:
            raise SpecError(f"$.{field}", "needs a 'uts' namespace in $.linux.namespaces", value)
    if spec.windows is not None:
        _validate_windows(spec.windows)


def _absolute(path: str, where: str) -> None:
    if not posixpath.isabs(path):
        raise SpecError(where, "must be an absolute path", path)


def _validate_process(process: Process, where: str) -> None:
    if not process.args:
        raise SpecError(f"{where}.args", "must hold at least the program to run", process.args)
    for index, arg in enumerate(process.args):
        if "\0" in arg:
            raise SpecError(f"{where}.args[{index}]", "must not contain NUL", arg)
    if not process.args[0]:
        raise SpecError(f"{where}.args[0]", "the program must not be empty", process.args[0])
    _absolute(process.cwd, f"{where}.cwd")
    for index, entry in enumerate(process.env or ()):
        name, equals, _ = entry.partition("=")
        if not equals or not name or "\0" in entry:
            raise SpecError(f"{where}.env[{index}]", "must be NAME=VALUE", entry)
    if process.user.umask is not None and process.user.umask > 0o777:
        raise SpecError(f"{where}.user.umask", "must be at most 0o777", process.user.umask)
    if process.capabilities is not None:
        for field in msgspec.structs.fields(process.capabilities):
            names = getattr(process.capabilities, field.name) or ()
            for index, name in enumerate(names):
                if name not in KNOWN_CAPABILITIES:
                    raise SpecError(
                        f"{where}.capabilities.{field.encode_name}[{index}]",
                        "unknown capability",
                        name,
                    )
    seen: set[str] = set()
    for index, rlimit in enumerate(process.rlimits or ()):
        at = f"{where}.rlimits[{index}]"
        if rlimit.type not in RLIMIT_TYPES:
            raise SpecError(f"{at}.type", "unknown resource limit", rlimit.type)
        if rlimit.type in seen:
            raise SpecError(f"{at}.type", "is set twice", rlimit.type)
        seen.add(rlimit.type)
        if rlimit.soft > rlimit.hard:
            raise SpecError(f"{at}.soft", f"exceeds the hard limit {rlimit.hard}", rlimit.soft)
    if process.scheduler is not None and process.scheduler.policy not in _SCHED_POLICIES:
        raise SpecError(
            f"{where}.scheduler.policy", "unknown scheduling policy", process.scheduler.policy
        )
    if process.io_priority is not None and process.io_priority.class_ not in _IOPRIO_CLASSES:
        raise SpecError(
            f"{where}.ioPriority.class", "unknown IO priority class", process.io_priority.class_
        )


def _validate_mount(mount: Mount, where: str) -> None:
    _absolute(mount.destination, f"{where}.destination")
    if ".." in mount.destination.split("/"):
        raise SpecError(f"{where}.destination", "must not contain '..'", mount.destination)
    options = mount.options or []
    bind = mount.type == "bind" or bool(_BIND_OPTIONS.intersection(options))
    if not mount.type and not bind:
        raise SpecError(f"{where}.type", "is required unless the options hold 'bind'", mount.type)
    if (bind or mount.type in _SOURCE_REQUIRED_TYPES) and not mount.source:
        raise SpecError(
            f"{where}.source", f"is required for a {mount.type or 'bind'} mount", mount.source
        )
    for index, option in enumerate(options):
        if not option:
            raise SpecError(f"{where}.options[{index}]", "must not be empty", option)
    _validate_mappings(mount.uid_mappings, f"{where}.uidMappings")
    _validate_mappings(mount.gid_mappings, f"{where}.gidMappings")


def _validate_mappings(mappings: Iterable[IDMapping] | None, where: str) -> None:
    for index, mapping in enumerate(mappings or ()):
        if mapping.size == 0:
            raise SpecError(f"{where}[{index}].size", "must be at least 1", mapping.size)


def _validate_hooks(hooks: Hooks) -> None:
    for field in msgspec.structs.fields(hooks):
        for index, hook in enumerate(getattr(hooks, field.name) or ()):
            at = f"$.hooks.{field.encode_name}[{index}]"
            _absolute(hook.path, f"{at}.path")
            if hook.timeout is not None and hook.timeout < 1:
                raise SpecError(f"{at}.timeout", "must be at least 1 second", hook.timeout)
            for env_index, entry in enumerate(hook.env or ()):
                if "=" not in entry or entry.startswith("="):
                    raise SpecError(f"{at}.env[{env_index}]", "must be NAME=VALUE", entry)


def _validate_linux(linux: Linux) -> set[str]:
    """Check the ``linux`` section; returns the namespace types it lists."""
    namespaces: dict[str, str] = {}
    for index, namespace in enumerate(linux.namespaces or ()):
        at = f"$.linux.namespaces[{index}]"
        if namespace.type not in NAMESPACE_TYPES:
            raise SpecError(
                f"{at}.type",
                f"unknown namespace type (known: {', '.join(sorted(NAMESPACE_TYPES))})",
                namespace.type,
            )
        if namespace.type in namespaces:
            raise SpecError(f"{at}.type", "namespace type listed twice", namespace.type)
        if namespace.path:
            _absolute(namespace.path, f"{at}.path")
        namespaces[namespace.type] = namespace.path
    _validate_mappings(linux.uid_mappings, "$.linux.uidMappings")
    _validate_mappings(linux.gid_mappings, "$.linux.gidMappings")
    for field in ("uid_mappings", "gid_mappings"):
        key = "uidMappings" if field == "uid_mappings" else "gidMappings"
        if getattr(linux, field) and "user" not in namespaces:
            raise SpecError(
                f"$.linux.{key}",
                "needs a 'user' namespace in $.linux.namespaces",
                getattr(linux, field),
            )
        if "user" in namespaces and not namespaces["user"] and not getattr(linux, field):
            raise SpecError(f"$.linux.{key}", "a new user namespace needs id mappings", None)
    for key, value in (linux.sysctl or {}).items():
        if not key:
            raise SpecError("$.linux.sysctl", "keys must not be empty", key)
        if key.startswith("net.") and "network" not in namespaces:
            raise SpecError(f"$.linux.sysctl[{key!r}]", "needs a 'network' namespace", value)
    for key in linux.time_offsets or {}:
        if key not in ("monotonic", "boottime"):
            raise SpecError("$.linux.timeOffsets", "unknown clock", key)
        if "time" not in namespaces:
            raise SpecError("$.linux.timeOffsets", "needs a 'time' namespace", key)
    for index, device in enumerate(linux.devices or ()):
        at = f"$.linux.devices[{index}]"
        _absolute(device.path, f"{at}.path")
        if device.type not in _DEVICE_TYPES:
            raise SpecError(f"{at}.type", "must be one of c, b, u, p", device.type)
        if device.type != "p" and (device.major is None or device.minor is None):
            raise SpecError(at, "a c, b or u device needs major and minor", device)
    if linux.resources is not None:
        resources = linux.resources
        for index, rule in enumerate(resources.devices or ()):
            at = f"$.linux.resources.devices[{index}]"
            if rule.type not in ("", "a", "b", "c"):
                raise SpecError(f"{at}.type", "must be one of a, b, c", rule.type)
            if set(rule.access) - set("rwm"):
                raise SpecError(f"{at}.access", "must be letters from 'rwm'", rule.access)
        if resources.cpu is not None:
            for field in ("cpus", "mems"):
                value = getattr(resources.cpu, field)
                if value and not _CPU_LIST.match(value):
                    raise SpecError(
                        f"$.linux.resources.cpu.{field}", "must be a list like '0-2,4'", value
                    )
    if linux.rootfs_propagation and linux.rootfs_propagation not in _PROPAGATIONS:
        raise SpecError(
            "$.linux.rootfsPropagation", "unknown propagation", linux.rootfs_propagation
        )
    for key, paths in (
        ("maskedPaths", linux.masked_paths),
        ("readonlyPaths", linux.readonly_paths),
    ):
        for index, path in enumerate(paths or ()):
            _absolute(path, f"$.linux.{key}[{index}]")
    if linux.seccomp is not None:
        seccomp = linux.seccomp
        if seccomp.default_action not in SECCOMP_ACTIONS:
            raise SpecError(
                "$.linux.seccomp.defaultAction", "unknown seccomp action", seccomp.default_action
            )
        for index, arch in enumerate(seccomp.architectures or ()):
            if arch not in SECCOMP_ARCHITECTURES:
                raise SpecError(
                    f"$.linux.seccomp.architectures[{index}]", "unknown seccomp architecture", arch
                )
        for index, syscall in enumerate(seccomp.syscalls or ()):
            at = f"$.linux.seccomp.syscalls[{index}]"
            if not syscall.names or not all(syscall.names):
                raise SpecError(f"{at}.names", "must list syscall names", syscall.names)
            if syscall.action not in SECCOMP_ACTIONS:
                raise SpecError(f"{at}.action", "unknown seccomp action", syscall.action)
            for arg_index, arg in enumerate(syscall.args or ()):
                if arg.op not in SECCOMP_OPERATORS:
                    raise SpecError(
                        f"{at}.args[{arg_index}].op", "unknown seccomp operator", arg.op
                    )
    if linux.personality is not None and linux.personality.domain not in ("LINUX", "LINUX32"):
        raise SpecError(
            "$.linux.personality.domain", "must be LINUX or LINUX32", linux.personality.domain
        )
    return set(namespaces)


def _validate_windows(windows: Windows) -> None:
    seen: set[str] = set()
    for index, folder in enumerate(windows.layer_folders or ()):
        at = f"$.windows.layerFolders[{index}]"
        _absolute(folder, at)
        if folder in seen:
            raise SpecError(at, "layer folder listed twice", folder)
        seen.add(folder)
    if windows.network is not None:
        for index, endpoint in enumerate(windows.network.endpoint_list or ()):
            if not endpoint:
                raise SpecError(
                    f"$.windows.network.endpointList[{index}]", "must not be empty", endpoint
                )
