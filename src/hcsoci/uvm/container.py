"""Containers inside a utility VM (hcsshim's LCOW flow: resources_lcow.go, create.go).

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
* ``bind`` mounts: Plan9 shares (a single file through a ``restrict``-ed share
  of its directory); ``virtual-disk`` mounts: SCSI disks; ``sandbox://``
  sources name guest paths under ``/run/gcs/sandbox``;
* ``spec.windows.network.endpoint_list``: an hns namespace on the host
  (``Resources.net_ns``), a guest namespace of the same id with a NIC per
  endpoint (``add_net_ns`` / ``add_endpoints_to_ns``), joined by the guest
  container (``/run/netns/<id>``).

The spec sent to the guest drops hooks, ``cgroupsPath`` and the ``windows``
section and points ``root.path`` at the guest rootfs.  The guest agent runs
the container with the guest root's ``runc`` (the host's, copied into the
boot assets), state under ``/run/gcs/runc``, through the bridge's container
requests (:meth:`~hcsoci.gcs.connection.GuestConnection.create_container`,
``start_container``, ``exec_in_container``, ``signal_container``,
``container_state``, ``delete_container``).  Every share, disk and guest path is
recorded as a :class:`~hcsoci.resources.Resource` before it is allocated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shlex
import signal
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import msgspec

from hcsoci import container_table, hns, oci
from hcsoci.cmd import ExitError, command
from hcsoci.container import ContainerProperties
from hcsoci.context import Context
from hcsoci.cow import ProcessParameters, Stdio, StdioFds
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError, StateError
from hcsoci.etcfiles import etc_file_contents, etc_file_mount, wanted_etc_files
from hcsoci.gcs.connection import GuestError, GuestProcess
from hcsoci.lifecycle import ContainerLifecycle, Pipes
from hcsoci.network import CreatedNamespace, point_spec_at_namespace
from hcsoci.paths import make_private_dir
from hcsoci.resources import Resource, Resources
from hcsoci.store import Store
from hcsoci.uvm.network import VMNetEndpoint, VMNetNamespace
from hcsoci.uvm.plan9 import VMPlan9Share
from hcsoci.uvm.scsi import VMSCSIDisk
from hcsoci.uvm.vm import UtilityVM

__all__ = [
    "VMContainer",
    "VMContainerProcess",
    "VMGuestContainer",
    "VMGuestDir",
    "VMGuestMount",
    "ScratchImage",
    "InUtilityVM",
    "guest_run",
    "layer_image",
]

log = logging.getLogger(__name__)

GUEST_ROOT = "/run/gcs/c"
GUEST_LAYERS = "/run/gcs/layers"
GUEST_SANDBOX = "/run/gcs/sandbox"
GUEST_RUNC_ROOT = "/run/gcs/runc"
GUEST_NETNS = "/run/netns"
SCRATCH_IMAGE = "sandbox.img"
SCRATCH_SIZE = "2G"  # sparse: costs what the container writes


def layer_cache_dir() -> Path:
    """Where layer ext4 images are cached (``$HCSOCI_LAYER_CACHE``)."""
    return Path(os.environ.get("HCSOCI_LAYER_CACHE") or "/var/lib/hcsoci/layer-images")


def guest_run(ctx: Context, vm: UtilityVM, script: str, stdin: bytes | None = None) -> bytes:
    """Run ``sh -c script`` in the guest; its stdout, or an error carrying its stderr."""
    cmd = command(vm, "sh", "-c", script)
    cmd.context = ctx
    stderr = io.BytesIO()
    cmd.stderr = stderr
    if stdin is not None:
        cmd.stdin = io.BytesIO(stdin)
    try:
        return cmd.output()
    except ExitError as err:
        detail = stderr.getvalue().decode(errors="replace").strip()
        raise HcsociError(f"in utility VM {vm.id()}: {script!r}: {detail or err}") from err


# --- resources --------------------------------------------------------------


class _InVM(Resource, kw_only=True):
    in_vm = True
    vm_id: str

    def _vm(self, vm: UtilityVM | None) -> UtilityVM | None:
        if vm is None or vm.id() != self.vm_id or not vm.is_running():
            return None  # the VM is gone, and this with it
        return vm


class VMGuestDir(_InVM, kw_only=True):
    """A directory in the guest (the container's root); removed when nothing is mounted below."""

    kind = "uvm-guest-dir"
    path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        live = self._vm(vm)
        if live is None:
            return
        path = shlex.quote(self.path)
        guest_run(
            ctx,
            live,
            f"if grep -qF ' '{path}/ /proc/self/mounts; then "
            f"echo {path} still has mounts >&2; exit 1; fi; rm -rf {path}",
        )


class VMGuestMount(_InVM, kw_only=True):
    """A mount the agent made in the guest (the overlay rootfs)."""

    kind = "uvm-guest-mount"
    target: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        live = self._vm(vm)
        if live is not None:
            live.gcs_request(ctx, "unmount", {"target": self.target, "remove_dir": False})


class VMGuestContainer(_InVM, kw_only=True):
    """The container in the guest (the agent's ``delete_container``: ``runc delete --force``)."""

    kind = "uvm-guest-container"
    container_id: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        live = self._vm(vm)
        if live is not None:
            live.gcs.delete_container(ctx, self.container_id)


class ScratchImage(Resource, kw_only=True):
    """The scratch disk image this creation made in the scratch folder."""

    kind = "uvm-scratch-image"
    path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# --- layer images -----------------------------------------------------------


def _tree_size(directory: Path) -> tuple[int, int]:
    """Bytes (each entry rounded up to 4 KiB) and entries below ``directory``.

    An explicit stack, not ``os.walk`` (which recurses once per level in
    Python 3.11): a layer may be thousands of directories deep.  Symlinks are
    counted, never followed; unreadable directories are skipped, as ``os.walk`` does.
    """
    size = entries = 0
    pending = [os.fspath(directory)]
    while pending:
        try:
            scan = os.scandir(pending.pop())
        except OSError:
            continue
        with scan:
            for entry in scan:
                entries += 1
                with contextlib.suppress(OSError):
                    size += (entry.stat(follow_symlinks=False).st_size + 4095) // 4096 * 4096
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
    return size, entries


def layer_image(layer: str, cache: Path | None = None) -> Path:
    """The ext4 image of the layer directory ``layer`` (built once, then cached)."""
    source = Path(layer).resolve()
    stamp = source.stat().st_mtime_ns
    key = hashlib.sha256(f"{source}\0{stamp}".encode()).hexdigest()[:32]
    cache = cache or layer_cache_dir()
    image = cache / f"{key}.ext4"
    if image.exists():
        return image
    make_private_dir(cache)
    size, entries = _tree_size(source)
    kib = (size * 13 // 10 + entries * 4096) // 1024 + 16 * 1024
    partial = cache / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        done = subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(source), str(partial), f"{kib}k"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise HcsociError(f"mke2fs of layer {layer!r} failed: {done.stderr.strip()}")
        os.chmod(partial, 0o600)
        os.replace(partial, image)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return image


# --- the create flow --------------------------------------------------------


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


def _endpoint_ids(spec: oci.Spec) -> list[str]:
    network = spec.windows.network if spec.windows is not None else None
    return list(network.endpoint_list or []) if network is not None else []


def _check_endpoints(vm: UtilityVM, endpoint_ids: list[str]) -> None:
    """Refuse unknown or busy endpoints before anything is allocated."""
    field = "spec.windows.network.endpoint_list"
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
    ctx: Context, vm: UtilityVM, spec: oci.Spec, container_id: str, root: str
) -> None:
    """The container's /etc/hostname, hosts and resolv.conf, as a host container's.

    Written by the guest into ``<root>/etc`` (removed with ``root``) and bound
    read-only into the container: no Plan9 slot is spent on them.
    """
    wanted = wanted_etc_files(spec)
    if not wanted:
        return
    endpoints = [hns.get_endpoint_by_id(endpoint_id) for endpoint_id in _endpoint_ids(spec)]
    contents = etc_file_contents(spec.hostname or container_id[:12], endpoints)
    etc = f"{root}/etc"
    script = f"mkdir -p {shlex.quote(etc)}" + "".join(
        f" && printf %s {shlex.quote(contents[name].decode())} > {shlex.quote(f'{etc}/{name}')}"
        for name in wanted
    )
    guest_run(ctx, vm, script)
    spec.mounts = [*(spec.mounts or []), *(etc_file_mount(n, f"{etc}/{n}") for n in wanted)]


def _allocate(
    ctx: Context, vm: UtilityVM, spec: oci.Spec, resources: Resources, root: str
) -> oci.Spec:
    """Make every allocation in the VM; ``spec`` (create_container's private copy) is resolved."""
    vm_id = vm.id()
    _allocate_network(ctx, vm, spec, resources)
    resources.add(VMGuestDir(vm_id=vm_id, path=root))
    guest_run(ctx, vm, f"mkdir -p {shlex.quote(root)}/rootfs")
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
            resources.add(VMSCSIDisk(vm_id=vm_id, host_path=str(image)))
            vm.add_scsi(ctx, str(image), uvm_path, True)
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
        share = VMPlan9Share(vm_id=vm_id)
        resources.add(share)
        added = vm.add_plan9(ctx, spec.root.path, rootfs, readonly, False, [])
        share.name = added.name
        resources.update(share)
    spec.mounts = [
        _guest_mount(ctx, vm, resources, root, index, mount)
        for index, mount in enumerate(spec.mounts or [])
    ]
    _add_guest_etc_files(ctx, vm, spec, resources.owner_id, root)
    spec.root = oci.Root(path=rootfs, readonly=readonly)
    spec.hooks = None
    spec.windows = None
    if spec.linux is not None:
        spec.linux.cgroups_path = ""
    resources.add(VMGuestContainer(vm_id=vm_id, container_id=resources.owner_id))
    vm.gcs.create_container(
        ctx, resources.owner_id, root, msgspec.json.decode(oci.encode_spec(spec))
    )
    container_table.set_state(resources.store, resources.owner_id, "created")
    return spec


def _guest_mount(
    ctx: Context, vm: UtilityVM, resources: Resources, root: str, index: int, mount: oci.Mount
) -> oci.Mount:
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
    if mount.type in ("bind", "rbind") or "bind" in options or "rbind" in options:
        host = Path(mount.source)
        target = f"{root}/mounts/{index}"
        share = VMPlan9Share(vm_id=vm.id())
        resources.add(share)
        if host.is_dir():
            added = vm.add_plan9(ctx, str(host), target, read_only, False, [])
            guest_source = target
        else:
            added = vm.add_plan9(ctx, str(host.parent), target, read_only, True, [host.name])
            guest_source = f"{target}/{host.name}"
        share.name = added.name
        resources.update(share)
        if "bind" not in options and "rbind" not in options:
            options.append("rbind")
        return oci.Mount(
            destination=mount.destination, type="bind", source=guest_source, options=options
        )
    return mount


# --- the container ----------------------------------------------------------


class VMContainerProcess:
    """A process of a container in a utility VM (``cow.Process``): a ``runc`` in the guest."""

    def __init__(self, container: VMContainer, guest: GuestProcess) -> None:
        self._container = container
        self._guest = guest

    def __repr__(self) -> str:
        return f"<VMContainerProcess {self._container.id()} {self._guest!r}>"

    def pid(self) -> int:
        """The pid of the process's ``runc`` in the guest."""
        return self._guest.pid()

    def stdio(self) -> Stdio:
        return self._guest.stdio()

    def close_stdin(self, ctx: Context) -> None:
        self._guest.close_stdin(ctx)

    def resize_console(self, ctx: Context, width: int, height: int) -> None:
        self._guest.resize_console(ctx, width, height)

    def signal(self, ctx: Context, sig: int) -> bool:
        """Send ``sig``: runc forwards it; SIGKILL goes to the container process itself."""
        return self._guest.signal(ctx, sig)

    def kill(self, ctx: Context) -> bool:
        return self.signal(ctx, signal.SIGKILL)

    def wait(self) -> None:
        self._guest.wait()

    def exit_code(self) -> int:
        return self._guest.exit_code()

    def running(self) -> bool:
        """Whether the process still runs (no exit status or failure seen yet)."""
        return self._guest.running()

    def close(self) -> None:
        self._guest.close()


class VMContainer(ContainerLifecycle[VMContainerProcess]):
    """A container in a utility VM (``cow.Container``), run by the guest's runc.

    The rules of the lifecycle are :class:`~hcsoci.lifecycle.ContainerLifecycle`'s.
    """

    def __init__(
        self,
        container_id: str,
        vm: UtilityVM,
        root: str,
        spec: oci.Spec,
        store: Store,
        *,
        owner: str = "",
    ) -> None:
        super().__init__(container_id, spec, store, owner=owner, state="created")
        self.vm = vm
        self.root = root

    def __repr__(self) -> str:
        return f"<VMContainer {self._id} in {self.vm.id()} {self._state.name}>"

    @property
    def log_path(self) -> str:
        """Where ``start`` sends the init's output (a guest path)."""
        return f"{self.root}/container.log"

    def wait(self) -> None:
        """Block until the init has exited."""
        init = self._init
        if init is None:
            raise StateError(f"container {self._id}: not started")
        init.wait()

    def properties(self, ctx: Context) -> ContainerProperties:
        """State, the guest pid of the init, its processes and its cgroup's figures."""
        state = self.state_type().name
        props = ContainerProperties(
            id=self._id, owner=self.owner, state=state, init_pid=0, bundle=self.root, runtime="runc"
        )
        init = self._init
        if init is not None and state == "stopped":
            with contextlib.suppress(HcsociError):
                props.exit_code = init.exit_code()
        if state == "running":
            with contextlib.suppress(HcsociError):
                guest_state = self.vm.gcs.container_state(ctx, self._id)
                props.init_pid = guest_state.pid
                props.processes = guest_state.processes
                props.memory_usage_bytes = guest_state.memory_usage_bytes
                props.cpu_usage_ns = guest_state.cpu_usage_ns
        return props

    # -- what the lifecycle asks of this host --

    def _observed_state(self) -> str:
        init = self._init
        return "running" if init is not None and init.running() else "stopped"

    def _close_handles(self) -> None:
        init = self._init
        if init is not None:
            init.close()

    def _signal_running_init(self, ctx: Context, sig: int) -> None:
        self.vm.gcs.signal_container(ctx, self._id, sig)

    @staticmethod
    def _stdio(pipes: Pipes, terminal: bool, size: oci.Box | None) -> ProcessParameters:
        """The stdio part of a process's parameters (its command comes from the spec)."""
        return ProcessParameters(
            command_args=["runc"],
            emulate_console=terminal,
            console_size=(size.height, size.width) if terminal and size is not None else (0, 0),
            create_stdin_pipe=pipes[0],
            create_stdout_pipe=pipes[1],
            create_stderr_pipe=pipes[2],
        )

    def _launch_init(
        self, ctx: Context, pipes: Pipes, fds: StdioFds, to_log: bool
    ) -> tuple[VMContainerProcess, int]:
        assert self.spec.process is not None
        try:
            guest = self.vm.gcs.start_container(
                ctx,
                self._id,
                self._stdio(
                    pipes, bool(self.spec.process.terminal), self.spec.process.console_size
                ),
                output_file=self.log_path if to_log else "",
                timeout=self.vm.options.request_timeout,
            )
        except GuestError as err:
            raise HcsociError(
                f"container {self._id}: runc did not start the process: {err}"
            ) from err
        process = VMContainerProcess(self, guest)
        return process, process.pid()

    def _launch_exec(
        self, ctx: Context, process: oci.Process, pipes: Pipes, fds: StdioFds
    ) -> VMContainerProcess:
        # Offered descriptors are declined: the process runs in the guest (see hcsoci.cow).
        guest = self.vm.gcs.exec_in_container(
            ctx,
            self._id,
            msgspec.to_builtins(process),
            self._stdio(pipes, bool(process.terminal), process.console_size),
        )
        return VMContainerProcess(self, guest)
