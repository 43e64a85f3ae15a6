"""The runtime-spec ``config.json`` model (runtime-spec 1.2, the parts a Linux container uses).

Attributes are snake_case; JSON keys are the spec's camelCase (with its
irregular spellings, such as ``containerID`` and ``blockIO``, named explicitly).

A Linux spec may also carry a ``windows`` section with only ``layerFolders``
and ``network``, as LCOW specs did: that is how a caller hands hcsoci the image
layers and the HNS-style network endpoints.  Any other ``windows`` key is refused.

Unknown keys are refused everywhere (a typo is an error naming its JSON path),
with one exception: the other platforms' top-level sections (``solaris``,
``vm``, ``zos``) are carried opaquely and round-trip unchanged, so a spec
written for several platforms still decodes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hcsoci.oci.base import Int64, SpecStruct, UInt16, UInt32, UInt64
from hcsoci.oci.process import Process

__all__ = [
    "Hook",
    "Hooks",
    "IDMapping",
    "Linux",
    "LinuxBlockIO",
    "LinuxCPU",
    "LinuxDevice",
    "LinuxDeviceCgroup",
    "LinuxHugepageLimit",
    "LinuxIntelRdt",
    "LinuxInterfacePriority",
    "LinuxMemory",
    "LinuxMemoryPolicy",
    "LinuxNamespace",
    "LinuxNetDevice",
    "LinuxNetwork",
    "LinuxPersonality",
    "LinuxPids",
    "LinuxRdma",
    "LinuxResources",
    "LinuxSeccomp",
    "LinuxSeccompArg",
    "LinuxSyscall",
    "LinuxThrottleDevice",
    "LinuxTimeOffset",
    "LinuxWeightDevice",
    "Mount",
    "Root",
    "Spec",
    "Windows",
    "WindowsNetwork",
]


class Root(SpecStruct):
    """The container's root filesystem (relative paths are relative to the bundle)."""

    path: str
    readonly: bool = False


class IDMapping(SpecStruct):
    """A user or group id range mapped from the container to the host."""

    container_id: UInt32 = msgspec.field(name="containerID")
    host_id: UInt32 = msgspec.field(name="hostID")
    size: UInt32


class Mount(SpecStruct, kw_only=True):
    """One mount added to the container (``bind``, ``tmpfs``, ``proc``... or hcsoci's
    ``virtual-disk`` / ``automanage-virtual-disk``)."""

    destination: str
    type: str = ""
    source: str = ""
    options: list[str] | None = None
    uid_mappings: list[IDMapping] | None = None
    gid_mappings: list[IDMapping] | None = None


class Hook(SpecStruct):
    """A program the runtime runs at a lifecycle point."""

    path: str
    args: list[str] | None = None
    env: list[str] | None = None
    timeout: int | None = None


class Hooks(SpecStruct):
    """Lifecycle hooks, by the point at which they run."""

    prestart: list[Hook] | None = None
    create_runtime: list[Hook] | None = None
    create_container: list[Hook] | None = None
    start_container: list[Hook] | None = None
    poststart: list[Hook] | None = None
    poststop: list[Hook] | None = None


class LinuxNamespace(SpecStruct):
    """A namespace to create (no ``path``) or join (``path`` to a nsfs file)."""

    type: str
    path: str = ""


class LinuxDevice(SpecStruct, kw_only=True):
    """A device node to create inside the container."""

    path: str
    type: str
    major: Int64 | None = None
    minor: Int64 | None = None
    file_mode: UInt32 | None = None
    uid: UInt32 | None = None
    gid: UInt32 | None = None


class LinuxDeviceCgroup(SpecStruct, kw_only=True):
    """A device cgroup rule (``allow`` is required: ``false`` denies)."""

    allow: bool
    type: str = ""
    major: Int64 | None = None
    minor: Int64 | None = None
    access: str = ""


class LinuxMemory(SpecStruct):
    """Memory cgroup limits, in bytes (``-1``: unlimited)."""

    limit: Int64 | None = None
    reservation: Int64 | None = None
    swap: Int64 | None = None
    kernel: Int64 | None = None
    kernel_tcp: Int64 | None = msgspec.field(default=None, name="kernelTCP")
    swappiness: UInt64 | None = None
    disable_oom_killer: bool | None = msgspec.field(default=None, name="disableOOMKiller")
    use_hierarchy: bool | None = None
    check_before_update: bool | None = None


class LinuxCPU(SpecStruct):
    """CPU cgroup settings."""

    shares: UInt64 | None = None
    quota: Int64 | None = None
    burst: UInt64 | None = None
    period: UInt64 | None = None
    realtime_runtime: Int64 | None = None
    realtime_period: UInt64 | None = None
    cpus: str = ""
    mems: str = ""
    idle: Int64 | None = None


class LinuxPids(SpecStruct):
    """The pids cgroup limit (``-1`` or ``0``: unlimited)."""

    limit: Int64 | None = None


class LinuxWeightDevice(SpecStruct, kw_only=True):
    """A per-device block IO weight."""

    major: Int64
    minor: Int64
    weight: UInt16 | None = None
    leaf_weight: UInt16 | None = None


class LinuxThrottleDevice(SpecStruct):
    """A per-device block IO rate limit."""

    major: Int64
    minor: Int64
    rate: UInt64


class LinuxBlockIO(SpecStruct):
    """Block IO cgroup settings."""

    weight: UInt16 | None = None
    leaf_weight: UInt16 | None = None
    weight_device: list[LinuxWeightDevice] | None = None
    throttle_read_bps_device: list[LinuxThrottleDevice] | None = None
    throttle_write_bps_device: list[LinuxThrottleDevice] | None = None
    throttle_read_iops_device: list[LinuxThrottleDevice] | None = msgspec.field(
        default=None, name="throttleReadIOPSDevice"
    )
    throttle_write_iops_device: list[LinuxThrottleDevice] | None = msgspec.field(
        default=None, name="throttleWriteIOPSDevice"
    )


