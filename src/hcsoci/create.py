"""``create_container``: an OCI spec in, a created container out (hcsshim's create.go).

The flow follows the seed's ``CreateContainer``:

1. defaults: a uuid id, the program's name as owner; a spec is required;
2. the container's row goes into the state store (state ``creating``, this
   process as controller) *before* anything is allocated;
3. allocations, each recorded in :class:`~hcsoci.resources.Resources` before it
   is made: the bundle directory, the network namespace (when the spec asks for
   one), the root file system (an overlay of ``windows.layer_folders``, or
   ``root.path`` as given), virtual disks (loop device + host mount, bound into
   the container), and the runtime's container state;
4. the bundle's ``config.json`` is written from the resolved spec;
5. on failure everything is released (unless
   ``do_not_release_resources_on_failure``), and the raised error carries
   ``.resources``.

The runtime container itself comes to life at ``start`` (see
:mod:`hcsoci.container` for why); until then it is ``created`` in the store.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from hcsoci import container_table, cow, oci
from hcsoci.container import Container
from hcsoci.context import Context
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError
from hcsoci.etcfiles import add_etc_files
from hcsoci.layers import mount_container_layers
from hcsoci.mounts import (
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    AutomanagedFile,
    HostMount,
    LoopDevice,
    MountError,
    attach_loop_device,
    check_virtual_disk,
    mount,
    mounts_under,
)
from hcsoci.paths import check_id, child, make_private_dir, remove_tree, write_private_file
from hcsoci.resources import Resource, Resources, release_resources
from hcsoci.runtime import Runtime
from hcsoci.store import Store, open_store, state_root

if TYPE_CHECKING:
    from hcsoci.uvm import UtilityVM

__all__ = [
    "BundleDir",
    "ContainerRecord",
    "CreateOptions",
    "RuntimeContainer",
    "containers_dir",
    "create_container",
]

log = logging.getLogger(__name__)

VIRTUAL_DISK_TYPES = ("virtual-disk", "automanage-virtual-disk")
# Mount types runc handles without a kernel file system of that name.
_BIND_TYPES = ("bind", "rbind")


@dataclass
class CreateOptions:
    """What to create (the seed's ``CreateOptions``).

    ``id`` defaults to a new uuid and ``owner`` to the program's name.  ``spec``
    is required.  ``hosting_system`` (a utility VM) creates the container inside
    that VM (see :mod:`hcsoci.uvm.placement`).
    ``network_namespace`` names an existing namespace to join.  With
    ``do_not_release_resources_on_failure`` a failed create leaves its
    allocations in place (and recorded) for debugging; release them with
    :func:`~hcsoci.release_resources` on the error's ``.resources``.
    ``runtime`` picks the OCI runtime (``runc`` or ``crun``; default
    ``$HCSOCI_RUNTIME``, else ``runc``).
    ``networks`` (ids or names of hns networks) gives the container a new
    endpoint on each, after those in ``spec.windows.network.endpoint_list``;
    they are the container's resources, deleted when it is released (what
    ``docker run --network`` does).
    """

    id: str = ""
    owner: str = ""
    spec: oci.Spec | None = None
    hosting_system: UtilityVM | None = None
    network_namespace: str = ""
    do_not_release_resources_on_failure: bool = False
    runtime: str = ""
    networks: Sequence[str] = ()


# --- resource kinds this module allocates ---


class ContainerRecord(Resource, kw_only=True):
    """The container's row in the state store: recorded first, so it goes last."""

    kind = "container-record"
    container_id: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        container_table.delete(open_store(), self.container_id)


class BundleDir(Resource, kw_only=True):
    """The OCI bundle directory (config.json, rootfs mount point, logs)."""

    kind = "bundle-dir"
    path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        if not os.path.exists(self.path):
            return
        # Never delete through a mount that is still there (an image layer, a disk).
        still_mounted = mounts_under(self.path)
        if still_mounted:
            raise HcsociError(f"bundle {self.path!r} still has mounts: {', '.join(still_mounted)}")
        remove_tree(self.path)


