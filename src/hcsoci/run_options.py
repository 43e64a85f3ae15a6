"""docker's ``run`` options, read and applied to a spec: one place for the CLI and ``hcsoci.run``.

Every parser raises :class:`~hcsoci.errors.InvalidArgumentError` (or
:class:`~hcsoci.errors.NotFoundError`) naming the option and the value it was
given, e.g. ``--memory: '1x' is not a size (e.g. 64m, 1g, 1048576)``; the
option's name is the caller's (``--memory`` for the CLI, ``memory`` for the
Python API).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hcsoci import oci
from hcsoci.errors import InvalidArgumentError, NotFoundError

__all__ = [
    "ALL_CAPABILITIES",
    "CPU_PERIOD",
    "INIT_BINARY",
    "INIT_PATH",
    "MountRequest",
    "add_init",
    "add_mounts",
    "adjust_capabilities",
    "apply_limits",
    "make_privileged",
    "mount_requests",
    "parse_cpus",
    "parse_dns",
    "parse_env_file",
    "parse_memory",
    "parse_mount",
    "parse_pids",
    "parse_tmpfs",
    "parse_volume",
    "pass_through",
    "read_only_root",
    "resolv_conf",
    "rootfs_user",
]

CPU_PERIOD = 100_000
"""The CFS period (µs) a ``cpus`` limit is expressed in, as docker's ``--cpus``."""

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([bkmg]?)b?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_MIN_MEMORY = 6 << 20  # docker refuses less: the runtime itself needs that much to start


def parse_memory(value: int | str, field: str = "memory") -> int:
    """Bytes from ``value``: an int, or docker's ``64m``, ``1g``, ``512k``, ``1048576``."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{field}: {value!r} is not a size")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise InvalidArgumentError(f"{field}: {value!r} is not a size (e.g. 64m, 1g, 1048576)")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < _MIN_MEMORY:
        raise InvalidArgumentError(f"{field}: {value!r} is below the minimum of 6m")
    return size


def parse_cpus(value: float | str, field: str = "cpus") -> float:
    """A positive number of CPUs (``1.5``: one and a half), at most this machine's count."""
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{field}: {value!r} is not a number of CPUs") from None
    available = os.cpu_count() or 1
    if not math.isfinite(cpus) or cpus <= 0:
        raise InvalidArgumentError(f"{field}: {value!r} must be a positive number of CPUs")
    if cpus > available:
        raise InvalidArgumentError(f"{field}: {value!r} is more than the {available} CPUs here")
    return cpus


def parse_pids(value: int | str, field: str = "pids") -> int:
    """A positive process count limit."""
    try:
        pids = int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{field}: {value!r} is not a number of processes") from None
    if pids <= 0:
        raise InvalidArgumentError(f"{field}: {value!r} must be a positive number of processes")
    return pids


def apply_limits(
    spec: oci.Spec,
    *,
    memory: int | None = None,
    cpus: float | None = None,
    pids: int | None = None,
) -> None:
    """Put the (parsed) limits into ``spec.linux.resources``."""
    if spec.linux is None:
        spec.linux = oci.Linux()
    if spec.linux.resources is None:
        spec.linux.resources = oci.LinuxResources()
    resources = spec.linux.resources
    if memory is not None:
        resources.memory = oci.LinuxMemory(limit=memory, swap=memory)
    if cpus is not None:
        resources.cpu = oci.LinuxCPU(quota=round(cpus * CPU_PERIOD), period=CPU_PERIOD)
    if pids is not None:
        resources.pids = oci.LinuxPids(limit=pids)


@dataclass(frozen=True)
class MountRequest:
    """One mount asked for: ``bind`` (a host path) or ``tmpfs``."""

    type: str
    destination: str
    source: str = ""
    read_only: bool = False
    options: tuple[str, ...] = ()

    def to_mount(self) -> oci.Mount:
        """The OCI mount (binds are ``rbind``, ``nosuid``/``nodev`` as docker's tmpfs)."""
        if self.type == "bind":
            return oci.Mount(
                destination=self.destination,
                type="bind",
                source=self.source,
                options=["rbind", "ro" if self.read_only else "rw"],
            )
        return oci.Mount(
            destination=self.destination,
            type="tmpfs",
            source="tmpfs",
            options=["nosuid", "nodev", *(["ro"] if self.read_only else []), *self.options],
        )