class LinuxHugepageLimit(SpecStruct):
    """A hugetlb cgroup limit for one page size (``2MB``...)."""

    page_size: str
    limit: UInt64


class LinuxInterfacePriority(SpecStruct):
    """A network priority for one interface."""

    name: str
    priority: UInt32


class LinuxNetwork(SpecStruct):
    """net_cls / net_prio cgroup settings."""

    class_id: UInt32 | None = msgspec.field(default=None, name="classID")
    priorities: list[LinuxInterfacePriority] | None = None


class LinuxRdma(SpecStruct):
    """RDMA cgroup limits for one device."""

    hca_handles: UInt32 | None = None
    hca_objects: UInt32 | None = None


class LinuxResources(SpecStruct):
    """The container's cgroup settings."""

    devices: list[LinuxDeviceCgroup] | None = None
    memory: LinuxMemory | None = None
    cpu: LinuxCPU | None = None
    pids: LinuxPids | None = None
    block_io: LinuxBlockIO | None = msgspec.field(default=None, name="blockIO")
    hugepage_limits: list[LinuxHugepageLimit] | None = None
    network: LinuxNetwork | None = None
    rdma: dict[str, LinuxRdma] | None = None
    unified: dict[str, str] | None = None


class LinuxSeccompArg(SpecStruct, kw_only=True):
    """A condition on one syscall argument."""

    index: UInt32
    value: UInt64
    value_two: UInt64 = 0
    op: str


class LinuxSyscall(SpecStruct, kw_only=True):
    """A seccomp rule: an action for a set of syscalls."""

    names: list[str]
    action: str
    errno_ret: UInt32 | None = None
    args: list[LinuxSeccompArg] | None = None


class LinuxSeccomp(SpecStruct, kw_only=True):
    """A seccomp filter."""

    default_action: str
    default_errno_ret: UInt32 | None = None
    architectures: list[str] | None = None
    flags: list[str] | None = None
    listener_path: str = ""
    listener_metadata: str = ""
    syscalls: list[LinuxSyscall] | None = None


class LinuxIntelRdt(SpecStruct):
    """Intel RDT (resctrl) settings."""

    clos_id: str = msgspec.field(default="", name="closID")
    l3_cache_schema: str = msgspec.field(default="", name="l3CacheSchema")
    mem_bw_schema: str = msgspec.field(default="", name="memBwSchema")
    enable_cmt: bool = msgspec.field(default=False, name="enableCMT")
    enable_mbm: bool = msgspec.field(default=False, name="enableMBM")


class LinuxPersonality(SpecStruct):
    """The ``personality(2)`` execution domain."""

    domain: str
    flags: list[str] | None = None


class LinuxTimeOffset(SpecStruct):
    """A clock offset for the time namespace."""

    secs: Int64 = 0
    nanosecs: UInt32 = 0


class LinuxMemoryPolicy(SpecStruct, kw_only=True):
    """The NUMA memory policy (``set_mempolicy(2)``)."""

    mode: str
    nodes: str = ""
    flags: list[str] | None = None


class LinuxNetDevice(SpecStruct):
    """A host network device moved into the container's network namespace."""

    name: str = ""


class Linux(SpecStruct):
    """Linux-specific configuration."""

    uid_mappings: list[IDMapping] | None = None
    gid_mappings: list[IDMapping] | None = None
    sysctl: dict[str, str] | None = None
    resources: LinuxResources | None = None
    cgroups_path: str = ""
    namespaces: list[LinuxNamespace] | None = None
    devices: list[LinuxDevice] | None = None
    net_devices: dict[str, LinuxNetDevice] | None = None
    seccomp: LinuxSeccomp | None = None
    rootfs_propagation: str = ""
    masked_paths: list[str] | None = None
    readonly_paths: list[str] | None = None
    mount_label: str = ""
    intel_rdt: LinuxIntelRdt | None = msgspec.field(default=None, name="intelRdt")
    personality: LinuxPersonality | None = None
    time_offsets: dict[str, LinuxTimeOffset] | None = None
    memory_policy: LinuxMemoryPolicy | None = None


class WindowsNetwork(SpecStruct):
    """The HNS network settings an LCOW spec carries: endpoints to attach."""

    endpoint_list: list[str] | None = None
    allow_unqualified_dns_query: bool = msgspec.field(
        default=False, name="allowUnqualifiedDNSQuery"
    )
    dns_search_list: list[str] | None = msgspec.field(default=None, name="DNSSearchList")
    network_shared_container_name: str = ""
    network_namespace: str = ""


class Windows(SpecStruct):
    """The ``windows`` section a Linux (LCOW-style) spec may carry.

    ``layer_folders`` is ``layern..layer1, scratch``: read-only layers top-most
    first, then the writable scratch directory.
    """

    layer_folders: list[str] | None = None
    network: WindowsNetwork | None = None


class Spec(SpecStruct, kw_only=True):
    """A runtime-spec ``config.json``."""

    oci_version: str = msgspec.field(name="ociVersion")
    process: Process | None = None
    root: Root | None = None
    hostname: str = ""
    domainname: str = ""
    mounts: list[Mount] | None = None
    hooks: Hooks | None = None
    annotations: dict[str, str] | None = None
    linux: Linux | None = None
    windows: Windows | None = None
    # Other platforms' sections: not used here, carried so a multi-platform spec round-trips.
    solaris: dict[str, Any] | None = None
    vm: dict[str, Any] | None = None
    zos: dict[str, Any] | None = None