class RuntimeContainer(Resource, kw_only=True):
    """The OCI runtime's state for the container (``runc delete --force`` undoes it)."""

    kind = "runtime-container"
    container_id: str
    runtime: str
    root: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        Runtime(self.runtime, self.root).delete(self.container_id, force=True)


# --- the create flow ---


def create_container(ctx: Context, options: CreateOptions) -> tuple[cow.Container, Resources]:
    """Create a container from ``options.spec``; returns it and what it holds.

    On failure the raised error (an :class:`~hcsoci.errors.HcsociError`; bad
    input is an :class:`~hcsoci.errors.InvalidArgumentError` or
    :class:`~hcsoci.errors.NotFoundError` naming the field and value) has a
    ``.resources`` attribute: what was allocated, already released unless
    ``do_not_release_resources_on_failure``.
    """
    container_id = options.id or str(uuid.uuid4())
    owner = options.owner or os.path.basename(sys.argv[0] or "python")
    resources = Resources(container_id)
    try:
        ctx.check()
        _check_options(options, container_id)
        networks = _networks(options.networks)
        # A private copy: the caller's spec is never modified.
        spec = msgspec.convert(msgspec.to_builtins(options.spec), oci.Spec)
        options = replace(options, spec=spec)
        placement = _placement(options, container_id)
        store = open_store()
        # The row comes before any allocation: from here on gc can find what we leave.
        host = options.hosting_system.id() if options.hosting_system is not None else ""
        container_table.insert(
            store, container_id, owner, host, placement.location, placement.runtime_name
        )
    except BaseException as err:
        err.resources = resources  # type: ignore[attr-defined]
        raise

    resources = Resources(container_id, store)
    resources.hosting_system = options.hosting_system
    try:
        resources.add(ContainerRecord(container_id=container_id))
        if networks:
            network_module = importlib.import_module("hcsoci.network")
            for network_id in networks:
                network_module.create_container_endpoint(resources, spec, network_id)
        container: cow.Container = placement.allocate(ctx, resources, owner, store)
    except BaseException as err:
        if not options.do_not_release_resources_on_failure:
            try:
                release_resources(ctx, resources, options.hosting_system, True)
            except Exception as release_err:
                log.error("release after failed create: %s", release_err)
                err.add_note(f"releasing what was allocated failed too: {release_err}")
        err.resources = resources  # type: ignore[attr-defined]
        raise
    log.debug("container created", extra={"id": container_id, "where": str(placement.location)})
    return container, resources


class Placement(Protocol):
    """Where a container is made: this machine (runc) or a utility VM.

    Constructing one checks the placement-specific input; ``allocate`` makes
    every allocation (each recorded in ``resources`` first) and returns the
    created container.
    """

    location: Path  # the bundle, or the container's root in the guest: kept in its state row
    runtime_name: str

    def allocate(self, ctx: Context, resources: Resources, owner: str, store: Store) -> Any: ...


class _OnHost:
    """A process-isolated container: a runc bundle on this machine."""

    def __init__(self, options: CreateOptions, container_id: str) -> None:
        self.options = options
        self.container_id = container_id
        self.runtime = Runtime(options.runtime)
        self.runtime_name = self.runtime.name
        self.location = child(containers_dir(), container_id, "CreateOptions.id")

    def allocate(self, ctx: Context, resources: Resources, owner: str, store: Store) -> Container:
        spec = _allocate(ctx, self.options, resources, self.runtime, self.location)
        return Container(self.container_id, self.location, self.runtime, spec, store, owner=owner)


def _placement(options: CreateOptions, container_id: str) -> Placement:
    if options.hosting_system is None:
        return _OnHost(options, container_id)
    # Hypervisor isolation: the LCOW flow, imported only when a VM is given.
    vm_flow = importlib.import_module("hcsoci.uvm.placement")
    placement: Placement = vm_flow.InUtilityVM(options, container_id)
    return placement


def _check_options(options: CreateOptions, container_id: str) -> None:
    if options.spec is None:
        raise InvalidArgumentError("CreateOptions.spec: must be supplied")
    check_id(container_id, "CreateOptions.id")
    oci.validate_spec(options.spec)
    if options.spec.process is None:
        raise InvalidArgumentError("spec.process: a container needs a process to run as its init")