def _destination(value: str, field: str, whole: str) -> str:
    if not value.startswith("/"):
        raise InvalidArgumentError(f"{field}: {whole!r}: the destination must be absolute")
    parts = value.split("/")
    if ".." in parts:
        raise InvalidArgumentError(f"{field}: {whole!r}: '..' in the destination")
    return os.path.normpath(value)


def _source(value: str, field: str, whole: str) -> str:
    if not value.startswith("/"):
        raise InvalidArgumentError(
            f"{field}: {whole!r}: the source must be an absolute host path (named volumes "
            "are not supported)"
        )
    if not os.path.exists(value):
        raise NotFoundError(f"{field}: {whole!r}: the source {value!r} does not exist")
    return os.path.abspath(value)


def parse_volume(value: str, field: str = "--volume") -> MountRequest:
    """docker's ``-v SRC:DST[:ro|rw]`` (a bind mount; ``SRC`` must exist)."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgumentError(f"{field}: {value!r} is not SRC:DST[:ro|rw]")
    mode = parts[2] if len(parts) == 3 else "rw"
    flags = set(mode.split(","))
    if not flags <= {"ro", "rw", "z", "Z"} or {"ro", "rw"} <= flags:
        raise InvalidArgumentError(f"{field}: {value!r}: mode {mode!r} is not ro or rw")
    return MountRequest(
        type="bind",
        source=_source(parts[0], field, value),
        destination=_destination(parts[1], field, value),
        read_only="ro" in flags,
    )


_TMPFS_OPTION = re.compile(
    r"(size=\d+[kmg%]?|mode=[0-7]{3,4}|uid=\d+|gid=\d+|noexec|exec|nr_inodes=\d+)"
)


def parse_tmpfs(value: str, field: str = "--tmpfs") -> MountRequest:
    """docker's ``--tmpfs DST[:OPTIONS]`` (``size=64m,mode=1777,noexec,uid=N,gid=N``)."""
    destination, _, options = value.partition(":")
    chosen = [option for option in options.split(",") if option] if options else []
    for option in chosen:
        if option in ("ro", "rw"):
            continue
        if not _TMPFS_OPTION.fullmatch(option.lower()):
            raise InvalidArgumentError(f"{field}: {value!r}: option {option!r} is not supported")
    read_only = "ro" in chosen
    rest = [option for option in chosen if option not in ("ro", "rw")]
    if not any(option.startswith("mode=") for option in rest):
        rest.append("mode=1777")
    return MountRequest(
        type="tmpfs",
        destination=_destination(destination, field, value),
        read_only=read_only,
        options=tuple(rest),
    )


def parse_mount(value: str, field: str = "--mount") -> MountRequest:
    """docker's ``--mount type=bind|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…]``."""
    pairs: dict[str, str] = {}
    for item in value.split(","):
        key, equals, setting = item.partition("=")
        key = key.strip().lower()
        if not key:
            raise InvalidArgumentError(f"{field}: {value!r} has an empty field")
        if key in ("readonly", "ro") and not equals:
            setting = "true"
        elif not equals:
            raise InvalidArgumentError(f"{field}: {value!r}: {item!r} is not KEY=VALUE")
        pairs[
            {"src": "source", "dst": "target", "destination": "target", "ro": "readonly"}.get(
                key, key
            )
        ] = setting
    kind = pairs.pop("type", "volume")
    target = pairs.pop("target", "")
    read_only = pairs.pop("readonly", "false").lower() in ("true", "1", "")
    if not target:
        raise InvalidArgumentError(f"{field}: {value!r} needs target=")
    if kind == "bind":
        source = pairs.pop("source", "")
        if not source:
            raise InvalidArgumentError(f"{field}: {value!r} needs source=")
        if pairs:
            raise InvalidArgumentError(f"{field}: {value!r}: {sorted(pairs)[0]!r} is not supported")
        return MountRequest(
            type="bind",
            source=_source(source, field, value),
            destination=_destination(target, field, value),
            read_only=read_only,
        )
    if kind == "tmpfs":
        options: list[str] = []
        if "tmpfs-size" in pairs:
            size = pairs.pop("tmpfs-size")
            options.append(f"size={parse_memory_size(size, field, value)}")
        mode = pairs.pop("tmpfs-mode", "1777")
        if not re.fullmatch(r"[0-7]{3,4}", mode):
            raise InvalidArgumentError(f"{field}: {value!r}: tmpfs-mode {mode!r} is not octal")
        options.append(f"mode={mode}")
        if pairs:
            raise InvalidArgumentError(f"{field}: {value!r}: {sorted(pairs)[0]!r} is not supported")
        return MountRequest(
            type="tmpfs",
            destination=_destination(target, field, value),
            read_only=read_only,
            options=tuple(options),
        )
    raise InvalidArgumentError(f"{field}: {value!r}: type {kind!r} is not bind or tmpfs")


