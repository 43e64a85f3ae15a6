"""Placing a container inside a utility VM (hcsshim's LCOW flow: resources_lcow.go, create.go).

``create_container(ctx, CreateOptions(spec=..., hosting_system=vm))`` lands
here.  The container's root in the guest is ``/run/gcs/c/<id>``:

* ``spec.windows.layer_folders`` (``layern..layer1, scratch``): each read-only
  layer becomes an ext4 image (built once with ``mke2fs -d``, cached in
  ``$HCSOCI_LAYER_CACHE``, default ``/var/lib/hcsoci/layer-images``) attached
  read-only over SCSI at ``/run/gcs/layers/<key>`` (``add_scsi`` counts
  references, so containers sharing a layer share the disk); the scratch
  folder gets ``sandbox.img``, attached read-write at ``<root>/scratch``; the
  agent combines them into an overlay at ``<root>/rootfs``;
* ``spec.root.path`` (without layers): a Plan9 share of that host directory
  mounted at ``<root>/rootfs`` (read-only when ``root.readonly``);
* ``bind`` mounts: Plan9 shares; the single files bound from one host
  directory go through one ``restrict``-ed share of it naming just them
  (one Plan9 slot per directory, not per file); ``virtual-disk`` mounts: SCSI disks; ``sandbox://``
  sources name guest paths under ``/run/gcs/sandbox``;
* ``spec.windows.network.endpoint_list``: an hns namespace on the host
  (``Resources.net_ns``), a guest namespace of the same id with a NIC per
  endpoint (``add_net_ns`` / ``add_endpoints_to_ns``), joined by the guest
  container (``/run/netns/<id>``).

The spec sent to the guest drops its hooks but ``startContainer`` (those run
in the container: the guest's runc runs them), ``cgroupsPath`` and the
``windows`` section, and points ``root.path`` at the guest rootfs.  The guest agent runs
the container with the guest root's ``runc`` (the host's, copied into the
boot assets), state under ``/run/gcs/runc``, through the bridge's container
requests (:meth:`~hcsoci.gcs.connection.GuestConnection.create_container`,
``start_container``, ``exec_in_container``, ``signal_container``,
``container_state``, ``delete_container``).  Every share, disk and guest path is
recorded as a :class:`~hcsoci.resources.Resource` before it is allocated.

The resource kinds live in :mod:`hcsoci.uvm.guest_resources`, layer images in
:mod:`hcsoci.uvm.layer_images`, and the container this returns in
:mod:`hcsoci.uvm.container`.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import subprocess
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from hcsoci import container_table, oci
from hcsoci.context import Context
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError, StateError
from hcsoci.etcfiles import etc_file_contents, etc_file_mount, wanted_etc_files
from hcsoci.gcs.protocol import FILES_VERSION
from hcsoci.network import CreatedNamespace, point_spec_at_namespace
from hcsoci.resources import Resources
from hcsoci.store import Store
from hcsoci.uvm.container import VMContainer
from hcsoci.uvm.guest_resources import (
    ScratchImage,
    VMGuestContainer,
    VMGuestDir,
    VMGuestMount,
    guest_run,
)
from hcsoci.uvm.layer_images import layer_image
from hcsoci.uvm.network import VMNetEndpoint, VMNetNamespace
from hcsoci.uvm.plan9 import VMPlan9Share
from hcsoci.uvm.scsi import VMSCSIDisk
from hcsoci.uvm.vm import UtilityVM
from hcsoci.uvm.vpmem import VMVPMemDevice

__all__ = ["GUEST_ROOT", "InUtilityVM"]

log = logging.getLogger(__name__)

GUEST_ROOT = "/run/gcs/c"
GUEST_LAYERS = "/run/gcs/layers"
GUEST_SANDBOX = "/run/gcs/sandbox"
GUEST_NETNS = "/run/netns"
SCRATCH_IMAGE = "sandbox.img"
SCRATCH_SIZE = "2G"  # sparse: costs what the container writes


class InUtilityVM:
    """The ``hosting_system`` placement of :func:`hcsoci.create_container` (LCOW flow)."""

    runtime_name = "runc"

    def __init__(self, options: Any, container_id: str) -> None:
        vm = options.hosting_system
        if not isinstance(vm, UtilityVM):
            raise InvalidArgumentError(f"CreateOptions.hosting_system: {vm!r} is not a UtilityVM")
        if not vm.is_running():
            raise StateError(f"CreateOptions.hosting_system: {vm!r} is not running")
        _check_input(options)
        self.vm = vm
        self.spec: oci.Spec = options.spec
        self.container_id = container_id
        self.root = f"{GUEST_ROOT}/{container_id}"
        self.location = Path(self.root)

    def allocate(self, ctx: Context, resources: Resources, owner: str, store: Store) -> VMContainer:
        resources.container_root_in_uvm = self.root
        spec = _allocate(ctx, self.vm, self.spec, resources, self.root)
        return VMContainer(self.container_id, self.vm, self.root, spec, store, owner=owner)


def _check_input(options: Any) -> None:
    spec: oci.Spec = options.spec
    if options.network_namespace:
        raise InvalidArgumentError(
            f"CreateOptions.network_namespace: {options.network_namespace!r}: a container in a "
            "utility VM cannot join a host namespace; list its endpoints in "
            "spec.windows.network.endpoint_list"
        )
    _check_endpoints(options.hosting_system, _endpoint_ids(spec))
    layers = spec.windows.layer_folders if spec.windows is not None else None
    if layers:
        if len(layers) < 2:
            raise InvalidArgumentError(
                f"spec.windows.layer_folders: {layers!r} needs at least one layer and a scratch"
            )
        if spec.root is not None and os.path.isabs(spec.root.path):
            raise InvalidArgumentError(
                f"spec.root.path: {spec.root.path!r} contradicts spec.windows.layer_folders"
            )
        for index, folder in enumerate(layers):
            if not os.path.isdir(folder):
                raise NotFoundError(
                    f"spec.windows.layer_folders[{index}]: {folder!r} is not an existing directory"
                )
    else:
        path = spec.root.path if spec.root is not None else ""
        if not path or not os.path.isabs(path):
            raise InvalidArgumentError(
                f"spec.root.path: {path!r}: set an absolute host directory or "
                "spec.windows.layer_folders"
            )
        if not os.path.isdir(path):
            raise NotFoundError(f"spec.root.path: {path!r} is not an existing directory")
    for index, mount in enumerate(spec.mounts or []):
        field = f"spec.mounts[{index}]"
        if mount.source.startswith("sandbox://"):
            continue
        is_bind = mount.type in ("bind", "rbind") or "bind" in (mount.options or [])
        if (is_bind or mount.type in ("virtual-disk", "automanage-virtual-disk")) and not (
            os.path.isabs(mount.source) and os.path.exists(mount.source)
        ):
            raise NotFoundError(f"{field}.source: {mount.source!r} does not exist on the host")


def _hns() -> ModuleType:
    """:mod:`hcsoci.hns`, imported only for a container with endpoints (it brings pyroute2)."""
    return importlib.import_module("hcsoci.hns")


def _endpoint_ids(spec: oci.Spec) -> list[str]:
    network = spec.windows.network if spec.windows is not None else None
    return list(network.endpoint_list or []) if network is not None else []


def _check_endpoints(vm: UtilityVM, endpoint_ids: list[str]) -> None:
    """Refuse unknown or busy endpoints before anything is allocated."""
    if not endpoint_ids:
        return
    field = "spec.windows.network.endpoint_list"
    hns = _hns()
    for index, endpoint_id in enumerate(endpoint_ids):
        try:
            endpoint = hns.get_endpoint_by_id(endpoint_id)
        except NotFoundError:
            raise NotFoundError(f"{field}[{index}]: endpoint {endpoint_id!r} not found") from None
        if endpoint.namespace:
            raise StateError(
                f"{field}[{index}]: endpoint {endpoint_id} is already in host namespace "
                f"{endpoint.namespace}"
            )
        nic = vm.networks.find_endpoint(endpoint_id)
        if nic is not None:
            raise StateError(
                f"{field}[{index}]: endpoint {endpoint_id} is already a NIC of utility VM "
                f"{vm.id()} (namespace {nic.namespace})"
            )
    if len(set(endpoint_ids)) != len(endpoint_ids):
        raise StateError(f"{field} {endpoint_ids}: an endpoint twice")


def _allocate_network(ctx: Context, vm: UtilityVM, spec: oci.Spec, resources: Resources) -> None:
    """The seed's hosting-system network flow: a host namespace, ``AddNetNS``, NICs.

    The host namespace (an hns namespace, :attr:`Resources.net_ns`) names the
    container's network, as in HNS; the endpoints are plumbed into the VM as
    NICs (taps on their bridges) rather than into it as veths, which would put
    a second port with the endpoint's MAC on the bridge.  The guest namespace
    has the same id, and the guest container joins it.
    """
    endpoint_ids = _endpoint_ids(spec)
    if not endpoint_ids:
        return
    hns = _hns()
    vm_id = vm.id()
    namespace_id = str(uuid.uuid4())
    resources.add(CreatedNamespace(namespace_id=namespace_id))
    hns.create_namespace(namespace_id)
    resources.net_ns = namespace_id
    resources.add(VMNetNamespace(vm_id=vm_id, namespace_id=namespace_id))
    vm.add_net_ns(ctx, namespace_id)
    for index, endpoint_id in enumerate(endpoint_ids):
        ctx.check()
        resources.add(
            VMNetEndpoint(vm_id=vm_id, namespace_id=namespace_id, endpoint_id=endpoint_id)
        )
        try:
            endpoint = hns.get_endpoint_by_id(endpoint_id)
            vm.add_endpoints_to_ns(ctx, namespace_id, [endpoint])
        except HcsociError as err:
            raise HcsociError(
                f"spec.windows.network.endpoint_list[{index}]: endpoint {endpoint_id}: "
                f"cannot add it to utility VM {vm_id}: {err}"
            ) from err
        log.info("added endpoint %s to %s in utility VM %s", endpoint_id, namespace_id, vm_id)
    point_spec_at_namespace(spec, f"{GUEST_NETNS}/{namespace_id}")


def _add_guest_etc_files(
    ctx: Context,
    vm: UtilityVM,
    spec: oci.Spec,
    container_id: str,
    root: str,
    given_root: str | None,
) -> dict[str, str]:
    """The container's /etc/hostname, hosts and resolv.conf, as a host container's.

    Bound read-only into the container from ``<root>/etc`` (removed with
    ``root``): no Plan9 slot is spent on them.  Returned (guest path -> text)
    for the agent's ``create_container`` to write; an agent older than
    :data:`~hcsoci.gcs.protocol.FILES_VERSION` gets them from a guest ``sh``.
    """
    wanted = wanted_etc_files(spec, given_root)
    if not wanted:
        return {}
    endpoint_ids = _endpoint_ids(spec)
    endpoints = [_hns().get_endpoint_by_id(e) for e in endpoint_ids] if endpoint_ids else []
    contents = etc_file_contents(spec.hostname or container_id[:12], endpoints)
    etc = f"{root}/etc"
    spec.mounts = [*(spec.mounts or []), *(etc_file_mount(n, f"{etc}/{n}") for n in wanted)]
    files = {f"{etc}/{name}": contents[name].decode() for name in wanted}
    if vm.gcs.version >= FILES_VERSION:
        return files
    script = f"mkdir -p {shlex.quote(etc)}" + "".join(
        f" && printf %s {shlex.quote(text)} > {shlex.quote(path)}" for path, text in files.items()
    )
    guest_run(ctx, vm, script)
    return {}


def _allocate(
    ctx: Context, vm: UtilityVM, spec: oci.Spec, resources: Resources, root: str
) -> oci.Spec:
    """Make every allocation in the VM; ``spec`` (create_container's private copy) is resolved."""
    vm_id = vm.id()
    _allocate_network(ctx, vm, spec, resources)
    resources.add(VMGuestDir(vm_id=vm_id, path=root))  # made by the first mount in it
    rootfs = f"{root}/rootfs"
    readonly = spec.root.readonly if spec.root is not None else False
    layers = spec.windows.layer_folders if spec.windows is not None else None
    if layers:
        lowers = []
        for index, folder in enumerate(layers[:-1]):
            try:
                image = layer_image(folder)
            except (OSError, HcsociError) as err:
                raise HcsociError(
                    f"spec.windows.layer_folders[{index}]: {folder!r}: {err}"
                ) from err
            uvm_path = f"{GUEST_LAYERS}/{image.stem}"
            _attach_layer(ctx, vm, resources, str(image), uvm_path)
            lowers.append(uvm_path)
        scratch = Path(layers[-1]) / SCRATCH_IMAGE
        if not scratch.exists():
            resources.add(ScratchImage(path=str(scratch)))
            done = subprocess.run(
                ["mke2fs", "-q", "-F", "-t", "ext4", str(scratch), SCRATCH_SIZE],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise HcsociError(
                    f"spec.windows.layer_folders[{len(layers) - 1}]: cannot make "
                    f"{str(scratch)!r}: {done.stderr.strip()}"
                )
        resources.add(VMSCSIDisk(vm_id=vm_id, host_path=str(scratch)))
        vm.add_scsi(ctx, str(scratch), f"{root}/scratch", False)
        resources.add(VMGuestMount(vm_id=vm_id, target=rootfs))
        vm.gcs_request(
            ctx,
            "mount_overlay",
            {
                "target": rootfs,
                "lowers": lowers,
                "upper": f"{root}/scratch/upper",
                "work": f"{root}/scratch/work",
            },
        )
    else:
        assert spec.root is not None
        _add_share(ctx, vm, resources, spec.root.path, rootfs, readonly)
    spec.mounts = _guest_mounts(ctx, vm, resources, root, spec.mounts or [])
    given_root = spec.root.path if spec.root is not None and not layers else None
    files = _add_guest_etc_files(ctx, vm, spec, resources.owner_id, root, given_root)
    spec.root = oci.Root(path=rootfs, readonly=readonly)
    # startContainer hooks run in the container, so the guest's runc runs them; the
    # others run in the runtime's namespaces, which are not the guest's.
    kept = spec.hooks.start_container if spec.hooks is not None else None
    spec.hooks = oci.Hooks(start_container=kept) if kept else None
    spec.windows = None
    if spec.linux is not None:
        spec.linux.cgroups_path = ""
    resources.add(VMGuestContainer(vm_id=vm_id, container_id=resources.owner_id))
    vm.gcs.create_container(
        ctx, resources.owner_id, root, msgspec.json.decode(oci.encode_spec(spec)), files
    )
    container_table.set_state(resources.store, resources.owner_id, "created")
    return spec


def _attach_layer(
    ctx: Context, vm: UtilityVM, resources: Resources, image: str, uvm_path: str
) -> None:
    """A read-only layer image at ``uvm_path``: vPMEM when the VM uses it and has room, else SCSI.

    An image the VM holds already keeps the device it is on (both mount at ``uvm_path``).
    """
    vm_id = vm.id()
    wants_vpmem = vm.options.layer_device == "vpmem" and vm.find_scsi(image) is None
    if wants_vpmem and vm.vpmem.can_add(image):
        resources.add(VMVPMemDevice(vm_id=vm_id, host_path=image))
        vm.add_vpmem(ctx, image, uvm_path)
        return
    if wants_vpmem:
        log.info("vPMEM slots of %s are full: layer %s goes over SCSI", vm_id, image)
    resources.add(VMSCSIDisk(vm_id=vm_id, host_path=image))
    vm.add_scsi(ctx, image, uvm_path, True)


def _is_bind(mount: oci.Mount) -> bool:
    options = mount.options or []
    return mount.type in ("bind", "rbind") or "bind" in options or "rbind" in options


def _single_file(mount: oci.Mount) -> Path | None:
    """The host file a bind mount of one file (not a directory) shares, else ``None``."""
    if mount.source.startswith("sandbox://") or not _is_bind(mount):
        return None
    host = Path(mount.source)
    return None if host.is_dir() else host


def _file_group(host: Path, mount: oci.Mount) -> tuple[str, bool]:
    """The share a single-file bind goes through: its (resolved) directory, read-only or not."""
    return str(host.parent.resolve()), "ro" in (mount.options or [])


def _add_share(
    ctx: Context,
    vm: UtilityVM,
    resources: Resources,
    host_path: str,
    target: str,
    read_only: bool,
    allowed_names: list[str] | None = None,
) -> None:
    """A Plan9 share at ``target``, recorded before it is added (``allowed_names``: restricted)."""
    share = VMPlan9Share(vm_id=vm.id())
    resources.add(share)
    names = allowed_names or []
    added = vm.add_plan9(ctx, host_path, target, read_only, bool(names), names)
    share.name = added.name
    resources.update(share)


def _guest_mounts(
    ctx: Context, vm: UtilityVM, resources: Resources, root: str, mounts: list[oci.Mount]
) -> list[oci.Mount]:
    """The spec's mounts as guest mounts, in order, each share added as the first use needs it.

    The single-file binds of one host directory (an engine's ``hosts``,
    ``hostname``, ``resolv.conf``... all in the container's own directory)
    go through one restricted share of that directory naming just those
    files, not a share (and a Plan9 slot) each: the guest sees the named
    files and nothing else of the directory.
    """
    singles: dict[int, tuple[Path, tuple[str, bool]]] = {}  # index: file, its share
    for index, mount in enumerate(mounts):
        host = _single_file(mount)
        if host is not None:
            singles[index] = (host, _file_group(host, mount))
    groups: dict[tuple[str, bool], list[str]] = {}
    for host, group in singles.values():
        names = groups.setdefault(group, [])
        if host.name not in names:
            names.append(host.name)
    shared: dict[tuple[str, bool], str] = {}
    guest = []
    for index, mount in enumerate(mounts):
        if index not in singles:
            guest.append(_guest_mount(ctx, vm, resources, root, index, mount))
            continue
        host, group = singles[index]
        target = shared.get(group)
        if target is None:
            target = shared[group] = f"{root}/files/{len(shared)}"
            _add_share(ctx, vm, resources, group[0], target, group[1], groups[group])
        options = list(mount.options or [])
        if "bind" not in options and "rbind" not in options:
            options.append("rbind")
        guest.append(
            oci.Mount(
                destination=mount.destination,
                type="bind",
                source=f"{target}/{host.name}",
                options=options,
            )
        )
    return guest


def _guest_mount(
    ctx: Context, vm: UtilityVM, resources: Resources, root: str, index: int, mount: oci.Mount
) -> oci.Mount:
    """A mount that is not a single-file bind (those are :func:`_guest_mounts`')."""
    options = list(mount.options or [])
    read_only = "ro" in options
    if mount.source.startswith("sandbox://"):
        source = f"{GUEST_SANDBOX}/{mount.source.removeprefix('sandbox://').lstrip('/')}"
        guest_run(ctx, vm, f"mkdir -p {shlex.quote(source)}")
        if "bind" not in options and "rbind" not in options:
            options.append("rbind")
        return oci.Mount(destination=mount.destination, type="bind", source=source, options=options)
    if mount.type in ("virtual-disk", "automanage-virtual-disk"):
        target = f"{root}/disks/{index}"
        resources.add(VMSCSIDisk(vm_id=vm.id(), host_path=mount.source))
        vm.add_scsi(ctx, mount.source, target, read_only)
        kept = [o for o in options if o not in ("bind", "rbind")]
        return oci.Mount(
            destination=mount.destination, type="bind", source=target, options=["rbind", *kept]
        )
    if _is_bind(mount):
        target = f"{root}/mounts/{index}"
        _add_share(ctx, vm, resources, mount.source, target, read_only)
        if "bind" not in options and "rbind" not in options:
            options.append("rbind")
        return oci.Mount(destination=mount.destination, type="bind", source=target, options=options)
    return mount