def _networks(networks: Sequence[str]) -> list[str]:
    """The ids of ``CreateOptions.networks``, each checked to exist."""
    if isinstance(networks, str) or not all(isinstance(n, str) and n for n in networks):
        raise InvalidArgumentError(
            f"CreateOptions.networks: {networks!r} is not a list of network ids or names"
        )
    if not networks:
        return []
    hns = importlib.import_module("hcsoci.hns")  # networking only when asked for
    ids = []
    for index, network in enumerate(networks):
        try:
            ids.append(hns.get_network(network).id)
        except NotFoundError as err:
            raise NotFoundError(f"CreateOptions.networks[{index}]: {err}") from None
    return ids


def containers_dir() -> Path:
    """Where host containers' bundles live: ``<state root>/containers``."""
    return state_root() / "containers"


def _allocate(
    ctx: Context, options: CreateOptions, resources: Resources, runtime: Runtime, bundle: Path
) -> oci.Spec:
    """Make every allocation; returns the resolved spec written to config.json."""
    assert options.spec is not None
    spec = options.spec  # create_container's private copy
    resources.add(BundleDir(path=str(bundle)))
    make_private_dir(bundle.parent)
    bundle.mkdir(mode=0o700)

    network = spec.windows.network if spec.windows is not None else None
    if (network is not None and network.endpoint_list) or options.network_namespace:
        # The hns part, imported only when a spec asks for networking.
        network_module = importlib.import_module("hcsoci.network")
        network_module.setup_container_network(ctx, resources, spec, options.network_namespace)

    layered = bool(spec.windows is not None and spec.windows.layer_folders)
    spec.root = _resolve_root(spec, resources, bundle)
    given_root = None if layered else spec.root.path
    add_etc_files(spec, bundle / "etc", resources.owner_id, _endpoints(network), given_root)
    spec.mounts = _resolve_mounts(spec.mounts or [], resources, bundle)
    _pause_for_test("mounted")
    ctx.check()

    spec.windows = None  # consumed here; the runtime has no use for it
    write_private_file(bundle / "config.json", oci.encode_spec(spec))
    resources.add(
        RuntimeContainer(
            container_id=resources.owner_id, runtime=runtime.name, root=str(runtime.root)
        )
    )
    container_table.set_state(resources.store, resources.owner_id, "created")
    return spec


def _endpoints(network: oci.WindowsNetwork | None) -> list[Any]:
    """The container's endpoints (for its /etc files); none without networking."""
    if network is None or not network.endpoint_list:
        return []
    hns = importlib.import_module("hcsoci.hns")
    return [hns.get_endpoint_by_id(endpoint_id) for endpoint_id in network.endpoint_list]


def _resolve_root(spec: oci.Spec, resources: Resources, bundle: Path) -> oci.Root:
    layer_folders = spec.windows.layer_folders if spec.windows is not None else None
    root = spec.root
    if layer_folders:
        if root is not None and os.path.isabs(root.path):
            raise InvalidArgumentError(
                f"spec.root.path: {root.path!r} contradicts spec.windows.layer_folders "
                "(the layers make the root file system; leave root.path relative or empty)"
            )
        target = bundle / "rootfs"
        mount_container_layers(resources, layer_folders, target)
        return oci.Root(path=str(target), readonly=root.readonly if root is not None else False)
    if root is None or not root.path:
        raise InvalidArgumentError(
            "spec.root.path: no root file system (set spec.root.path or spec.windows.layer_folders)"
        )
    if not os.path.isabs(root.path):
        raise InvalidArgumentError(
            f"spec.root.path: {root.path!r} is relative; without spec.windows.layer_folders "
            "it must be an absolute path"
        )
    if not os.path.exists(root.path):
        raise NotFoundError(f"spec.root.path: {root.path!r} does not exist")
    if not os.path.isdir(root.path):
        raise InvalidArgumentError(f"spec.root.path: {root.path!r} is not a directory")
    return root