def parse_memory_size(value: str, field: str, whole: str) -> int:
    """A size in bytes (``64m``) for an option inside ``whole``."""
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise InvalidArgumentError(f"{field}: {whole!r}: {value!r} is not a size")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def add_mounts(spec: oci.Spec, requests: Iterable[MountRequest]) -> None:
    """Append the mounts to ``spec.mounts`` (after the defaults, so a later one wins)."""
    spec.mounts = [*(spec.mounts or []), *(request.to_mount() for request in requests)]


def read_only_root(spec: oci.Spec) -> None:
    """Make the root file system read-only (``--read-only``)."""
    if spec.root is None:
        raise InvalidArgumentError("read_only: the spec has no root")
    spec.root.readonly = True


def mount_requests(
    mounts: Sequence[str | MountRequest | oci.Mount] = (),
    tmpfs: Sequence[str] | Mapping[str, str] = (),
) -> list[oci.Mount]:
    """The Python API's ``mounts=`` and ``tmpfs=`` as OCI mounts.

    ``mounts`` entries are ``'SRC:DST[:ro]'`` strings, :class:`MountRequest`s
    or :class:`oci.Mount`s; ``tmpfs`` is a list of ``'DST[:OPTIONS]'`` or a
    mapping of destination to options (``{'/tmp': 'size=64m'}``).
    """
    result: list[oci.Mount] = []
    for index, entry in enumerate(mounts):
        if isinstance(entry, oci.Mount):
            result.append(entry)
        elif isinstance(entry, MountRequest):
            result.append(entry.to_mount())
        elif isinstance(entry, str):
            result.append(parse_volume(entry, f"mounts[{index}]").to_mount())
        else:
            raise InvalidArgumentError(f"mounts[{index}]: {entry!r} is not 'SRC:DST[:ro]'")
    items = (
        [f"{dst}:{options}" if options else dst for dst, options in tmpfs.items()]
        if isinstance(tmpfs, Mapping)
        else list(tmpfs)
    )
    for index, text in enumerate(items):
        result.append(parse_tmpfs(text, f"tmpfs[{index}]").to_mount())
    return result


def parse_env_file(path: str, field: str = "--env-file") -> list[str]:
    """docker's env file: ``NAME=VALUE`` lines, ``NAME`` alone passes this environment's
    value through (dropped when unset), ``#`` comments and blank lines skipped."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise NotFoundError(f"{field}: {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidArgumentError(f"{field}: {path!r} cannot be read: {err}") from None
    entries: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        entry = pass_through(line, f"{field} {path}:{number}")
        if entry is not None:
            entries.append(entry)
    return entries


def pass_through(entry: str, field: str = "--env") -> str | None:
    """``NAME=VALUE`` as it is; ``NAME`` alone: this environment's value, None when unset."""
    name, equals, _ = entry.partition("=")
    if not name or not re.fullmatch(r"[^\s=]+", name):
        raise InvalidArgumentError(f"{field}: {entry!r} is not NAME=VALUE or NAME")
    if equals:
        return entry
    value = os.environ.get(name)
    return None if value is None else f"{name}={value}"


_CAPABILITY_NAMES = """
    CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
    LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK
    IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN
    SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE
    AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND
    AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE
"""
ALL_CAPABILITIES = tuple(f"CAP_{name}" for name in _CAPABILITY_NAMES.split())
"""Every Linux capability (``capabilities(7)``), as the runtime names them; the index
of each is its number."""


def _capability(name: str, field: str) -> list[str]:
    upper = name.strip().upper()
    if upper == "ALL":
        return list(ALL_CAPABILITIES)
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in ALL_CAPABILITIES:
        raise InvalidArgumentError(f"{field}: {name!r} is not a capability")
    return [full]