def _kernel_filesystems() -> set[str]:
    with open("/proc/filesystems", encoding="ascii") as filesystems:
        return {line.split()[-1] for line in filesystems if line.strip()}


def _resolve_mounts(mounts: list[oci.Mount], resources: Resources, bundle: Path) -> list[oci.Mount]:
    filesystems: set[str] | None = None
    resolved = []
    for index, spec_mount in enumerate(mounts):
        field = f"spec.mounts[{index}]"
        options = spec_mount.options or []
        if not spec_mount.destination:
            raise InvalidArgumentError(f"{field}.destination: required")
        if not os.path.isabs(spec_mount.destination):
            raise InvalidArgumentError(
                f"{field}.destination: {spec_mount.destination!r} is not an absolute path"
            )
        if spec_mount.type in VIRTUAL_DISK_TYPES:
            resolved.append(_attach_virtual_disk(field, index, spec_mount, resources, bundle))
            continue
        if spec_mount.type in _BIND_TYPES or "bind" in options or "rbind" in options:
            if not spec_mount.source:
                raise InvalidArgumentError(f"{field}.source: a bind mount needs a source")
            if not os.path.isabs(spec_mount.source):
                raise InvalidArgumentError(
                    f"{field}.source: {spec_mount.source!r} is not an absolute path"
                )
            if not os.path.exists(spec_mount.source):
                raise NotFoundError(f"{field}.source: {spec_mount.source!r} does not exist")
            if spec_mount.type == "":
                spec_mount.type = "bind"
            if "bind" not in options and "rbind" not in options:
                spec_mount.options = [*options, "rbind"]
            resolved.append(spec_mount)
            continue
        if filesystems is None:
            filesystems = _kernel_filesystems()
        if spec_mount.type not in filesystems:
            raise InvalidArgumentError(
                f"{field}.type: {spec_mount.type!r} is not a file system this kernel knows "
                "(nor bind, virtual-disk, automanage-virtual-disk)"
            )
        resolved.append(spec_mount)
    return resolved


def _attach_virtual_disk(
    field: str, index: int, spec_mount: oci.Mount, resources: Resources, bundle: Path
) -> oci.Mount:
    """Loop-mount an ext4 image on the host and turn the spec mount into a bind of it."""
    image = check_virtual_disk(f"{field}.source", spec_mount.source)
    options = list(spec_mount.options or [])
    read_only = "ro" in options
    if spec_mount.type == "automanage-virtual-disk":
        resources.add(AutomanagedFile(path=str(image)))  # recorded first: deleted last
    mount_point = bundle / "disks" / str(index)
    mount_point.mkdir(parents=True, mode=0o700)
    loop = LoopDevice(backing_file=str(image))
    resources.add(loop)
    device, device_fd = attach_loop_device(image, read_only)
    try:
        loop.device = device
        resources.update(loop)
        resources.add(HostMount(target=str(mount_point)))
        try:
            flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
            mount(device, mount_point, "ext4", flags)
        except MountError as err:
            raise InvalidArgumentError(
                f"{field}.source: {spec_mount.source!r} is not a mountable ext4 image ({err})"
            ) from err
    finally:
        os.close(device_fd)  # autoclear: from now on the mount alone holds the device
    kept = [option for option in options if option not in ("bind", "rbind")]
    return oci.Mount(
        destination=spec_mount.destination,
        type="bind",
        source=str(mount_point),
        options=["rbind", *kept],
    )


def _pause_for_test(point: str) -> None:
    """Test hook: stop here so a test can SIGKILL this controller mid-create.

    The kill-and-gc test must kill a controller at a known point between
    allocations; a signal at a random moment would test something else each run.
    With ``HCSOCI_TEST_PAUSE_AT=point`` and ``HCSOCI_TEST_PAUSE_FD`` (a pipe's
    write end), create writes the point's name to the pipe and blocks forever.
    """
    if os.environ.get("HCSOCI_TEST_PAUSE_AT") != point:
        return
    fd = int(os.environ["HCSOCI_TEST_PAUSE_FD"])
    os.write(fd, point.encode() + b"\n")
    threading.Event().wait()