def adjust_capabilities(
    spec: oci.Spec, add: Sequence[str] = (), drop: Sequence[str] = ()
) -> oci.Spec:
    """``--cap-add``/``--cap-drop`` (names with or without ``CAP_``, or ``ALL``), as docker:
    drops apply first, then adds.  Returns the new spec (the default seccomp filter follows)."""
    added = [cap for name in add for cap in _capability(name, "--cap-add")]
    dropped = {cap for name in drop for cap in _capability(name, "--cap-drop")}
    if not added and not dropped:
        return spec
    current = (
        spec.process.capabilities.bounding if spec.process and spec.process.capabilities else []
    )
    kept = [cap for cap in current or [] if cap not in dropped]
    return oci.with_capabilities(spec, list(dict.fromkeys([*kept, *added])))


def host_capabilities() -> list[str]:
    """The capabilities in this process's bounding set (what a privileged container can get)."""
    bounding = ALL_CAPABILITIES
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("CapBnd:"))
        bits = int(line.split()[1], 16)
        return [name for number, name in enumerate(bounding) if bits & (1 << number)]
    return list(bounding)


def make_privileged(spec: oci.Spec) -> oci.Spec:
    """``--privileged``: every capability this machine grants, no seccomp filter, no masked
    or read-only kernel paths, every device allowed in the device cgroup, ``/sys`` writable."""
    spec = oci.with_capabilities(spec, host_capabilities())
    assert spec.linux is not None
    spec.linux.seccomp = None
    spec.linux.masked_paths = []
    spec.linux.readonly_paths = []
    if spec.linux.resources is not None:
        spec.linux.resources.devices = [oci.LinuxDeviceCgroup(allow=True, access="rwm")]
    for mount in spec.mounts or []:
        if mount.destination in ("/sys", "/sys/fs/cgroup") and mount.options:
            mount.options = [option for option in mount.options if option != "ro"]
    return spec


INIT_BINARY = "/usr/bin/tini-static"
"""The init ``--init`` runs as pid 1 (Debian's ``tini``, statically linked: any root)."""

INIT_PATH = "/dev/init"
"""Where the init is bound in the container: ``/dev`` is a tmpfs, so no mount point
is made in the root (a caller's read-only root works too)."""


def add_init(spec: oci.Spec, binary: str = INIT_BINARY) -> None:
    """``--init``: a signal-forwarding, zombie-reaping init runs the process as its child."""
    if not os.path.isfile(binary):
        raise NotFoundError(f"--init: {binary!r} does not exist (Debian package tini)")
    assert spec.process is not None
    spec.mounts = [
        *(spec.mounts or []),
        oci.Mount(destination=INIT_PATH, type="bind", source=binary, options=["bind", "ro"]),
    ]
    spec.process.args = [INIT_PATH, "--", *(spec.process.args or [])]


def parse_dns(servers: Sequence[str], field: str = "--dns") -> list[str]:
    """IP addresses of name servers."""
    checked = []
    for server in servers:
        try:
            checked.append(str(ipaddress.ip_address(server)))
        except ValueError:
            raise InvalidArgumentError(f"{field}: {server!r} is not an IP address") from None
    return checked


def resolv_conf(servers: Sequence[str]) -> bytes:
    """A resolv.conf naming ``servers``."""
    return "".join(f"nameserver {server}\n" for server in servers).encode()


def rootfs_user(rootfs: Path, user: str, field: str = "user") -> oci.User:
    """``uid[:gid]`` or ``name[:group]``, names through the root's /etc/passwd and /etc/group."""

    def table(name: str) -> list[list[str]]:
        try:
            text = (rootfs / "etc" / name).read_text(errors="replace")
        except OSError:
            return []
        return [line.split(":") for line in text.splitlines() if line.count(":") >= 3]

    who, _, group = user.partition(":")
    row = next((r for r in table("passwd") if r[0] == who or r[2] == who), None)
    if who.isdigit():
        uid, gid = int(who), int(row[3]) if row and row[3].isdigit() else 0
    elif row is not None and row[2].isdigit() and row[3].isdigit():
        uid, gid = int(row[2]), int(row[3])
    else:
        raise NotFoundError(f"{field}: {user!r}: {who!r} is not in {rootfs}/etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((r for r in table("group") if r[0] == group and r[2].isdigit()), None)
            if found is None:
                raise NotFoundError(
                    f"{field}: {user!r}: group {group!r} is not in {rootfs}/etc/group"
                )
            gid = int(found[2])
    return oci.User(uid=uid, gid=gid)
